"""Alignment/uniformity closed forms and plot output."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mimo_pipeline.analysis import (
    _new_figure,
    alignment,
    alignment_by_row,
    annotate_without_overlap,
    au_table,
    cross_uniformity,
    plot_alignment_uniformity,
    plot_lambda_ablation,
    plot_per_language_bars,
    resample_counts,
    text_box,
    uniformity,
    uniformity_replicates,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_alignment_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4))
    assert alignment(x, 3.0 * x) == pytest.approx(0.0, abs=1e-12)  # scale-invariant
    assert alignment(x, -x) == pytest.approx(4.0)
    assert alignment(x, -x, alpha=1) == pytest.approx(2.0)
    e = np.eye(3)
    assert alignment(e, np.roll(e, 1, axis=0)) == pytest.approx(2.0)  # orthogonal pairs
    with pytest.raises(ValueError):
        alignment(x, x[:3])


def test_uniformity_closed_forms():
    assert uniformity(np.eye(2)) == pytest.approx(-4.0)  # ‖x−y‖² = 2: log exp(−4)
    assert uniformity(np.eye(4)) == pytest.approx(-4.0)
    assert uniformity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)
    assert uniformity(np.eye(2), t=1) == pytest.approx(-2.0)
    # pairs: (0,1) d²=0, (0,2) 4, (1,2) 4
    pts = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(pts) == pytest.approx(math.log((1 + 2 * math.exp(-8)) / 3))
    with pytest.raises(ValueError):
        uniformity(np.eye(2)[:1])


def test_uniformity_exact_over_several_blocks_and_without_underflow():
    # 3000 vectors, half on one axis and half on another: the blockwise sum spans 3 blocks of rows
    n = 1500
    x = np.concatenate([np.tile([1.0, 0.0], (n, 1)), np.tile([0.0, 1.0], (n, 1))])
    same, across = 2 * n * (n - 1), 2 * n * n  # ordered pairs i != j at distance 0 and at distance sqrt(2)
    assert uniformity(x) == pytest.approx(math.log((same + across * math.exp(-4)) / (same + across)))
    # a large t: exp(-1000) underflows to 0 in float64, the running log-sum-exp does not
    assert uniformity(np.eye(2), t=500) == pytest.approx(-1000.0)
    assert cross_uniformity({"en": np.eye(2), "de": np.eye(2)}, t=500) == pytest.approx(-1000.0)


def test_uniformity_sampled_close_to_exact_and_seeded():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8))
    exact = uniformity(x)
    sampled = uniformity(x, max_pairs=20_000, seed=5)
    assert sampled == uniformity(x, max_pairs=20_000, seed=5)
    assert sampled == pytest.approx(exact, abs=0.05)
    # more pairs than one chunk of the sampled path (65,536): chunks join up to the same answer
    y = rng.standard_normal((1000, 8))
    assert uniformity(y, max_pairs=200_000, seed=5) == pytest.approx(uniformity(y), abs=0.01)


def test_au_table():
    rng = np.random.default_rng(2)
    en = rng.standard_normal((6, 5))
    vecs = {"en": en, "de": 2 * en, "fr": -en}
    table = au_table(vecs)
    assert set(table) == {"en", "de", "fr", "all", "within", "cross"}
    assert "alignment" not in table["en"]
    assert table["de"]["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert table["fr"]["alignment"] == pytest.approx(4.0)
    # pooled pairs: (de, en) 0, (de, fr) 4, (en, fr) 4
    assert table["all"]["alignment"] == pytest.approx(8 / 3)
    assert table["de"]["uniformity"] == pytest.approx(uniformity(en))
    assert table["all"]["uniformity"] == pytest.approx(uniformity(np.concatenate([2 * en, en, -en])))
    # within: mean of the three languages' own uniformity (de and en have the same vectors; fr's are mirrored)
    assert table["within"] == pytest.approx({"uniformity": uniformity(en)})
    assert table["cross"] == pytest.approx({"uniformity": cross_uniformity(vecs)})
    with pytest.raises(ValueError):
        au_table({"de": en})
    with pytest.raises(ValueError):
        au_table({"en": en, "de": en[:3]})


def _cross_brute(vecs, t=2):
    langs = sorted(vecs)
    u = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vecs.items()}
    vals = [math.exp(-t * np.sum((u[a][i] - u[b][j]) ** 2))
            for x, a in enumerate(langs) for b in langs[x + 1:]
            for i in range(len(u[a])) for j in range(len(u[b])) if i != j]
    return math.log(np.mean(vals))


def test_cross_uniformity_closed_forms():
    # every German verse on one axis, every English verse on another: within each language all
    # vectors coincide (uniformity log 1 = 0), across languages ‖x − y‖² = 2 (log exp(−4) = −4)
    n = 5
    vecs = {"en": np.tile([1.0, 0.0], (n, 1)), "de": np.tile([0.0, 1.0], (n, 1))}
    table = au_table(vecs)
    assert table["within"]["uniformity"] == pytest.approx(0.0)
    assert table["cross"]["uniformity"] == pytest.approx(-4.0)
    assert table["all"]["alignment"] == pytest.approx(2.0)  # translations orthogonal
    # the same verse in two languages is left out: translations that coincide do not count
    e = np.eye(3)
    assert cross_uniformity({"en": e, "de": e}) == pytest.approx(-4.0)  # only i != j: orthogonal pairs
    rng = np.random.default_rng(7)
    vecs = {lang: rng.standard_normal((6, 4)) for lang in ("en", "de", "fr")}
    assert cross_uniformity(vecs) == pytest.approx(_cross_brute(vecs))
    assert cross_uniformity(vecs, t=1) == pytest.approx(_cross_brute(vecs, t=1))
    big = {lang: rng.standard_normal((200, 8)) for lang in ("en", "de", "fr")}
    sampled = cross_uniformity(big, max_pairs=50_000, seed=3)
    assert sampled == cross_uniformity(big, max_pairs=50_000, seed=3)
    assert sampled == pytest.approx(cross_uniformity(big), abs=0.05)
    with pytest.raises(ValueError):
        cross_uniformity({"en": e})
    with pytest.raises(ValueError):
        cross_uniformity({"en": e, "de": e[:2]})


def test_alignment_by_row():
    rng = np.random.default_rng(8)
    en = rng.standard_normal((4, 3))
    vecs = {"en": en, "de": 3 * en, "fr": -en}
    # per verse: pairs (de, en) 0, (de, fr) 4, (en, fr) 4 -> 8/3 for every verse
    assert alignment_by_row(vecs) == pytest.approx(np.full(4, 8 / 3))
    vecs["de"] = np.roll(en, 1, axis=0)
    assert np.mean(alignment_by_row(vecs)) == pytest.approx(au_table(vecs)["all"]["alignment"])


def _replicate_brute(vecs, c, t=2):
    """Resample of the verses by multiplicities c, pairs of two draws of the same verse left out."""
    u = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vecs.items()}
    draws = [i for i, k in enumerate(c) for _ in range(int(k))]
    pairs = [(p, q) for p in range(len(draws)) for q in range(len(draws)) if draws[p] != draws[q]]
    langs = sorted(u)

    def k(a, b, p, q):
        return math.exp(-t * np.sum((u[a][draws[p]] - u[b][draws[q]]) ** 2))

    within = np.mean([math.log(np.mean([k(a, a, p, q) for p, q in pairs])) for a in langs])
    cross = math.log(np.mean([k(a, b, p, q) for x, a in enumerate(langs) for b in langs[x + 1:] for p, q in pairs]))
    return within, cross


def test_uniformity_replicates_are_the_figures_on_resampled_verses():
    rng = np.random.default_rng(9)
    vecs = {lang: rng.standard_normal((5, 4)) for lang in ("en", "de", "fr")}
    counts = np.array([[1, 1, 1, 1, 1], [2, 0, 1, 0, 2], [0, 3, 0, 1, 1], [5, 0, 0, 0, 0]], dtype=float)
    reps = uniformity_replicates(vecs, counts)
    table = au_table(vecs)
    # the full sample is the exact figure
    assert reps["within"][0] == pytest.approx(table["within"]["uniformity"])
    assert reps["cross"][0] == pytest.approx(table["cross"]["uniformity"])
    for r in (1, 2):
        within, cross = _replicate_brute(vecs, counts[r])
        assert reps["within"][r] == pytest.approx(within) and reps["cross"][r] == pytest.approx(cross)
    assert math.isnan(reps["within"][3]) and math.isnan(reps["cross"][3])  # one distinct verse: no pair
    with pytest.raises(ValueError):
        uniformity_replicates(vecs, counts[:, :3])


def test_resample_counts_are_seeded_bootstrap_multiplicities():
    c = resample_counts(7, 50, seed=1)
    assert c.shape == (50, 7) and np.all(c.sum(axis=1) == 7) and np.all(c >= 0)
    assert np.array_equal(c, resample_counts(7, 50, seed=1)) and not np.array_equal(c, resample_counts(7, 50, seed=2))


def _boxes_overlap(texts):
    renderer = texts[0].figure.canvas.get_renderer()
    boxes = [text_box(t, renderer) for t in texts]
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def test_labels_never_overlap_even_for_coincident_points():
    fig = _new_figure((5, 4))
    ax = fig.add_subplot(1, 1, 1)
    xs = [0.5, 0.5001, 0.5002, 0.5, 0.9, 0.1]
    ys = [-1.0, -1.0, -1.0001, -0.9999, -2.0, -0.5]
    ax.scatter(xs, ys)
    ax.margins(0.25)
    fig.tight_layout()
    labels = ["mimo_lambda_0", "mimo", "mimo_lambda_0.5", "mimo_lambda_1", "xlco", "base_student"]
    texts = annotate_without_overlap(ax, xs, ys, labels)
    assert [t.get_text() for t in texts] == labels
    assert _boxes_overlap(texts) == []
    # the naive placement (same offset for every label) does overlap: the test can fail
    naive = [ax.annotate(lab, (x, y), textcoords="offset points", xytext=(5, 4)) for lab, x, y in zip(labels, xs, ys)]
    assert _boxes_overlap(naive)


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_plot_alignment_uniformity(tmp_path):
    out = plot_alignment_uniformity(
        {"mimo": {"alignment": 0.4, "within": -3.2, "cross": -3.0, "all": -3.3},
         "infonce": {"alignment": 0.7, "within": -3.5, "cross": -3.9, "all": -3.6},
         "base_student": {"alignment": 0.9, "within": -2.1}},  # no cross/pooled figure: left out of those panels
        tmp_path / "plots" / "au.png",
    )
    assert out == tmp_path / "plots" / "au.png"
    _assert_png(out)


def test_plot_lambda_ablation(tmp_path):
    points = {lam: {"alignment": 0.3 + 0.001 * lam, "within": -2.0 - 0.001 * lam, "cross": -1.9}
              for lam in (0.0, 0.2, 0.5, 1.0)}
    out = plot_lambda_ablation(points, tmp_path / "lambda.png", names={0.2: "mimo"})
    _assert_png(out)
    with pytest.raises(ValueError):
        plot_lambda_ablation({0.2: points[0.2]}, tmp_path / "one.png")


def test_plot_per_language_bars(tmp_path):
    out = plot_per_language_bars(
        {"mimo": {"en": 0.5, "de": 0.4}, "xlco": {"en": 0.45, "de": 0.41, "fr": 0.3}},
        "ndcg@10",
        tmp_path / "bars.png",
    )
    _assert_png(out)
