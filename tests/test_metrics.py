"""Metrics against closed forms, pytrec_eval (when installed) and scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kruskal, spearmanr

from mimo_pipeline.metrics import (
    METRIC_NAMES,
    _batched_spearman,
    canonical_run,
    ir_metrics,
    mean_metrics,
    mrc_at_k,
    mrc_from_scores,
    own_language_share,
    peer_at_k,
    peer_per_query,
)


def log2(x):
    return math.log(x, 2)


# --------------------------------------------------------------- relevance metrics

QRELS = {
    # graded
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1},
    # binary
    "q2": {"a": 1, "b": 1},
    # empty result list
    "q3": {"x": 1},
    # missing from the run
    "q4": {"y": 2},
    # no relevant document: not evaluated
    "q5": {"z": 0},
}
RUN = {
    # ties: d1 and d2 both 0.5 -> trec_eval order by docid descending: d2 before d1
    # ranking: d3, d2, d1, d5, d4
    "q1": {"d3": 0.9, "d1": 0.5, "d2": 0.5, "d5": 0.4, "d4": 0.1},
    # n00..n02 (1.00, 0.99, 0.98), b (0.975): rank 4, n03..n09 (ranks 5..11), a: rank 12
    "q2": {**{f"n{i:02d}": 1.0 - i / 100 for i in range(10)}, "b": 0.975, "a": 0.5},
    "q3": {},
    "q5": {"z": 1.0},
    # not in the qrels: ignored
    "q6": {"d1": 1.0},
}


def expected_q1():
    dcg = 0 + 1 / log2(3) + 2 / log2(4) + 0 + 1 / log2(6)
    idcg = 2 / log2(2) + 1 / log2(3) + 1 / log2(4)
    return {
        "ndcg@10": dcg / idcg,
        "ndcg@20": dcg / idcg,
        "recall@10": 1.0,
        "recall@100": 1.0,
        "mrr@10": 1 / 2,
        "map@100": (1 / 2 + 2 / 3 + 3 / 5) / 3,
    }


def expected_q2():
    idcg = 1 + 1 / log2(3)
    return {
        "ndcg@10": (1 / log2(5)) / idcg,
        "ndcg@20": (1 / log2(5) + 1 / log2(13)) / idcg,
        "recall@10": 0.5,
        "recall@100": 1.0,
        "mrr@10": 1 / 4,
        "map@100": (1 / 4 + 2 / 12) / 2,
    }


ZERO = {m: 0.0 for m in METRIC_NAMES}


def test_ir_metrics_handcrafted():
    per_query = ir_metrics(QRELS, RUN)
    assert sorted(per_query) == ["q1", "q2", "q3", "q4"]
    for qid, expected in [("q1", expected_q1()), ("q2", expected_q2()), ("q3", ZERO), ("q4", ZERO)]:
        assert set(per_query[qid]) == set(METRIC_NAMES)
        for m in METRIC_NAMES:
            assert per_query[qid][m] == pytest.approx(expected[m], abs=1e-12), (qid, m)


def test_mean_counts_missing_queries_as_zero():
    per_query = ir_metrics(QRELS, RUN)
    mean = mean_metrics(per_query)
    e1, e2 = expected_q1(), expected_q2()
    for m in METRIC_NAMES:
        assert mean[m] == pytest.approx((e1[m] + e2[m] + 0 + 0) / 4)
    sub = mean_metrics(per_query, ["q1", "q4"])
    assert sub["ndcg@10"] == pytest.approx(e1["ndcg@10"] / 2)
    with pytest.raises(KeyError):
        mean_metrics(per_query, ["q6"])
    with pytest.raises(ValueError):
        mean_metrics(per_query, [])


def test_ir_metrics_no_run_at_all():
    per_query = ir_metrics(QRELS, {})
    assert per_query == {q: ZERO for q in ["q1", "q2", "q3", "q4"]}


def test_canonical_run_trec_order():
    run = canonical_run({"q": {"a": 1.0, "c": 1.0, "b": 2.0}})
    assert sorted(run["q"], key=run["q"].get, reverse=True) == ["b", "c", "a"]
    with pytest.raises(ValueError):
        canonical_run({"q": {"a": float("nan")}})


# hand-written trec_eval closed forms, used on random runs


def _ref_order(ranking):
    return [d for d, _ in sorted(ranking.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _ref(qrels_q, ranking, metric):
    order = _ref_order(ranking)
    rel = {d for d, r in qrels_q.items() if r >= 1}
    name, k = metric.split("@")
    k = int(k)
    top = order[:k]
    if name == "ndcg":
        dcg = sum(max(qrels_q.get(d, 0), 0) / log2(i + 2) for i, d in enumerate(top))
        gains = sorted((r for r in qrels_q.values() if r > 0), reverse=True)[:k]
        idcg = sum(g / log2(i + 2) for i, g in enumerate(gains))
        return dcg / idcg
    if name == "recall":
        return len(rel & set(top)) / len(rel)
    if name == "mrr":
        return next((1 / (i + 1) for i, d in enumerate(top) if d in rel), 0.0)
    if name == "map":
        hits, total = 0, 0.0
        for i, d in enumerate(top):
            if d in rel:
                hits += 1
                total += hits / (i + 1)
        return total / len(rel)
    raise AssertionError(metric)


def _random_case(seed, n_q=15, n_docs=150, tie_levels=None):
    rng = np.random.default_rng(seed)
    docs = [f"d{i:03d}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(n_q):
        qid = f"q{q}"
        judged = rng.choice(n_docs, size=12, replace=False)
        qrels[qid] = {docs[j]: int(rng.integers(0, 4)) for j in judged}
        qrels[qid][docs[judged[0]]] = 1 + int(rng.integers(0, 3))  # at least one relevant
        depth = int(rng.integers(1, n_docs))
        picked = rng.choice(n_docs, size=depth, replace=False)
        scores = rng.random(depth) if tie_levels is None else rng.integers(0, tie_levels, depth) / 10
        run[qid] = {docs[j]: float(s) for j, s in zip(picked, scores)}
    return qrels, run


@pytest.mark.parametrize("tie_levels", [None, 5])
def test_ir_metrics_match_closed_forms(tie_levels):
    qrels, run = _random_case(1, tie_levels=tie_levels)
    per_query = ir_metrics(qrels, run)
    for qid in qrels:
        for m in METRIC_NAMES:
            assert per_query[qid][m] == pytest.approx(_ref(qrels[qid], run[qid], m), abs=1e-9), (qid, m)


def test_ir_metrics_match_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = _random_case(2)
    ours = ir_metrics(qrels, run)
    names = {
        "ndcg@10": "ndcg_cut_10",
        "ndcg@20": "ndcg_cut_20",
        "recall@10": "recall_10",
        "recall@100": "recall_100",
        "map@100": "map_cut_100",
    }
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut", "recall", "map_cut"})
    ref = evaluator.evaluate(run)
    for qid in qrels:
        for ours_name, trec_name in names.items():
            assert ours[qid][ours_name] == pytest.approx(ref[qid][trec_name], abs=1e-9)


# ---------------------------------------------------------------------------- MRC


def test_mrc_identical_rankings_is_100():
    row = np.array([0.9, 0.5, 0.8, 0.1, 0.3, 0.7])
    res = mrc_from_scores({lang: row[None, :] for lang in ("en", "de", "fr")}, k=3)
    assert res == pytest.approx({"de": 100.0, "en": 100.0, "fr": 100.0, "all": 100.0})


def test_mrc_reversed_ranking_is_minus_100():
    row = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    res = mrc_from_scores({"en": row[None], "de": row[::-1][None]}, k=3)
    assert res["all"] == pytest.approx(-100.0)


def test_mrc_closed_form_partial_overlap():
    # top-2 of en = {0, 1}, of de = {2, 3}: the union is the whole pool.
    # ranks en [4,3,2,1], de [1,2,4,3]: sum d^2 = 18, rho = 1 - 6*18/(4*15) = -0.8
    en = np.array([[4.0, 3.0, 2.0, 1.0]])
    de = np.array([[1.0, 2.0, 4.0, 3.0]])
    res = mrc_from_scores({"en": en, "de": de}, k=2)
    assert res["all"] == pytest.approx(-80.0)
    # k=1: union {0, 2}; en scores (4, 2), de scores (1, 4): rho = -1
    assert mrc_from_scores({"en": en, "de": de}, k=1)["all"] == pytest.approx(-100.0)


def test_mrc_rc_is_mean_over_other_languages():
    row = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    res = mrc_from_scores({"en": row[None], "de": row[None], "fr": row[::-1][None]}, k=3)
    assert res["en"] == pytest.approx(0.0)
    assert res["de"] == pytest.approx(0.0)
    assert res["fr"] == pytest.approx(-100.0)
    assert res["all"] == pytest.approx(-100.0 / 3)


def test_mrc_skips_groups_with_one_language():
    rng = np.random.default_rng(0)
    scores = {"en": rng.random((2, 6)), "de": rng.random((2, 6))}
    valid = {"en": np.array([True, False]), "de": np.array([False, True])}
    res = mrc_from_scores(scores, k=2, valid_by_lang=valid)
    assert list(res) == ["all"] and math.isnan(res["all"])


def test_batched_spearman_equals_scipy():
    rng = np.random.default_rng(3)
    a = np.full((40, 12), np.inf)
    b = np.full((40, 12), np.inf)
    lengths = rng.integers(2, 13, size=40)
    for r, n in enumerate(lengths):
        if r % 2:  # with ties
            a[r, :n] = rng.integers(0, 4, n)
            b[r, :n] = rng.integers(0, 4, n)
        else:
            a[r, :n] = rng.random(n)
            b[r, :n] = rng.random(n)
    a[0, : lengths[0]] = 1.0  # constant: undefined
    got = _batched_spearman(a, b, lengths)
    assert math.isnan(got[0])
    for r in range(1, 40):
        n = lengths[r]
        ref = spearmanr(a[r, :n], b[r, :n]).statistic
        if math.isnan(ref):
            assert math.isnan(got[r])
        else:
            assert got[r] == pytest.approx(ref, abs=1e-12)


def _mrc_reference(scores_by_lang, k):
    """Straight per-pair scipy.stats.spearmanr, as MIMO's compute_mrc does it."""
    langs = sorted(scores_by_lang)
    per_lang = {lang: [] for lang in langs}
    n_groups = len(scores_by_lang[langs[0]])
    for g in range(n_groups):
        top = {lang: set(np.argsort(-scores_by_lang[lang][g], kind="stable")[:k].tolist()) for lang in langs}
        for a in langs:
            vals = []
            for b in langs:
                if a == b:
                    continue
                u = sorted(top[a] | top[b])
                vals.append(spearmanr(scores_by_lang[a][g, u], scores_by_lang[b][g, u]).statistic)
            per_lang[a].append(np.mean(vals))
    out = {lang: 100 * float(np.mean(v)) for lang, v in per_lang.items()}
    out["all"] = float(np.mean(list(out.values())))
    return out


