"""evaluate_benchmark on toy embedders: known answers, exclusions, and the encoding cache."""

import numpy as np
import pytest

from mimo_pipeline.benchmarks import BenchmarkConfig, build_bible_benchmarks
from mimo_pipeline.errors import MimoInputError
from mimo_pipeline.evaluation import EvalConfig, encode_cached, evaluate_benchmark

LANGS = ["en", "de", "fr"]
VERSES = {f"40.1.{i}": {lang: f"{lang} verse {i}" for lang in LANGS} for i in range(1, 22)}
# Verses 1-3, 4-6, ... form a topic; the first verse of a topic cross-references the other two.
REFS = [(f"40.1.{i}", f"40.1.{i + j}") for i in range(1, 22, 3) for j in (1, 2)]


class VerseEmbedder:
    """A verse axis plus a topic axis (language-blind), optionally plus a language axis (bias)."""

    name = "toy"

    def __init__(self, bias=0.0, fingerprint="toy-fp"):
        self.bias, self.fingerprint, self.calls = bias, fingerprint, 0

    dim = 40

    def prefix(self, prompt):
        return {"query": "q: ", "document": "d: "}.get(prompt, "")

    def encode(self, texts, prompt):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for r, t in enumerate(texts):
            lang, _, i = t.split()
            out[r, int(i)] = 1.0
            out[r, 22 + (int(i) - 1) // 3] = 1.0
            out[r, 30 + LANGS.index(lang)] = self.bias
        return out


def benches():
    return {b.name: b for b in build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(7, 21, 5))}


def values(rows, metric, lang="all"):
    return next(r["value"] for r in rows if r["metric"] == metric and r["query_lang"] == lang)


def test_language_blind_embedder_is_perfect_on_translation(tmp_path):
    rows = evaluate_benchmark(VerseEmbedder(), benches()["translation"], tmp_path)
    for metric in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"):
        assert values(rows, metric) == pytest.approx(1.0)
    assert values(rows, "mrc@10") == pytest.approx(100.0, abs=1e-6)
    assert {r["query_lang"] for r in rows} == {"en", "de", "fr", "all"}


def test_own_verse_is_excluded_on_mlir(tmp_path):
    # The query's own verse (in every language) scores highest but is excluded: the six
    # relevant documents (two verses of its topic x three languages) fill ranks 1-6.
    rows = evaluate_benchmark(VerseEmbedder(), benches()["mlir"], tmp_path)
    for metric in ("ndcg@10", "recall@10", "mrr@10", "map@100"):
        assert values(rows, metric) == pytest.approx(1.0)


def test_language_bias_lowers_peer(tmp_path):
    b = benches()["mlir"]
    fair = values(evaluate_benchmark(VerseEmbedder(0.0, "fair"), b, tmp_path), "peer@100")
    biased = values(evaluate_benchmark(VerseEmbedder(5.0, "biased"), b, tmp_path), "peer@100")
    assert biased < fair


def test_a_cached_pool_costs_no_forward_pass(tmp_path):
    b = benches()["translation"]
    first = VerseEmbedder()
    rows1 = evaluate_benchmark(first, b, tmp_path)
    assert first.calls > 0
    again = VerseEmbedder()
    rows2 = evaluate_benchmark(again, b, tmp_path)
    assert again.calls == 0 and rows1 == rows2


def test_cache_keys_include_the_prompt(tmp_path):
    e = VerseEmbedder()
    encode_cached(e, ["en verse 1"], "query", tmp_path)
    encode_cached(e, ["en verse 1"], "document", tmp_path)
    assert e.calls == 2


def test_eval_config_is_validated():
    with pytest.raises(MimoInputError, match="index: unknown index 'annoy'"):
        EvalConfig(index="annoy")
    with pytest.raises(MimoInputError, match="k: must be at least 100"):
        EvalConfig(k=10)


