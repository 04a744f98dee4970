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


PER_QUERY = ("ndcg@10", "ndcg@20", "recall@10", "recall@100", "mrr@10", "map@100", "peer@100")


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
    assert set(PER_QUERY) <= set(at_all) and set(scored.topics) == set(PER_QUERY)
    for metric in PER_QUERY:
        r = at_all[metric]
        assert r["n_topics"] == 7  # 7 query verses, each asked in 3 languages: 7 topics, not 21 queries
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert scored.topics[metric].mean() == pytest.approx(r["value"])
    assert any(at_all[m]["ci_low"] < at_all[m]["ci_high"] for m in PER_QUERY)
    assert (at_all["mrc@10"]["ci_low"], at_all["mrc@10"]["n_topics"]) == (None, None)  # not a per-query mean
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
        (b, m) for b in Set.names for m in PER_QUERY}
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
