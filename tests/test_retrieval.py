"""faiss search against numpy brute force; approximate indexes against exact."""

from __future__ import annotations

import numpy as np
import pytest

from mimo_pipeline.retrieval import default_nlist, l2_normalize, merge_runs, run_from_search, search


def _brute_force(q, d, k):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    sims = qn @ dn.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def _clustered(rng, n, centers, noise=0.6):
    return (centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, centers.shape[1]))).astype(
        np.float32
    )


def test_flat_equals_brute_force():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((20, 16))
    d = rng.standard_normal((300, 16)) * rng.uniform(0.5, 3.0, size=(300, 1))  # unnormalised
    scores, ids = search(q, d, 10)
    ref_s, ref_i = _brute_force(q, d, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (20, 10)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_k_beyond_pool_is_padded():
    rng = np.random.default_rng(1)
    scores, ids = search(rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), 8)
    assert ids.shape == (3, 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(scores[:, :5], axis=1) <= 0)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_flat(kind):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((16, 32))
    docs, queries = _clustered(rng, 2000, centers), _clustered(rng, 100, centers)
    _, exact = search(queries, docs, 10)
    _, approx = search(queries, docs, 10, index=kind)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall > 0.9


def test_ivf_probing_every_list_is_exact():
    rng = np.random.default_rng(3)
    docs, queries = rng.standard_normal((400, 8)), rng.standard_normal((10, 8))
    _, exact = search(queries, docs, 5)
    _, ivf = search(queries, docs, 5, index="ivf", nlist=20, nprobe=20)
    np.testing.assert_array_equal(exact, ivf)
    assert default_nlist(400) == 80 and default_nlist(1) == 1


def test_bad_arguments():
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError):
        search(x, x, 1, index="pq")
    with pytest.raises(ValueError):
        search(x, x, 0)
    with pytest.raises(ValueError):
        search(x, np.ones((2, 4)), 1)
    with pytest.raises(ValueError):
        search(x, x, 1, index="ivf", nlist=5)


def test_threads_follow_omp_num_threads(monkeypatch):
    import faiss

    before = faiss.omp_get_max_threads()  # one OpenMP runtime: torch's thread count too
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        search(np.ones((1, 2)), np.ones((2, 2)), 1)
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(before)


def test_run_from_search():
    scores = np.array([[0.9, 0.5, -np.inf], [0.7, -np.inf, -np.inf]], dtype=np.float32)
    ids = np.array([[2, 0, -1], [1, -1, -1]])
    run = run_from_search(["qa", "qb"], ["d0", "d1", "d2"], scores, ids)
    assert run == {"qa": {"d2": pytest.approx(0.9), "d0": pytest.approx(0.5)}, "qb": {"d1": pytest.approx(0.7)}}
    with pytest.raises(ValueError):
        run_from_search(["qa", "qa"], ["d0", "d1", "d2"], scores, ids)
    with pytest.raises(ValueError):
        run_from_search(["qa"], ["d0", "d1", "d2"], scores, ids)
    assert merge_runs({"a": {"x": 1.0}}, {"b": {}}) == {"a": {"x": 1.0}, "b": {}}
    with pytest.raises(ValueError):
        merge_runs({"a": {}}, {"a": {}})


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