def test_evaluate_models_releases_each_model_before_the_next_loads(tmp_path):
    from mimo_pipeline.evaluation import evaluate_models

    events = []

    class Releasing(VerseEmbedder):
        def encode(self, texts, prompt):
            events.append(("encode", self.name))
            return super().encode(texts, prompt)

        def release(self):
            events.append(("release", self.name))

    class Set:  # the part of BenchmarkSet evaluate_models uses
        names = ("translation", "mlir")

        def load(self, name):
            return benches()[name]

    a, b = Releasing(0.0, "fp-a"), Releasing(1.0, "fp-b")
    a.name, b.name = "a", "b"
    result = evaluate_models({"a": a, "b": b}, Set(), tmp_path)
    assert {r["model"] for r in result.rows} == {"a", "b"}
    first_b = events.index(("encode", "b"))
    assert events[first_b - 1] == ("release", "a")  # a is gone before b loads
    assert events[-1] == ("release", "b") and events.count(("release", "a")) == 1


PER_QUERY = ("ndcg@10", "ndcg@20", "recall@10", "recall@100", "mrr@10", "map@100", "peer@100", "own_lang@10")
#: Metrics with topic scores at query_lang all: the per-query ones, and MRC@10 per group (complete groups here)
WITH_TOPICS = PER_QUERY + ("mrc@10",)


class NoisyEmbedder(VerseEmbedder):
    """VerseEmbedder plus seeded language-blind noise per verse and language bias: topics differ."""

    def __init__(self, name, noise, bias=0.0, seed=0):
        super().__init__(bias, f"noisy-{noise}-{bias}-{seed}")
        self.name, self.noise, self.seed = name, noise, seed

    def encode(self, texts, prompt):
        out = super().encode(texts, prompt)
        for r, t in enumerate(texts):
            lang, _, i = t.split()
            rng = np.random.default_rng([self.seed, int(i), LANGS.index(lang)])
            out[r, :30] += self.noise * rng.normal(size=30)
        return out


def test_intervals_over_topics_at_all_and_none_elsewhere(tmp_path):
    from mimo_pipeline.evaluation import score_benchmark

    scored = score_benchmark(NoisyEmbedder("mimo", 0.5, 1.0), benches()["mlir"], tmp_path, seed=3)
    at_all = {r["metric"]: r for r in scored.rows if r["query_lang"] == "all"}
    assert set(WITH_TOPICS) == set(at_all) and set(scored.topics) == set(WITH_TOPICS)
    for metric in WITH_TOPICS:
        r = at_all[metric]
        assert r["n_topics"] == 7  # 7 query verses, each asked in 3 languages: 7 topics, not 21 queries
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert scored.topics[metric].mean() == pytest.approx(r["value"])
    assert any(at_all[m]["ci_low"] < at_all[m]["ci_high"] for m in PER_QUERY)
    others = [r for r in scored.rows if r["query_lang"] != "all"]
    assert others and all(r["ci_low"] is None and r["ci_high"] is None and r["n_topics"] is None for r in others)
    assert {r["seed"] for r in scored.rows} == {3}
    assert {r["seed"] for r in evaluate_benchmark(VerseEmbedder(), benches()["mlir"], tmp_path)} == {None}


def test_compare_models_pairs_every_model_with_mimo(tmp_path):
    from mimo_pipeline.evaluation import evaluate_models
    from mimo_pipeline.stats import holm
    from mimo_pipeline.storage import TABLES

    class Set:
        names = ("translation", "mlir")

        def load(self, name):
            return benches()[name]

    models = {"mimo": NoisyEmbedder("mimo", 0.5), "twin": NoisyEmbedder("twin", 0.5),
              "biased": NoisyEmbedder("biased", 0.5, bias=3.0, seed=1)}
    result = evaluate_models(models, Set(), tmp_path, seeds={"biased": 7})
    cols = {c for c, _ in TABLES["eval_compare"]} - {"dagster_run_id", "created_at"}
    assert all(set(r) == cols for r in result.compare)
    assert {r["model"] for r in result.compare} == {"twin", "biased"}
    assert {(r["benchmark"], r["metric"]) for r in result.compare} == {
        (b, m) for b in Set.names for m in WITH_TOPICS}
    for r in result.compare:
        # topics: 7 query verses on mlir, 5 on translation (BenchmarkConfig(7, 21, 5))
        assert r["reference"] == "mimo" and r["query_lang"] == "all"
        assert r["n_topics"] == {"mlir": 7, "translation": 5}[r["benchmark"]]
        assert r["seed"] == (7 if r["model"] == "biased" else None)
        diff = result.value(r["model"], r["benchmark"], r["metric"]) - result.value("mimo", r["benchmark"],
                                                                                    r["metric"])
        assert r["delta"] == pytest.approx(diff)
        if r["model"] == "twin":  # the same vectors under another name: no difference at all
            assert (r["delta"], r["p_value"]) == (0.0, 1.0)
        else:
            assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    # Holm's family: the models compared with mimo on one (benchmark, metric)
    family = [r for r in result.compare if (r["benchmark"], r["metric"]) == ("mlir", "ndcg@10")]
    assert [r["p_holm"] for r in family] == holm([r["p_value"] for r in family])
    assert evaluate_models({"twin": models["twin"]}, Set(), tmp_path).compare == ()  # no mimo, no comparison