def test_mrc_vectors_match_scores_and_reference():
    rng = np.random.default_rng(4)
    docs = rng.standard_normal((60, 8))
    base = rng.standard_normal((7, 8))
    q = {lang: base + 0.6 * rng.standard_normal((7, 8)) for lang in ("en", "de", "fr")}
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cos = {lang: unit(v) @ unit(docs).T for lang, v in q.items()}
    ref = _mrc_reference(cos, k=5)
    assert mrc_from_scores(cos, k=5) == pytest.approx(ref, abs=1e-9)
    assert mrc_at_k(q, docs, k=5) == pytest.approx(ref, abs=1e-6)
    # reusing a search's top-k gives the same
    from mimo_pipeline.retrieval import search

    topk = {lang: search(v, docs, 5)[1] for lang, v in q.items()}
    assert mrc_at_k(q, docs, k=5, topk_ids_by_lang=topk) == pytest.approx(ref, abs=1e-6)


def test_mrc_per_group_scores():
    # group 0: en and de identical (RC 1 each), fr reversed: RC en = de = 0, fr = -1 -> 100 * mean = -100/3
    # group 1: all identical: 100
    row = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    scores = {"en": np.stack([row, row]), "de": np.stack([row, row]), "fr": np.stack([row[::-1], row])}
    groups: dict = {}
    res = mrc_from_scores(scores, k=3, groups_out=groups)
    assert groups == pytest.approx({0: -100.0 / 3, 1: 100.0})
    assert np.mean(list(groups.values())) == pytest.approx(res["all"])  # every group has every language
    # a group with one language has no figure
    valid = {"en": np.array([True, True]), "de": np.array([True, False]), "fr": np.array([True, False])}
    groups = {}
    mrc_from_scores(scores, k=3, valid_by_lang=valid, groups_out=groups)
    assert list(groups) == [0]
    # the vector path fills it the same way
    rng = np.random.default_rng(5)
    docs, base = rng.standard_normal((30, 6)), rng.standard_normal((4, 6))
    q = {lang: base + 0.5 * rng.standard_normal((4, 6)) for lang in ("en", "de")}
    from_vecs: dict = {}
    assert mrc_at_k(q, docs, k=5, groups_out=from_vecs)["all"] == pytest.approx(np.mean(list(from_vecs.values())))
    assert sorted(from_vecs) == [0, 1, 2, 3]


