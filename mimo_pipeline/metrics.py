"""Retrieval metrics (trec_eval conventions via ir_measures) and language fairness.

Relevance metrics, `ir_metrics`
-------------------------------
Names and ir_measures measures: ``ndcg@10`` = nDCG@10, ``ndcg@20`` = nDCG@20,
``recall@10`` = R@10, ``recall@100`` = R@100, ``mrr@10`` = RR@10, ``map@100`` = AP@100.
trec_eval conventions: nDCG uses the graded relevance as gain (``rel / log2(rank+1)``,
ideal ranking from the qrels); the others count documents with relevance >= 1 as
relevant. AP@100 divides by the total number of relevant documents (trec_eval
``map_cut_100``); R@k likewise.

- Evaluated queries: those in `qrels` with at least one document of relevance >= 1
  (a query with no relevant document has no defined score; BEIR drops them too).
- A query of that set with no results (absent from the run, or an empty ranking) gets
  0 for every metric; ir_measures itself would leave it out of the mean.
- Queries in the run but not in the qrels are ignored.
- Ties in score are broken as trec_eval does: by document id, descending. The run
  is put in that order before it reaches ir_measures (its scores replaced by
  strictly decreasing ones), so the result does not depend on which ir_measures
  provider computes a measure.

MRC@k (Mean Rank Correlation; Yang et al., MRL 2024; as in MIMO's
``src/mimo/evaluation/metrics.py::compute_mrc``)
--------------------------------------------------------------------------------
A group is one query in several languages (parallel queries) over one shared pool.
For a group and an ordered pair of its languages (a, b):

    U = top-k(a) ∪ top-k(b)                      (document sets, pool indices)
    corr(a, b) = Spearman(score_a[U], score_b[U])

where ``score_x[d]`` is query x's exact similarity to document d (for vectors: the
cosine, also for documents outside x's own top-k). Pairs with ``|U| < 2`` or an
undefined correlation (a constant score vector) are skipped. Spearman is
``scipy.stats.spearmanr``'s statistic (Pearson correlation of average ranks), computed
batched over all pairs with ``scipy.stats.rankdata`` (one spearmanr call per pair was
~1 ms here; tests check equality with spearmanr).
``RC(a, group) = mean_b corr(a, b)``; ``MRC@k(a) = 100 · mean over groups of RC``;
``MRC@k("all") = mean over languages of MRC@k(a)``. When every group has every
language this equals 100 × the mean over groups of the mean over language pairs.
Groups with fewer than two languages are skipped.

Own-language share (``own_lang@k``, `own_language_share`): per query, the share of its top k
written in the query's language; lower = less language bias (chance: about 1/L over L languages).

PEER@k (Probability of Equal Expected Rank; Yang et al., SIGIR 2024; as in MIMO's
``compute_peer``)
------------------------------------------------------------------------------
Per query: rank the run (score descending, ties by document id descending as above),
rank 1 = best. Each relevant document (relevance >= 1; binary) gets its rank, or
``k + 1`` if its rank exceeds k or it is not in the run at all. The ranks are grouped
by the document's language and ``scipy.stats.kruskal`` gives a p-value.

- Relevant documents with no entry in `doc_lang` (not in the pool) are ignored.
- Fewer than two language groups: the query is skipped (no p-value).
- All ranks identical (e.g. every relevant document beyond k, or a query absent from
  the run): p = 1.0 (no difference between languages; kruskal would raise).
- PEER@k = mean p-value over the queries that got one; NaN if none did.
The run must hold at least the top k of each query (a shallower run would put
documents it cut at k + 1).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

METRIC_NAMES = ("ndcg@10", "ndcg@20", "recall@10", "recall@100", "mrr@10", "map@100")


def _ir_measures_map():
    import ir_measures
    from ir_measures import AP, RR, R, nDCG

    return ir_measures, {
        "ndcg@10": nDCG @ 10,
        "ndcg@20": nDCG @ 20,
        "recall@10": R @ 10,
        "recall@100": R @ 100,
        "mrr@10": RR @ 10,
        "map@100": AP @ 100,
    }


def _trec_order(ranking: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then document id descending."""
    for docid, score in ranking.items():
        if score != score:  # NaN
            raise ValueError(f"NaN score for document {docid!r}")
    # Sorting by (score, docid) descending in one pass gives exactly trec_eval's order.
    return [d for d, _ in sorted(ranking.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def canonical_run(run: Run) -> dict[str, dict[str, float]]:
    """The run with tie-free scores: n, n-1, ... 1 in trec_eval order (see module doc)."""
    out: dict[str, dict[str, float]] = {}
    for qid, ranking in run.items():
        order = _trec_order(ranking)
        n = len(order)
        out[str(qid)] = {str(d): float(n - i) for i, d in enumerate(order)}
    return out


def evaluated_queries(qrels: Qrels) -> list[str]:
    """Queries of `qrels` with at least one document of relevance >= 1, sorted."""
    return sorted(str(q) for q, docs in qrels.items() if any(int(r) >= 1 for r in docs.values()))


def ir_metrics(
    qrels: Qrels,
    run: Run,
    metrics: Sequence[str] = METRIC_NAMES,
) -> dict[str, dict[str, float]]:
    """Per-query ``{qid: {metric: value}}`` for the queries of `evaluated_queries`.

    See the module docstring for the conventions (graded nDCG, binary rest, missing
    queries count as 0, trec_eval tie-breaking).
    """
    ir_measures, measure_map = _ir_measures_map()
    unknown = [m for m in metrics if m not in measure_map]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(measure_map)}")
    qids = evaluated_queries(qrels)
    wanted = set(qids)
    qrels_s = {
        str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items() if str(q) in wanted
    }
    run_s = {q: r for q, r in canonical_run(run).items() if q in wanted and r}
    per_query: dict[str, dict[str, float]] = {q: {m: 0.0 for m in metrics} for q in qids}
    if run_s:
        by_measure = {measure_map[m]: m for m in metrics}
        for rec in ir_measures.iter_calc(list(by_measure), qrels_s, run_s):
            name = by_measure[rec.measure]
            per_query[rec.query_id][name] = float(rec.value)
    return per_query


def mean_metrics(
    per_query: Mapping[str, Mapping[str, float]],
    qids: Iterable[str] | None = None,
) -> dict[str, float]:
    """Mean of each metric over `qids` (default: every query of `per_query`).

    A qid not in `per_query` is an error (per_query already holds a 0 for every
    evaluated query without results). An empty selection is an error.
    """
    selected = list(per_query) if qids is None else list(qids)
    if not selected:
        raise ValueError("no queries to average over")
    missing = [q for q in selected if q not in per_query]
    if missing:
        raise KeyError(f"{len(missing)} queries not in per_query, e.g. {missing[:3]}")
    names = list(per_query[selected[0]])
    return {m: float(np.mean([per_query[q][m] for q in selected])) for m in names}


# ----------------------------------------------------------------------------- MRC


def _batched_spearman(a: np.ndarray, b: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``a[r, :lengths[r]]`` with ``b[r, :lengths[r]]`` per row.

    The same statistic as ``scipy.stats.spearmanr`` (Pearson correlation of average
    ranks), batched: padding cells hold +inf so they rank after every real value and
    are then masked out. NaN where undefined (fewer than 2 values or a constant side).
    """
    from scipy.stats import rankdata

    if a.shape[0] == 0:
        return np.zeros(0)
    mask = np.arange(a.shape[1])[None, :] < lengths[:, None]
    ra = np.where(mask, rankdata(a, axis=1), 0.0)
    rb = np.where(mask, rankdata(b, axis=1), 0.0)
    n = np.maximum(lengths, 1).astype(np.float64)
    ra = np.where(mask, ra - (ra.sum(axis=1) / n)[:, None], 0.0)
    rb = np.where(mask, rb - (rb.sum(axis=1) / n)[:, None], 0.0)
    num = np.sum(ra * rb, axis=1)
    den = np.sqrt(np.sum(ra * ra, axis=1) * np.sum(rb * rb, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[(lengths < 2) | ~(den > 1e-12)] = np.nan
    return np.clip(out, -1.0, 1.0)


def _mrc_core(
    topk_by_lang: Mapping[str, np.ndarray],
    valid_by_lang: Mapping[str, np.ndarray],
    group_scores: Callable[[int, list[str], np.ndarray], np.ndarray],
    k: int,
    groups_out: dict[int, float] | None = None,
) -> dict[str, float]:
    langs = sorted(topk_by_lang)
    n_groups = len(next(iter(topk_by_lang.values()))) if langs else 0
    width = 2 * k
    rows_a: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    lengths: list[int] = []
    pair_keys: list[tuple[int, str, str]] = []
    for g in range(n_groups):
        present = [lang for lang in langs if valid_by_lang[lang][g]]
        if len(present) < 2:
            continue
        tops = {}
        for lang in present:
            row = np.asarray(topk_by_lang[lang][g][:k], dtype=np.int64)
            tops[lang] = np.unique(row[row >= 0])
        union_all = np.unique(np.concatenate([tops[lang] for lang in present]))
        # s[i, j]: score of language present[i]'s query for document union_all[j]
        s = np.asarray(group_scores(g, present, union_all), dtype=np.float64)
        for i, a in enumerate(present):
            for j in range(i + 1, len(present)):
                b = present[j]
                cols = np.searchsorted(union_all, np.union1d(tops[a], tops[b]))
                ra = np.full(width, np.inf)
                rb = np.full(width, np.inf)
                ra[: len(cols)] = s[i, cols]
                rb[: len(cols)] = s[j, cols]
                rows_a.append(ra)
                rows_b.append(rb)
                lengths.append(len(cols))
                pair_keys.append((g, a, b))
    corr = _batched_spearman(
        np.asarray(rows_a).reshape(-1, width),
        np.asarray(rows_b).reshape(-1, width),
        np.asarray(lengths, dtype=np.int64),
    )
    # RC(a, group) = mean correlation of a with the group's other languages
    by_group_lang: dict[tuple[int, str], list[float]] = defaultdict(list)
    for (g, a, b), c in zip(pair_keys, corr.tolist()):
        if not math.isnan(c):
            by_group_lang[(g, a)].append(c)
            by_group_lang[(g, b)].append(c)
    per_lang: dict[str, list[float]] = defaultdict(list)
    for (g, lang), vals in sorted(by_group_lang.items()):
        per_lang[lang].append(float(np.mean(vals)))
    out = {lang: 100.0 * float(np.mean(v)) for lang, v in sorted(per_lang.items())}
    out["all"] = float(np.mean(list(out.values()))) if out else float("nan")
    if groups_out is not None:
        by_group: dict[int, list[float]] = defaultdict(list)
        for (g, lang), vals in sorted(by_group_lang.items()):
            by_group[g].append(float(np.mean(vals)))
        groups_out.update({g: 100.0 * float(np.mean(v)) for g, v in sorted(by_group.items())})
    return out


def _check_groups(by_lang: Mapping[str, np.ndarray], what: str) -> int:
    sizes = {lang: len(v) for lang, v in by_lang.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{what}: every language needs one row per group, got {sizes}")
    return next(iter(sizes.values())) if sizes else 0


def _valid(valid_by_lang, langs, n_groups):
    out = {}
    for lang in langs:
        if valid_by_lang is not None and lang in valid_by_lang:
            v = np.asarray(valid_by_lang[lang], dtype=bool)
            if v.shape != (n_groups,):
                raise ValueError(f"valid_by_lang[{lang!r}] must have shape ({n_groups},)")
            out[lang] = v
        else:
            out[lang] = np.ones(n_groups, dtype=bool)
    return out


def mrc_at_k(
    query_vecs_by_lang: Mapping[str, np.ndarray],
    doc_vecs: np.ndarray,
    k: int = 10,
    *,
    topk_ids_by_lang: Mapping[str, np.ndarray] | None = None,
    valid_by_lang: Mapping[str, np.ndarray] | None = None,
    groups_out: dict[int, float] | None = None,
) -> dict[str, float]:
    """MRC@k from vectors: ``{lang: MRC@k(lang), ..., "all": mean over languages}``.

    `query_vecs_by_lang[lang]` is ``[n_groups, d]``: row g of every language is the same
    query (group g). `doc_vecs` ``[n_docs, d]`` is the shared pool. Scores are cosines
    (both sides L2-normalised), computed exactly over each union, so documents outside
    a query's own top-k get their true score.

    `topk_ids_by_lang[lang]` ``[n_groups, >=k]`` (pool indices, -1 = none) reuses an
    existing search (e.g. `retrieval.search` output); without it an exact faiss flat
    search finds the top-k (ties at the cut-off broken by faiss). `valid_by_lang[lang]`
    ``[n_groups] bool`` marks the groups that have that language (default: all).
    Values are in [-100, 100]; definition in the module docstring. ``groups_out``, when
    given, receives the per-group figure ``{g: 100 · mean over the group's languages of
    RC(lang, g)}`` (groups without a defined correlation are absent): the topic scores of
    MRC@k. When every group has every language, their mean is ``MRC@k("all")``.
    """
    from .retrieval import build_index, l2_normalize

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_groups = _check_groups(query_vecs_by_lang, "query_vecs_by_lang")
    docs = l2_normalize(doc_vecs)
    qs = {lang: l2_normalize(v) for lang, v in query_vecs_by_lang.items()}
    if topk_ids_by_lang is None:
        index = build_index(docs, index="flat", normalized=True)
        kk = min(k, docs.shape[0])
        topk = {lang: index.search(q, kk)[1] for lang, q in qs.items()} if kk else {}
    else:
        if set(topk_ids_by_lang) != set(qs):
            raise ValueError("topk_ids_by_lang must have the same languages as query_vecs_by_lang")
        topk = {lang: np.asarray(v, dtype=np.int64) for lang, v in topk_ids_by_lang.items()}
        if _check_groups(topk, "topk_ids_by_lang") != n_groups:
            raise ValueError("topk_ids_by_lang must have one row per group")
    valid = _valid(valid_by_lang, qs, n_groups)

    def group_scores(g: int, langs: list[str], union: np.ndarray) -> np.ndarray:
        q = np.stack([qs[lang][g] for lang in langs]).astype(np.float64)
        return q @ docs[union].astype(np.float64).T

    return _mrc_core(topk, valid, group_scores, k, groups_out)


def mrc_from_scores(
    scores_by_lang: Mapping[str, np.ndarray],
    k: int = 10,
    *,
    valid_by_lang: Mapping[str, np.ndarray] | None = None,
    groups_out: dict[int, float] | None = None,
) -> dict[str, float]:
    """MRC@k from full score matrices ``scores_by_lang[lang]`` ``[n_groups, n_docs]``.

    Same definition as `mrc_at_k` (``groups_out`` too); top-k is
    ``argsort(-scores, stable)[:k]`` (ties broken by the lower pool index).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sc = {lang: np.asarray(v, dtype=np.float64) for lang, v in scores_by_lang.items()}
    n_groups = _check_groups(sc, "scores_by_lang")
    topk = {lang: np.argsort(-v, axis=1, kind="stable")[:, :k] for lang, v in sc.items()}
    valid = _valid(valid_by_lang, sc, n_groups)

    def group_scores(g: int, langs: list[str], union: np.ndarray) -> np.ndarray:
        return np.stack([sc[lang][g, union] for lang in langs])

    return _mrc_core(topk, valid, group_scores, k, groups_out)


# ---------------------------------------------------------------------------- PEER


def peer_per_query(
    run: Run,
    qrels: Qrels,
    doc_lang: Mapping[str, str],
    k: int = 100,
) -> dict[str, float]:
    """Kruskal–Wallis p-value per query; queries without one are absent.

    See the module docstring for ranks, cut-off and edge cases.
    """
    from scipy.stats import kruskal

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out: dict[str, float] = {}
    for qid in evaluated_queries(qrels):
        ranking = run.get(qid) or {}
        rank_of = {d: i + 1 for i, d in enumerate(_trec_order(ranking))}
        groups: dict[str, list[int]] = defaultdict(list)
        for docid, rel in qrels[qid].items():
            if int(rel) < 1 or docid not in doc_lang:
                continue
            groups[doc_lang[docid]].append(min(rank_of.get(docid, k + 1), k + 1))
        if len(groups) < 2:
            continue
        samples = [groups[lang] for lang in sorted(groups)]
        flat = [r for g in samples for r in g]
        if len(set(flat)) <= 1:
            out[qid] = 1.0
            continue
        out[qid] = float(kruskal(*samples).pvalue)
    return out


def peer_at_k(
    run: Run,
    qrels: Qrels,
    doc_lang: Mapping[str, str],
    k: int = 100,
    *,
    qids: Iterable[str] | None = None,
) -> float:
    """PEER@k: mean of `peer_per_query` p-values (over `qids` if given); NaN if none."""
    p = peer_per_query(run, qrels, doc_lang, k)
    if qids is not None:
        keep = set(qids)
        p = {q: v for q, v in p.items() if q in keep}
    return float(np.mean(list(p.values()))) if p else float("nan")


# ---------------------------------------------------------------------------- own-language share


def own_language_share(
    run: Run,
    query_lang: Mapping[str, str],
    doc_lang: Mapping[str, str],
    k: int = 10,
) -> dict[str, float]:
    """Per query: the share of its top-k documents written in the query's own language.

    The top k in trec_eval order (score descending, ties by document id descending); the
    share is over the documents actually ranked (``min(k, len(ranking))``). Queries with
    no language, or an empty ranking, are absent. A ranked document without a language
    counts as not the query's. On a pool with L languages in equal shares where every
    language version of a relevant document is relevant, a language-blind ranking has an
    expected share near 1/L; a share above that is the language bias of `mrc_at_k` seen
    from the ranking's side (lower = less bias).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out: dict[str, float] = {}
    for qid, ranking in run.items():
        lang = query_lang.get(qid)
        if lang is None or not ranking:
            continue
        top = _trec_order(ranking)[:k]
        out[qid] = sum(doc_lang.get(d) == lang for d in top) / len(top)
    return out