def test_comparison_table_shows_half_intervals_and_significance():
    from mimo_pipeline.evaluation import EvalResult, comparison_table

    def row(model, bench, task, value, ci=None):
        r = {"model": model, "benchmark": bench, "task": task, "query_lang": "all", "metric": "ndcg@10",
             "value": value}
        if ci:
            r.update(ci_low=ci[0], ci_high=ci[1])
        return r

    rows = (row("mimo", "mlir", "mlir", 0.25, (0.23, 0.27)), row("xlco", "mlir", "mlir", 0.20, (0.19, 0.22)),
            row("old", "mlir", "mlir", 0.10),  # a row of an older run: no interval fields
            row("mimo", "monolingual-en", "monolingual", 0.4, (0.3, 0.5)),
            row("mimo", "monolingual-de", "monolingual", 0.2, (0.1, 0.3)))
    compare = ({"model": "xlco", "benchmark": "mlir", "metric": "ndcg@10", "query_lang": "all", "p_holm": 0.01},
               {"model": "old", "benchmark": "mlir", "metric": "ndcg@10", "query_lang": "all",
                "p_holm": float("nan")})
    header, table = comparison_table(EvalResult(rows, (), ("mimo", "xlco", "old"), 0.0, compare=compare),
                                     metrics=("ndcg@10",))
    assert header == ["model", "mlir ndcg@10", "monolingual ndcg@10"]
    assert table == [["mimo", "**0.2500** ± 0.0200", "**0.3000**"],  # two benchmarks averaged: no ±
                     ["xlco", "0.2000 ± 0.0150 †", ""],
                     ["old", "0.1000", ""]]


def test_mrc_interval_needs_complete_groups(tmp_path):
    from mimo_pipeline.evaluation import score_benchmark

    b = benches()["mlir"]
    # drop the French version of one query verse: its group is incomplete, the per-group mean is no
    # longer the MRC figure, so MRC gets no interval (and no comparison)
    drop = next(q for q in sorted(b.queries) if q.endswith(":fr"))
    del b.queries[drop]
    del b.qrels[drop]
    scored = score_benchmark(NoisyEmbedder("mimo", 0.5, 1.0), b, tmp_path)
    mrc = next(r for r in scored.rows if r["metric"] == "mrc@10" and r["query_lang"] == "all")
    assert (mrc["ci_low"], mrc["n_topics"]) == (None, None) and "mrc@10" not in scored.topics


def test_own_language_share_known_answers(tmp_path):
    b = benches()["mlir"]
    # language-blind: the 6 relevant documents (2 verses x 3 languages) fill the top 6, one third in the
    # query's language
    blind = evaluate_benchmark(VerseEmbedder(), b, tmp_path, EvalConfig(own_k=6))
    assert values(blind, "own_lang@6") == pytest.approx(1 / 3)
    assert {r["query_lang"] for r in blind if r["metric"] == "own_lang@6"} == {"en", "de", "fr", "all"}
    # a strong language axis: every one of the top 10 is in the query's language
    biased = evaluate_benchmark(VerseEmbedder(5.0, "biased"), b, tmp_path)
    assert values(biased, "own_lang@10") == pytest.approx(1.0)
    # one language in the pool: no language share to speak of
    assert not [r for r in evaluate_benchmark(VerseEmbedder(), benches()["monolingual-de"], tmp_path)
                if r["metric"].startswith("own_lang")]


