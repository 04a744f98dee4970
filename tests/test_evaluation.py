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
