"""Alignment and uniformity of embeddings (Wang & Isola, ICML 2020) and their plots.

All vectors are L2-normalised first (``f(x) = x / ‖x‖``).

- ``alignment(x, y, alpha=2) = mean_i ‖f(x_i) − f(y_i)‖^alpha`` over positive pairs
  (row i of x with row i of y). In [0, 4] for alpha = 2; lower = better aligned.
- ``uniformity(x, t=2) = log mean_{i≠j} exp(−t ‖f(x_i) − f(x_j)‖²)`` over distinct
  pairs (i < j, the same mean as over ordered pairs). All pairs when there are at most
  `max_pairs` of them, otherwise `max_pairs` pairs drawn uniformly (with replacement)
  with a seeded generator. In [−4t, 0]; lower = more uniform. Computed in float64
  with log-sum-exp.

`au_table` gives, for one model, per language X: alignment between the pivot
(English) and X translations and the uniformity of X's own vectors; and under ``"all"``
the cross-lingual figures: alignment over every translation pair of two different
languages (all unordered language pairs, rows aligned) and uniformity of all languages'
vectors pooled.

Plots use matplotlib's Agg canvas (no pyplot, no display) and are written atomically.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .fileio import atomic_path


def _unit(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-d array [n, d], got shape {a.shape}")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def alignment(x, y, alpha: float = 2) -> float:
    """Mean ‖f(x_i) − f(y_i)‖^alpha over paired rows."""
    fx, fy = _unit(x), _unit(y)
    if fx.shape != fy.shape:
        raise ValueError(f"x {fx.shape} and y {fy.shape} must have equal shapes")
    if fx.shape[0] == 0:
        raise ValueError("alignment needs at least one pair")
    d = np.linalg.norm(fx - fy, axis=1)
    return float(np.mean(d**alpha))


def _logmeanexp(v: np.ndarray) -> float:
    m = float(np.max(v))
    return m + float(np.log(np.mean(np.exp(v - m))))


def uniformity(x, t: float = 2, max_pairs: int = 1_000_000, seed: int = 0) -> float:
    """log mean exp(−t‖f(x_i) − f(x_j)‖²) over distinct pairs (see module docstring)."""
    fx = _unit(x)
    n = fx.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two vectors")
    n_pairs = n * (n - 1) // 2
    if n_pairs <= max_pairs:
        # squared distance of unit vectors: 2 − 2 cos; blockwise to bound memory
        parts = []
        cols = np.arange(n)
        block = max(1, 4_000_000 // n)
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            g = fx[rows] @ fx.T  # [b, n]
            parts.append(np.maximum(2.0 - 2.0 * g[cols[None, :] > rows[:, None]], 0.0))
        vals = np.concatenate(parts)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs)
        j = rng.integers(0, n - 1, size=max_pairs)
        j = j + (j >= i)  # uniform over j != i
        vals = np.empty(max_pairs)
        chunk = 65_536  # a million pairs at once is gigabytes
        for start in range(0, max_pairs, chunk):
            part = slice(start, start + chunk)
            vals[part] = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", fx[i[part]], fx[j[part]]), 0.0)
    return _logmeanexp(-t * vals)


def au_table(
    vecs: Mapping[str, np.ndarray],
    *,
    pivot: str = "en",
    alpha: float = 2,
    t: float = 2,
    max_pairs: int = 1_000_000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Alignment/uniformity per language and cross-lingually for one model.

    `vecs[lang]` is ``[n, d]`` with row i the same text (verse) in every language.
    Returns ``{lang: {"alignment": a, "uniformity": u}, ..., "all": {...}}``; the pivot
    language has only ``"uniformity"`` (its alignment with itself is 0 by definition).
    ``"all"`` needs at least two languages.
    """
    if pivot not in vecs:
        raise ValueError(f"pivot language {pivot!r} not in {sorted(vecs)}")
    units = {lang: _unit(v) for lang, v in vecs.items()}
    shapes = {lang: v.shape for lang, v in units.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"rows must be aligned across languages, got shapes {shapes}")
    out: dict[str, dict[str, float]] = {}
    for lang in sorted(units):
        row = {"uniformity": uniformity(units[lang], t=t, max_pairs=max_pairs, seed=seed)}
        if lang != pivot:
            row["alignment"] = alignment(units[pivot], units[lang], alpha=alpha)
        out[lang] = row
    langs = sorted(units)
    if len(langs) >= 2:
        pairs = list(itertools.combinations(langs, 2))
        a = np.concatenate([units[p] for p, _ in pairs])
        b = np.concatenate([units[q] for _, q in pairs])
        pooled = np.concatenate([units[lang] for lang in langs])
        out["all"] = {
            "alignment": alignment(a, b, alpha=alpha),
            "uniformity": uniformity(pooled, t=t, max_pairs=max_pairs, seed=seed),
        }
    return out


# ---------------------------------------------------------------------------- plots


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_alignment_uniformity(
    points: Mapping[str, tuple[float, float]],
    path: str | os.PathLike,
    *,
    title: str = "Alignment vs uniformity (lower is better on both)",
) -> Path:
    """Scatter of models at (alignment, uniformity), each point labelled; returns `path`."""
    if not points:
        raise ValueError("no points to plot")
    fig = _new_figure((6, 5))
    ax = fig.add_subplot(1, 1, 1)
    for name, (a, u) in points.items():
        ax.scatter([a], [u], s=40)
        ax.annotate(str(name), (a, u), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xlabel("alignment  ‖f(x) − f(y)‖²  (lower = better)")
    ax.set_ylabel("uniformity  log E exp(−2‖f(x) − f(y)‖²)  (lower = better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save_png(fig, path)


def plot_per_language_bars(
    values: Mapping[str, Mapping[str, float]],
    metric_name: str,
    path: str | os.PathLike,
) -> Path:
    """Grouped bars: one group per language, one bar per model; returns `path`.

    Languages are the union over models in sorted order; a missing value is no bar.
    """
    if not values:
        raise ValueError("no values to plot")
    models = list(values)
    langs = sorted({lang for v in values.values() for lang in v})
    x = np.arange(len(langs), dtype=float)
    width = 0.8 / max(1, len(models))
    fig = _new_figure((max(6.0, 0.6 * len(langs) * max(1, len(models)) / 2 + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for m_i, model in enumerate(models):
        ys = [values[model].get(lang, np.nan) for lang in langs]
        ax.bar(x - 0.4 + width * (m_i + 0.5), ys, width=width, label=str(model))
    ax.set_xticks(x)
    ax.set_xticklabels(langs)
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} per language")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save_png(fig, path)


def loss_curve_plot(history: Sequence[dict], path: str | os.PathLike, title: str) -> Path | None:
    """The loss terms of a training run over its steps as a PNG (None when nothing was logged)."""
    if not history:
        return None
    fig = _new_figure((6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    steps = [h["step"] for h in history]
    for key in sorted({k for h in history for k in h} - {"step", "lr", "rows_per_s", "grad_norm"}):
        ax.plot(steps, [h.get(key, np.nan) for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_png(fig, path)