class AllBenches:
    """Every toy benchmark: mlir, monolingual-<lang>, translation (their pools share documents)."""

    def __init__(self):
        self.benches = benches()
        self.names = tuple(self.benches)

    def load(self, name):
        return self.benches[name]


class TextCounter(VerseEmbedder):
    def __init__(self, name, fingerprint, bias=0.0):
        super().__init__(bias, fingerprint)
        self.name, self.texts, self.loads = name, [], 0

    def encode(self, texts, prompt):
        self.texts += [(prompt, t) for t in texts]
        return super().encode(texts, prompt)


def _distinct_texts(bench_set):
    seen = set()
    for b in bench_set.benches.values():
        seen |= {("document", d["text"]) for d in b.corpus.values()}
        seen |= {("query", b.queries[q]["text"]) for q in b.qrels if q in b.queries}
    return seen


def test_each_text_is_encoded_once_per_model_across_benchmarks(tmp_path):
    from mimo_pipeline.evaluation import evaluate_models

    bench_set = AllBenches()
    assert len(bench_set.names) == 5  # mlir, monolingual-en/de/fr, translation: one pool of verses
    a = TextCounter("a", "fp-a")
    result = evaluate_models({"a": a}, bench_set, tmp_path)
    expected = _distinct_texts(bench_set)
    assert sorted(a.texts) == sorted(expected)  # every distinct (prompt, text) once, none twice
    assert result.encoded == {"a": len(expected)}
    again = TextCounter("a", "fp-a")  # the same model in a later run: everything is cached
    assert evaluate_models({"a": again}, bench_set, tmp_path).encoded == {"a": 0} and again.texts == []


def test_alignment_uniformity_reuses_the_evaluation_vectors(tmp_path):
    from mimo_pipeline.evaluation import alignment_uniformity, evaluate_models

    bench_set = AllBenches()
    models = {"mimo": TextCounter("mimo", "fp-m"), "xlco": TextCounter("xlco", "fp-x", bias=2.0)}
    ev = evaluate_models(models, bench_set, tmp_path / "cache")
    counts = {k: len(m.texts) for k, m in models.items()}
    au = alignment_uniformity(models, bench_set.load("mlir"), tmp_path / "cache", tmp_path / "plots", ev,
                              n_resamples=1000)
    assert {k: len(m.texts) for k, m in models.items()} == counts  # not one text encoded again
    assert (au.texts_encoded, au.loads, au.n_verses) == (0, 0, 21)
    # fresh embedders of the same models (what the au_analysis asset builds) encode nothing either
    fresh = {"mimo": TextCounter("mimo", "fp-m"), "xlco": TextCounter("xlco", "fp-x", bias=2.0)}
    again = alignment_uniformity(fresh, bench_set.load("mlir"), tmp_path / "cache", tmp_path / "plots2", ev)
    assert all(m.texts == [] for m in fresh.values()) and again.rows == au.rows


def test_alignment_uniformity_rows_and_known_answers(tmp_path):
    from mimo_pipeline.analysis import uniformity
    from mimo_pipeline.evaluation import alignment_uniformity

    b = benches()["mlir"]
    # language-blind: translations coincide (alignment 0) and the cross-language figure equals within
    # (pairs of different verses look the same whatever their languages)
    au = alignment_uniformity({"blind": TextCounter("blind", "fp-b")}, b, tmp_path / "c", tmp_path / "p")
    got = {(r["lang"], r["metric"]): r["value"] for r in au.rows}
    assert set(got) == {("en", "uniformity"), ("de", "alignment"), ("de", "uniformity"), ("fr", "alignment"),
                        ("fr", "uniformity"), ("all", "alignment"), ("all", "uniformity"),
                        ("within", "uniformity"), ("cross", "uniformity")}
    assert got[("de", "alignment")] == pytest.approx(0.0, abs=1e-9) and got[("all", "alignment")] == pytest.approx(
        0.0, abs=1e-9)
    assert got[("cross", "uniformity")] == pytest.approx(got[("within", "uniformity")])
    blind = TextCounter("x", "fp-b2")
    en = blind.encode([b.corpus[f"40.1.{i}:en"]["text"] for i in range(1, 22)], "document")
    assert got[("en", "uniformity")] == pytest.approx(uniformity(en))
    # a language axis pulls languages apart: cross-language uniformity falls below within-language
    au = alignment_uniformity({"biased": TextCounter("biased", "fp-bias", bias=3.0)}, b, tmp_path / "c",
                              tmp_path / "p")
    got = {(r["lang"], r["metric"]): r["value"] for r in au.rows}
    assert got[("cross", "uniformity")] < got[("within", "uniformity")] - 1.0
    assert au.lambda_plot == ""  # no model of the λ ablation