# ------------------------------------------------------------------- own-language share


def test_own_language_share_closed_forms():
    doc_lang = {"e1": "en", "e2": "en", "d1": "de", "d2": "de", "x": None}
    run = {"qen": {"e1": 0.9, "d1": 0.8, "e2": 0.7, "d2": 0.6},  # top 3: e1, d1, e2 -> 2/3
           "qde": {"e1": 0.9, "d1": 0.8, "e2": 0.7, "d2": 0.6},  # top 3: e1, d1, e2 -> 1/3
           "tie": {"e1": 0.5, "d2": 0.5, "d1": 0.5},  # trec order on ties: id descending: e1, d2, d1 -> 2/3 de
           "few": {"d1": 1.0},  # one ranked document: share over 1
           "none": {}, "nolang": {"e1": 1.0}}
    qlang = {"qen": "en", "qde": "de", "tie": "de", "few": "de", "none": "de"}
    got = own_language_share(run, qlang, doc_lang, k=3)
    assert got == pytest.approx({"qen": 2 / 3, "qde": 1 / 3, "tie": 2 / 3, "few": 1.0})
    assert own_language_share(run, qlang, doc_lang, k=1) == pytest.approx({"qen": 1.0, "qde": 0.0, "tie": 0.0,
                                                                         "few": 1.0})
    with pytest.raises(ValueError):
        own_language_share(run, qlang, doc_lang, k=0)


