"""Alignment/uniformity closed forms and plot output."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mimo_pipeline.analysis import (
    alignment,
    au_table,
    plot_alignment_uniformity,
    plot_per_language_bars,
    uniformity,
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
    assert set(table) == {"en", "de", "fr", "all"}
    assert "alignment" not in table["en"]
    assert table["de"]["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert table["fr"]["alignment"] == pytest.approx(4.0)
    # pooled pairs: (de, en) 0, (de, fr) 4, (en, fr) 4
    assert table["all"]["alignment"] == pytest.approx(8 / 3)
    assert table["de"]["uniformity"] == pytest.approx(uniformity(en))
    assert table["all"]["uniformity"] == pytest.approx(uniformity(np.concatenate([2 * en, en, -en])))
    with pytest.raises(ValueError):
        au_table({"de": en})
    with pytest.raises(ValueError):
        au_table({"en": en, "de": en[:3]})


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_plot_alignment_uniformity(tmp_path):
    out = plot_alignment_uniformity(
        {"mimo": (0.4, -3.2), "infonce": (0.7, -3.5), "base_student": (0.9, -2.1)},
        tmp_path / "plots" / "au.png",
    )
    assert out == tmp_path / "plots" / "au.png"
    _assert_png(out)


def test_plot_per_language_bars(tmp_path):
    out = plot_per_language_bars(
        {"mimo": {"en": 0.5, "de": 0.4}, "xlco": {"en": 0.45, "de": 0.41, "fr": 0.3}},
        "ndcg@10",
        tmp_path / "bars.png",
    )
    _assert_png(out)