def test_lambda_plot_when_the_ablation_is_present(tmp_path):
    from mimo_pipeline.evaluation import alignment_uniformity, lambda_of

    assert [lambda_of(m) for m in ("mimo", "mimo_lambda_0", "mimo_lambda_0.5", "mimo_lambda_1", "xlco",
                                   "mimo_lambda_x")] == [0.2, 0.0, 0.5, 1.0, None, None]
    models = {"mimo": TextCounter("mimo", "fp-m"), "mimo_lambda_1": TextCounter("mimo_lambda_1", "fp-1", 1.0),
              "xlco": TextCounter("xlco", "fp-x", 2.0)}
    au = alignment_uniformity(models, benches()["mlir"], tmp_path / "c", tmp_path / "p")
    assert au.lambda_plot.endswith("lambda_ablation.png") and (tmp_path / "p" / "lambda_ablation.png").stat().st_size


def test_models_are_loaded_once_per_asset(tmp_path, monkeypatch):
    """Real CheckpointEmbedders (a tiny random BERT): evaluation loads each model once over every
    benchmark; A–U afterwards, with fresh embedders as its asset builds them, loads none."""
    import mimo_pipeline.encoder as encoder
    from mimo_pipeline.evaluation import CheckpointEmbedder, alignment_uniformity, evaluate_models
    from tests.conftest import build_tiny_bert

    bench_set = AllBenches()
    words = {t for b in bench_set.benches.values() for d in b.corpus.values() for t in [d["text"]]}
    folder = build_tiny_bert(tmp_path / "tiny", sorted(words))
    built = []
    real = encoder.SentenceEncoder

    class Counting(real):
        def __init__(self, *a, **k):
            built.append(a[0])
            super().__init__(*a, **k)

    monkeypatch.setattr(encoder, "SentenceEncoder", Counting)

    def make():
        return {"mimo": CheckpointEmbedder("mimo", folder, "tiny-fp", batch_size=16),
                "xlco": CheckpointEmbedder("xlco", folder, "tiny-fp-2", batch_size=16)}

    first = make()
    ev = evaluate_models(first, bench_set, tmp_path / "cache")
    assert ev.loads == {"mimo": 1, "xlco": 1} and len(built) == 2
    assert all(m._encoder is None for m in first.values())  # released
    au = alignment_uniformity(make(), bench_set.load("mlir"), tmp_path / "cache", tmp_path / "plots", ev)
    assert (au.loads, au.texts_encoded, len(built)) == (0, 0, 2)


