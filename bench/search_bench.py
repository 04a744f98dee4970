"""`search`: `mimo_pipeline.retrieval.search` against brute-force numpy on random unit vectors.

Both sides get the same L2-normalised float32 queries and documents and return the
top-k ids per query in score order. Ours is the library call as the pipeline makes it
(it re-normalises its inputs and builds the faiss index inside the call); the peer is
``q @ d.T`` plus ``np.argpartition`` and a sort of the k survivors, in query chunks.

- ``queries_per_s``: flat (exact) index against the peer, the median of ``reps``
  alternating runs each (ours, peer, ours, peer, ...).
- ``recall@k_ivf`` / ``recall@k_hnsw``: mean |top-k ∩ exact top-k| / k of the
  approximate indexes with the library's default settings; the peer is the exact
  search (1.0). They run on the first ``ann_docs`` documents (default 10k: building
  HNSW over 50k random vectors takes about two minutes on two busy cores). Random
  unit vectors in 384 dimensions have no cluster structure, the hardest case for IVF
  and HNSW, so these recalls are lower bounds for real embeddings.
- ``queries_per_s_ivf`` / ``queries_per_s_hnsw``: the same calls timed end to end,
  index construction included (what one `search` call costs in the pipeline),
  against numpy's exact search on that pool. The details split build and search
  (``<kind>_build_s``, ``<kind>_search_only_qps``): a persistent index would pay the
  build once.

The details also hold a what-if: the flat search again with faiss'
``distance_compute_blas_database_bs`` raised from 1024 to 16384 (a process-wide faiss
setting, restored afterwards), the change `retrieval.search` could make.
"""

from __future__ import annotations

import numpy as np

from mimo_pipeline.retrieval import build_index, search

from .common import Row, log, median, timed


def random_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(queries: np.ndarray, docs: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: matmul, argpartition, then sort the k survivors."""
    nq, n = queries.shape[0], docs.shape[0]
    kk = min(k, n)
    scores = np.empty((nq, kk), dtype=np.float32)
    ids = np.empty((nq, kk), dtype=np.int64)
    for s in range(0, nq, chunk):
        sim = queries[s:s + chunk] @ docs.T
        part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(sim), 1))
        top = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        ids[s:s + chunk] = np.take_along_axis(part, order, axis=1)
        scores[s:s + chunk] = np.take_along_axis(top, order, axis=1)
    return scores, ids


def recall_at_k(ids: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |ids ∩ exact| / |exact| (-1 slots never match)."""
    hits = [len(set(a[a >= 0].tolist()) & set(b.tolist())) / len(b) for a, b in zip(ids, exact)]
    return float(np.mean(hits))


def _timed_pair(fn_ours, fn_peer, reps: int, n: int) -> tuple[list[float], list[float], object, object]:
    ours, peer, r_o, r_p = [], [], None, None
    for _ in range(reps):  # interleaved: ours, peer, ours, peer, ...
        t, r_o = timed(fn_ours)
        ours.append(n / t)
        t, r_p = timed(fn_peer)
        peer.append(n / t)
    return ours, peer, r_o, r_p


def run_search(n_queries: int = 1000, n_docs: int = 50_000, dim: int = 384, k: int = 100, *,
               reps: int = 3, ann: bool = True, ann_docs: int = 10_000, seed: int = 0) -> tuple[list[Row], dict]:
    """Time ours (faiss flat, and IVF/HNSW with ``ann``) against numpy; return rows and details."""
    import faiss

    rng = np.random.default_rng(seed)
    queries, docs = random_unit(n_queries, dim, rng), random_unit(n_docs, dim, rng)
    log(f"search: {n_queries} queries x {n_docs} docs x {dim}, k={k}")
    ours_qps, peer_qps, (_, ours_ids), (_, exact) = _timed_pair(
        lambda: search(queries, docs, k, index="flat"), lambda: numpy_topk(queries, docs, k), reps, n_queries)
    log(f"search flat: ours {[round(x) for x in ours_qps]} q/s, numpy {[round(x) for x in peer_qps]} q/s")
    flat_recall = recall_at_k(ours_ids, exact)
    if flat_recall < 0.999:  # float ties aside, two exact searches agree
        raise AssertionError(f"faiss flat and numpy disagree: recall {flat_recall:.4f}")
    rows = [Row("search", "queries_per_s", median(ours_qps), median(peer_qps), "numpy matmul+argpartition")]
    details = {"flat_recall_vs_numpy": flat_recall, "ours_qps_runs": ours_qps, "peer_qps_runs": peer_qps}

    old = faiss.cvar.distance_compute_blas_database_bs
    try:
        faiss.cvar.distance_compute_blas_database_bs = 16384
        tuned, _, _, _ = _timed_pair(lambda: search(queries, docs, k, index="flat"), lambda: None, reps, n_queries)
    finally:
        faiss.cvar.distance_compute_blas_database_bs = old
    details["flat_qps_with_database_bs_16384"] = median(tuned)
    log(f"search flat with distance_compute_blas_database_bs=16384: {median(tuned):.0f} q/s")

    if ann:
        pool = docs[:ann_docs]
        t_exact, (_, exact) = timed(lambda: numpy_topk(queries, pool, k))
        for kind in ("ivf", "hnsw"):
            t, (_, ids) = timed(lambda: search(queries, pool, k, index=kind, seed=seed))
            rec = recall_at_k(ids, exact)
            log(f"search {kind} ({len(pool)} docs): recall@{k} {rec:.3f}, {n_queries / t:.0f} q/s incl. index build "
                f"({t:.1f}s; numpy exact {n_queries / t_exact:.0f} q/s)")
            t_build, idx = timed(lambda: build_index(pool, index=kind, seed=seed, normalized=True))
            if kind == "hnsw":
                idx.hnsw.efSearch = max(64, 2 * k)  # what `search` sets
            t_search, _ = timed(lambda: idx.search(queries, k))
            details[f"{kind}_build_s"], details[f"{kind}_search_only_qps"] = t_build, n_queries / t_search
            log(f"search {kind}: index build {t_build:.1f}s, then {n_queries / t_search:.0f} q/s")
            rows.append(Row("search", f"recall@{k}_{kind}", rec, 1.0, f"exact = 1.0; {len(pool)} docs"))
            rows.append(Row("search", f"queries_per_s_{kind}", n_queries / t, n_queries / t_exact,
                            f"numpy exact on {len(pool)} docs; ours incl. index build"))
            details[f"{kind}_seconds"] = t
    return rows, details
