"""Dense retrieval with faiss over cosine similarity.

Vectors are L2-normalised (float32) before indexing, so inner product equals cosine.

Indexes:

- ``flat``: ``faiss.IndexFlatIP``, exact.
- ``ivf``: ``faiss.IndexIVFFlat`` with ``METRIC_INNER_PRODUCT``, its coarse quantiser
  trained (k-means, seeded) on the documents themselves. ``nlist`` defaults to
  ``round(4 * sqrt(n_docs))`` clamped to ``[1, n_docs]``; ``nprobe`` defaults to
  ``max(8, nlist // 4)`` clamped to ``nlist``.
- ``hnsw``: ``faiss.IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``, ``hnsw_m`` links per
  node, ``efConstruction`` 80, ``efSearch`` ``max(64, 2 * k)`` unless given.

Result shape is always ``[n_queries, k]``. When ``k`` exceeds the pool, or an
approximate index finds fewer than ``k`` candidates, the missing slots hold id ``-1``
and score ``-inf`` (faiss' own convention for ids; scores are made ``-inf`` here).
`run_from_search` drops those slots.

faiss' thread count is set from ``OMP_NUM_THREADS`` (read at call time) when that
variable is set; otherwise faiss' default is kept.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np

INDEX_KINDS = ("flat", "ivf", "hnsw")


def _set_faiss_threads(faiss) -> None:
    value = os.environ.get("OMP_NUM_THREADS")
    if value:
        try:
            n = int(value)
        except ValueError:
            return
        if n > 0:
            faiss.omp_set_num_threads(n)


def l2_normalize(x, eps: float = 1e-12) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm, as a new C-contiguous float32 array.

    Zero rows stay zero (their norm is clamped to `eps`).
    """
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-d array [n, d], got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return np.ascontiguousarray(a / np.maximum(norms, eps), dtype=np.float32)


def default_nlist(n_docs: int) -> int:
    """IVF list count: about 4·sqrt(n), within [1, n]."""
    return int(min(max(1, round(4 * math.sqrt(max(n_docs, 1)))), max(n_docs, 1)))


def build_index(
    doc_vecs,
    *,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    hnsw_ef_construction: int = 80,
    seed: int = 0,
    normalized: bool = False,
):
    """A faiss index over (L2-normalised) `doc_vecs`; see the module docstring."""
    import faiss

    _set_faiss_threads(faiss)
    docs = np.ascontiguousarray(doc_vecs, dtype=np.float32) if normalized else l2_normalize(doc_vecs)
    n, d = docs.shape
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        if n == 0:
            raise ValueError("an IVF index needs at least one document to train on")
        nl = default_nlist(n) if nlist is None else int(nlist)
        if not 1 <= nl <= n:
            raise ValueError(f"nlist must be in [1, n_docs={n}], got {nl}")
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nl, faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = int(seed)
        idx.cp.min_points_per_centroid = 1  # small pools: no "too few points" warning
        idx.train(docs)
        idx.nprobe = int(min(nl, max(8, nl // 4))) if nprobe is None else int(min(max(1, nprobe), nl))
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(hnsw_ef_construction)
    else:
        raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
    if n:
        idx.add(docs)
    return idx


def search(
    query_vecs,
    doc_vecs,
    k: int,
    *,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    hnsw_ef_search: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` documents per query by cosine similarity.

    Returns ``(scores [nq, k] float32, ids [nq, k] int64)``, rows sorted by descending
    score; ids index the rows of `doc_vecs`. Slots beyond the pool (or not found by an
    approximate index) hold id ``-1`` and score ``-inf``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = l2_normalize(query_vecs)
    docs = l2_normalize(doc_vecs)
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"dimension mismatch: queries {queries.shape[1]}, docs {docs.shape[1]}")
    nq, n = queries.shape[0], docs.shape[0]
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or n == 0:
        return scores, ids
    kk = min(k, n)
    idx = build_index(
        docs, index=index, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, seed=seed, normalized=True
    )
    if index == "hnsw":
        idx.hnsw.efSearch = int(hnsw_ef_search) if hnsw_ef_search else max(64, 2 * kk)
    s, i = idx.search(queries, kk)
    i = i.astype(np.int64, copy=False)
    s = np.where(i < 0, -np.inf, s).astype(np.float32)
    scores[:, :kk] = s
    ids[:, :kk] = i
    return scores, ids


def run_from_search(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    scores: np.ndarray,
    ids: np.ndarray,
) -> dict[str, dict[str, float]]:
    """A TREC-style run ``{qid: {docid: score}}`` from `search` output.

    Row r of `scores`/`ids` belongs to ``query_ids[r]``; ids index `doc_ids`. Slots with
    id ``-1`` are skipped. Duplicate query ids are an error.
    """
    scores = np.asarray(scores)
    ids = np.asarray(ids)
    if scores.shape != ids.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and ids {ids.shape} must be equal 2-d shapes")
    if len(query_ids) != scores.shape[0]:
        raise ValueError(f"{len(query_ids)} query ids for {scores.shape[0]} result rows")
    run: dict[str, dict[str, float]] = {}
    for r, qid in enumerate(query_ids):
        if qid in run:
            raise ValueError(f"duplicate query id {qid!r}")
        row: dict[str, float] = {}
        for j, s in zip(ids[r].tolist(), scores[r].tolist()):
            if j < 0:
                continue
            row[doc_ids[j]] = float(s)
        run[qid] = row
    return run


def merge_runs(*runs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Union of runs with disjoint query ids (e.g. one run per query language)."""
    out: dict[str, dict[str, float]] = {}
    for run in runs:
        for qid, row in run.items():
            if qid in out:
                raise ValueError(f"query id {qid!r} appears in more than one run")
            out[qid] = dict(row)
    return out