def test_several_seeds_of_one_model(tmp_path):
    from mimo_pipeline.evaluation import comparison_table, evaluate_models

    class Set:
        names = ("mlir",)

        def load(self, name):
            return benches()[name]

    models = {"mimo@1": NoisyEmbedder("mimo", 0.5, seed=1), "mimo@2": NoisyEmbedder("mimo", 0.5, seed=2),
              "xlco@1": NoisyEmbedder("xlco", 0.5, 2.0, seed=1), "xlco@2": NoisyEmbedder("xlco", 0.5, 2.0, seed=2),
              "base": NoisyEmbedder("base", 0.5, 1.0, seed=9)}
    seeds = {"mimo@1": 1, "mimo@2": 2, "xlco@1": 1, "xlco@2": 2}
    result = evaluate_models(models, Set(), tmp_path, seeds=seeds)
    assert result.models == ("mimo", "xlco", "base")
    assert {(r["model"], r["seed"]) for r in result.rows} == {("mimo", 1), ("mimo", 2), ("xlco", 1), ("xlco", 2),
                                                               ("base", None)}
    ndcg = [r for r in result.compare if r["metric"] == "ndcg@10"]
    assert {(r["model"], r["seed"]) for r in ndcg} == {("xlco", 1), ("xlco", 2), ("base", None)}
    for r in ndcg:
        if r["model"] == "xlco":  # paired with mimo of the same seed
            assert r["delta"] == pytest.approx(result.value("xlco", "mlir", "ndcg@10", seed=r["seed"])
                                               - result.value("mimo", "mlir", "ndcg@10", seed=r["seed"]))
        else:  # no seed: against mimo's per-topic mean over its seeds
            assert r["delta"] == pytest.approx(result.value("base", "mlir", "ndcg@10")
                                               - result.value("mimo", "mlir", "ndcg@10"))
    assert result.value("mimo", "mlir", "ndcg@10") == pytest.approx(
        (result.value("mimo", "mlir", "ndcg@10", seed=1) + result.value("mimo", "mlir", "ndcg@10", seed=2)) / 2)
    header, table = comparison_table(result, metrics=("ndcg@10",))
    cells = {row[0]: row[1] for row in table}
    values = [result.value("xlco", "mlir", "ndcg@10", seed=s) for s in (1, 2)]
    half = np.mean([(r["ci_high"] - r["ci_low"]) / 2 for r in result.rows if r["model"] == "xlco"
                    and r["metric"] == "ndcg@10" and r["query_lang"] == "all"])
    expected = f"{np.mean(values):.4f} ± {half:.4f} · sd {np.std(values, ddof=1):.4f} (n=2)"
    assert cells["xlco"].replace("**", "").replace(" †", "") == expected
    assert "sd" not in cells["base"]


def test_comparison_table_leaves_out_dev_benchmarks_and_ranks_own_lang_lowest_best():
    from mimo_pipeline.evaluation import EvalResult, comparison_table

    def row(model, bench, metric, value):
        return {"model": model, "benchmark": bench, "task": "mlir", "query_lang": "all", "metric": metric,
                "value": value}

    rows = (row("mimo", "mlir", "ndcg@10", 0.3), row("mimo", "dev-mlir", "ndcg@10", 0.9),
            row("xlco", "mlir", "ndcg@10", 0.2), row("mimo", "mlir", "own_lang@10", 0.2),
            row("xlco", "mlir", "own_lang@10", 0.5))
    header, table = comparison_table(EvalResult(rows, (), ("mimo", "xlco"), 0.0))
    assert header == ["model", "mlir ndcg@10", "mlir own_lang@10"]
    assert table == [["mimo", "**0.3000**", "**0.2000**"], ["xlco", "0.2000", "0.5000"]]
    _, dev = comparison_table(EvalResult(rows, (), ("mimo", "xlco"), 0.0), dev=True)
    assert dev == [["mimo", "**0.9000**"], ["xlco", ""]]


def _noisy(name, fingerprint, bias=0.0):
    embedder = NoisyEmbedder(name, 0.3, bias)
    embedder.fingerprint = fingerprint
    return embedder