# --------------------------------------------------------------------------- PEER

DOC_LANG = {f"{lang}{i}": lang for lang in ("en", "de", "fr") for i in range(3)}
QRELS_PEER = {"q": {d: 1 for d in DOC_LANG}}


def _run_with_ranks(ranks: dict[str, int], n_fill: int = 0) -> dict[str, float]:
    """A run placing the given documents at the given 1-based ranks, others filler."""
    depth = max(list(ranks.values()) + [n_fill])
    slots = {r: d for d, r in ranks.items()}
    return {slots.get(r, f"filler{r}"): float(1000 - r) for r in range(1, depth + 1)}


def test_peer_english_first_is_unfair_exact_p():
    # en at ranks 1, 2, 3; de0 at rank 15 (> k) and the rest not retrieved: all k + 1.
    run = {"q": _run_with_ranks({"en0": 1, "en1": 2, "en2": 3, "de0": 15})}
    p = peer_per_query(run, QRELS_PEER, DOC_LANG, k=10)["q"]
    # N = 9; ranks-of-ranks: en 1,2,3 (sum 6); six ties at 6.5 (sums 19.5, 19.5)
    h = 12 / (9 * 10) * (6**2 / 3 + 2 * 19.5**2 / 3) - 3 * 10  # 5.4
    h /= 1 - (6**3 - 6) / (9**3 - 9)  # tie correction -> 7.6235
    exact = math.exp(-h / 2)  # chi-square survival function, 2 degrees of freedom
    assert p == pytest.approx(exact, rel=1e-9)
    assert p == pytest.approx(kruskal([1, 2, 3], [11] * 3, [11] * 3).pvalue)
    assert p < 0.05


def test_peer_interleaved_is_fair():
    ranks = {"en0": 1, "de0": 2, "fr0": 3, "en1": 4, "de1": 5, "fr1": 6, "en2": 7, "de2": 8, "fr2": 9}
    run = {"q": _run_with_ranks(ranks)}
    p = peer_at_k(run, QRELS_PEER, DOC_LANG, k=10)
    # rank sums 12, 15, 18: H = 12/90 * (144 + 225 + 324)/3 - 30 = 0.8, no ties
    assert p == pytest.approx(math.exp(-0.8 / 2), rel=1e-9)
    assert p > 0.5


def test_peer_edge_cases():
    doc_lang = dict(DOC_LANG)
    qrels = {
        "none_retrieved": {"en0": 1, "de0": 1},
        "missing_from_run": {"en0": 1, "fr0": 1},
        "one_language": {"en0": 1, "en1": 1},
        "unknown_doc": {"en0": 1, "xx9": 1},  # xx9 not in the pool: ignored -> one language
        "no_relevant": {"en0": 0, "de0": 0},
        "ties": {"en0": 1, "de0": 1, "de1": 1},
    }
    run = {
        "none_retrieved": {"filler": 1.0},
        "one_language": {"en0": 1.0, "en1": 0.5},
        "unknown_doc": {"en0": 1.0},
        # en0 and de1 tie at 0.5: trec order by id descending puts en0 before de1
        "ties": {"de0": 0.9, "en0": 0.5, "de1": 0.5},
    }
    p = peer_per_query(run, qrels, doc_lang, k=10)
    assert set(p) == {"none_retrieved", "missing_from_run", "ties"}
    assert p["none_retrieved"] == 1.0
    assert p["missing_from_run"] == 1.0
    assert p["ties"] == pytest.approx(kruskal([1, 3], [2]).pvalue)
    assert peer_at_k(run, qrels, doc_lang, k=10) == pytest.approx(np.mean(list(p.values())))
    assert peer_at_k(run, qrels, doc_lang, k=10, qids=["ties"]) == pytest.approx(p["ties"])
    assert math.isnan(peer_at_k(run, {"one_language": qrels["one_language"]}, doc_lang, k=10))