def test_a_rerun_reads_the_figures_of_the_same_vectors_and_benchmark(tmp_path, monkeypatch):
    """evaluate_models keeps each (model, benchmark)'s figures: a re-run with the same vectors and
    benchmark reads them bit for bit and neither searches nor bootstraps; a changed qrel, seed,
    config or vectors' fingerprint scores again."""
    import mimo_pipeline.evaluation as ev

    bench_set = AllBenches()
    first = ev.evaluate_models({"mimo": _noisy("mimo", "fp-m"), "xlco": _noisy("xlco", "fp-x", 2.0)},
                               bench_set, tmp_path, seeds={"mimo": 13, "xlco": 13})
    scored = []
    real = ev.score_benchmark
    monkeypatch.setattr(ev, "score_benchmark", 
                        lambda e, b, *a, **k: scored.append((e.name, b.name)) or real(e, b, *a, **k))
    again = ev.evaluate_models({"mimo": _noisy("mimo", "fp-m"), "xlco": _noisy("xlco", "fp-x", 2.0)},
                               bench_set, tmp_path, seeds={"mimo": 13, "xlco": 13})
    assert scored == []
    assert first.kept == {"mimo": 0, "xlco": 0} and again.kept == {"mimo": 5, "xlco": 5}
    assert again.rows == first.rows and again.compare == first.compare
    assert again.topic_scores.keys() == first.topic_scores.keys()
    for key, ts in first.topic_scores.items():
        got = again.topic_scores[key]
        assert got.topics == ts.topics and np.array_equal(got.values, ts.values) and np.array_equal(got.sizes, ts.sizes)

    changed = AllBenches()
    qid = next(iter(changed.benches["mlir"].qrels))
    changed.benches["mlir"].qrels[qid] = dict(list(changed.benches["mlir"].qrels[qid].items())[:1])
    ev.evaluate_models({"mimo": _noisy("mimo", "fp-m")}, changed, tmp_path, seeds={"mimo": 13})
    assert scored == [("mimo", "mlir")]  # only the benchmark that changed
    ev.evaluate_models({"mimo": _noisy("mimo", "fp-m")}, bench_set, tmp_path, seeds={"mimo": 14})
    ev.evaluate_models({"mimo": _noisy("mimo", "fp-m2")}, bench_set, tmp_path, seeds={"mimo": 13})
    ev.evaluate_models({"mimo": _noisy("mimo", "fp-m")}, bench_set, tmp_path, EvalConfig(own_k=5),
                       seeds={"mimo": 13})
    assert len(scored) == 1 + 3 * len(bench_set.names)
    ev.evaluate_models({"mimo": _noisy("mimo", "fp-m")}, bench_set, tmp_path, EvalConfig(batch_size=7),
                       seeds={"mimo": 13})
    assert len(scored) == 1 + 3 * len(bench_set.names)  # the batch size changes no figure

    for f in (tmp_path / "fp-m" / "scores").glob("*.json"):  # a damaged file is scored again
        f.write_text("{not json")
    with_damage = ev.evaluate_models({"mimo": _noisy("mimo", "fp-m")}, bench_set, tmp_path, seeds={"mimo": 13})
    assert len(scored) == 1 + 4 * len(bench_set.names)
    assert [r for r in with_damage.rows] == [r for r in first.rows if r["model"] == "mimo"]


def test_a_rerun_reads_the_alignment_uniformity_figures_of_the_same_vectors(tmp_path, monkeypatch):
    """A–U keeps each model's figures beside its vectors: a re-run on the same verses reads them
    (no au_table, no bootstrap), with the seed it is given; other verses or a damaged file compute."""
    import mimo_pipeline.analysis as analysis
    from mimo_pipeline.evaluation import alignment_uniformity

    b = benches()["mlir"]
    models = lambda: {"mimo": TextCounter("mimo", "fp-m"), "xlco": TextCounter("xlco", "fp-x", bias=2.0)}  # noqa: E731
    first = alignment_uniformity(models(), b, tmp_path / "c", tmp_path / "p", seeds={"mimo": 13})
    computed = []
    real = analysis.au_table
    monkeypatch.setattr(analysis, "au_table", lambda vecs, **k: computed.append(1) or real(vecs, **k))
    again = alignment_uniformity(models(), b, tmp_path / "c", tmp_path / "p", seeds={"mimo": 14})
    assert computed == [] and again.texts_encoded == 0
    assert again.rows == first.rows
    assert [(m.name, m.seed) for m in again.models] == [("mimo", 14), ("xlco", None)]
    for new, old in zip(again.models, first.models):
        assert new.table == old.table and np.array_equal(new.alignment_topics.values, old.alignment_topics.values)
        assert all(np.array_equal(new.replicates[k], old.replicates[k], equal_nan=True) for k in old.replicates)
    alignment_uniformity(models(), b, tmp_path / "c", tmp_path / "p", max_verses=15)
    assert len(computed) == 2  # other verses: both models computed
    for f in (tmp_path / "c" / "fp-m" / "au").glob("*.json"):
        f.write_text("[]")
    alignment_uniformity(models(), b, tmp_path / "c", tmp_path / "p")
    assert len(computed) == 3  # the damaged file's model only
