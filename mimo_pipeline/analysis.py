"""Alignment and uniformity of embeddings (Wang & Isola, ICML 2020) and their plots.

All vectors are L2-normalised first (``f(x) = x / ‖x‖``). Both figures: lower is better
(Wang & Isola: well-aligned positives, uniformly spread vectors).

- ``alignment(x, y, alpha=2) = mean_i ‖f(x_i) − f(y_i)‖^alpha`` over positive pairs
  (row i of x with row i of y). In [0, 4] for alpha = 2; lower = better aligned.
- ``uniformity(x, t=2) = log mean_{i≠j} exp(−t ‖f(x_i) − f(x_j)‖²)`` over distinct
  pairs (i < j, the same mean as over ordered pairs). All pairs when there are at most
  `max_pairs` of them (`MAX_PAIRS`, blockwise, never held in memory), otherwise
  min(`max_pairs`, `SAMPLED_PAIRS`) pairs drawn uniformly (with replacement) with a
  seeded generator. In [−4t, 0]; lower = more uniform. Computed in float64
  with log-sum-exp.

Here the positives are translations: ``vecs[lang]`` holds the same texts (verses) in every
language, row i = verse i. `au_table` gives, for one model (the keys are the ``lang`` of
DuckDB's ``au_metrics``):

- ``<lang>``: ``alignment`` of English with that language (the pivot has none) and the
  ``uniformity`` of that language's own vectors (within the language);
- ``all``: ``alignment`` over every translation pair of two different languages (all
  unordered language pairs, rows aligned) and the ``uniformity`` of all languages'
  vectors pooled. Pooled uniformity is also lower when a model pulls the languages apart
  (language clusters spread the pool): it rewards separating languages, which is the bias
  MLIR suffers from, so it is no evidence of a better multilingual space on its own;
- ``within``: ``uniformity``, the mean over languages of the within-language figures;
- ``cross``: ``uniformity`` over pairs of *different* verses in *different* languages
  (`cross_uniformity`). Lower = texts of two languages farther apart. Against ``within``:
  a language-blind space has cross ≈ within; cross well below within means the
  languages sit apart.

`alignment_by_row` gives alignment per verse (the topic scores of a paired test between two
models); `uniformity_replicates` gives the within and cross figures on bootstrap resamples
of the verses (the same resamples for every model: paired differences).

Plots use matplotlib's Agg canvas (no pyplot, no display) and are written atomically;
point labels are placed so that no two overlap (`annotate_without_overlap`).
"""

from __future__ import annotations

import itertools
import math
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


#: Up to this many pairs uniformity is exact (blockwise Gram matrices, memory O(block × n); on 2
#: cores exact is faster than sampling a million pairs up to some 20 million pairs);
#: beyond, `SAMPLED_PAIRS` pairs (at most `max_pairs`) are drawn at random.
MAX_PAIRS = 100_000_000
SAMPLED_PAIRS = 1_000_000


def _log_mean_kernel(a: np.ndarray, b: np.ndarray, t: float, *, skip_diagonal: bool) -> float:
    """log mean over (i, j) of exp(−t‖a_i − b_j‖²) for unit rows (i ≠ j when ``skip_diagonal``),
    blockwise with a running log-sum-exp: no pair list is ever held in memory."""
    n, m = a.shape[0], b.shape[0]
    block = max(1, 4_000_000 // max(m, 1))
    top, total, count = -np.inf, 0.0, 0
    for start in range(0, n, block):
        stop = min(n, start + block)
        v = -t * np.maximum(2.0 - 2.0 * (a[start:stop] @ b.T), 0.0)  # squared distance of unit vectors: 2 − 2 cos
        if skip_diagonal:
            rows = np.arange(start, stop)
            v[rows - start, rows] = -np.inf
            count += v.size - (stop - start)
        else:
            count += v.size
        peak = float(np.max(v))
        if peak > top:
            total *= math.exp(top - peak) if np.isfinite(top) else 0.0
            top = peak
        total += float(np.sum(np.exp(v - top)))
    return top + math.log(total / count)


def uniformity(x, t: float = 2, max_pairs: int = MAX_PAIRS, seed: int = 0) -> float:
    """log mean exp(−t‖f(x_i) − f(x_j)‖²) over distinct pairs (see module docstring)."""
    fx = _unit(x)
    n = fx.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two vectors")
    n_pairs = n * (n - 1) // 2
    if n_pairs <= max_pairs:  # the mean over ordered pairs i ≠ j is the mean over unordered ones
        return _log_mean_kernel(fx, fx, t, skip_diagonal=True)
    else:
        rng = np.random.default_rng(seed)
        k = min(max_pairs, SAMPLED_PAIRS)
        i = rng.integers(0, n, size=k)
        j = rng.integers(0, n - 1, size=k)
        j = j + (j >= i)  # uniform over j != i
        vals = np.empty(k)
        chunk = 65_536  # a million pairs at once is gigabytes
        for start in range(0, k, chunk):
            part = slice(start, start + chunk)
            vals[part] = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", fx[i[part]], fx[j[part]]), 0.0)
    return _logmeanexp(-t * vals)


def au_table(
    vecs: Mapping[str, np.ndarray],
    *,
    pivot: str = "en",
    alpha: float = 2,
    t: float = 2,
    max_pairs: int = MAX_PAIRS,
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
        out["within"] = {"uniformity": float(np.mean([out[lang]["uniformity"] for lang in langs]))}
        out["cross"] = {"uniformity": cross_uniformity(units, t=t, max_pairs=max_pairs, seed=seed)}
    return out


def _aligned_units(vecs: Mapping[str, np.ndarray], least: int = 2) -> dict[str, np.ndarray]:
    units = {lang: _unit(v) for lang, v in sorted(vecs.items())}
    shapes = {lang: v.shape for lang, v in units.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"rows must be aligned across languages, got shapes {shapes}")
    if len(units) < least:
        raise ValueError(f"needs at least {least} languages, got {sorted(units)}")
    return units


def cross_uniformity(vecs: Mapping[str, np.ndarray], t: float = 2, max_pairs: int = MAX_PAIRS,
                     seed: int = 0) -> float:
    """log mean exp(−t‖f(x) − f(y)‖²) over x = verse i in language a, y = verse j ≠ i in language b ≠ a.

    Uniform over unordered language pairs {a, b} and ordered verse pairs (i, j), i ≠ j
    (rows aligned: row i is the same verse in every language). Exact when there are at
    most `max_pairs` such pairs, otherwise min(`max_pairs`, `SAMPLED_PAIRS`) drawn uniformly
    with a seeded generator.
    """
    units = _aligned_units(vecs)
    langs = list(units)
    n = next(iter(units.values())).shape[0]
    if n < 2:
        raise ValueError("cross-language uniformity needs at least two verses")
    lang_pairs = list(itertools.combinations(range(len(langs)), 2))
    if len(lang_pairs) * n * (n - 1) <= max_pairs:  # every language pair has n(n − 1) verse pairs: equal weights
        logs = [_log_mean_kernel(units[langs[a]], units[langs[b]], t, skip_diagonal=True) for a, b in lang_pairs]
        return _logmeanexp(np.array(logs))
    else:
        rng = np.random.default_rng(seed)
        k = min(max_pairs, SAMPLED_PAIRS)
        stacked = np.stack([units[lang] for lang in langs])  # [L, n, d]
        pair = rng.integers(0, len(lang_pairs), size=k)
        la = np.array([a for a, _ in lang_pairs])[pair]
        lb = np.array([b for _, b in lang_pairs])[pair]
        i = rng.integers(0, n, size=k)
        j = rng.integers(0, n - 1, size=k)
        j = j + (j >= i)
        vals = np.empty(k)
        chunk = 65_536
        for start in range(0, k, chunk):
            part = slice(start, start + chunk)
            dots = np.einsum("ij,ij->i", stacked[la[part], i[part]], stacked[lb[part], j[part]])
            vals[part] = np.maximum(2.0 - 2.0 * dots, 0.0)
    return _logmeanexp(-t * vals)


def alignment_by_row(vecs: Mapping[str, np.ndarray], alpha: float = 2) -> np.ndarray:
    """Per row (verse) i: mean over unordered language pairs {a, b} of ‖f(x_a,i) − f(x_b,i)‖^alpha.

    Its mean over rows is `au_table`'s ``all`` alignment (every verse has every language).
    """
    units = _aligned_units(vecs)
    langs = list(units)
    per_pair = [np.linalg.norm(units[a] - units[b], axis=1) ** alpha for a, b in itertools.combinations(langs, 2)]
    return np.mean(per_pair, axis=0)


def resample_counts(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` multiplicities of a seeded bootstrap over ``n`` rows (each row sums to ``n``).

    The same ``(n, n_resamples, seed)`` gives the same resamples, so replicates of two
    models computed from them are paired.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n), idx.ravel()), 1.0)
    return counts


def _pair_means(kernel: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample: the mean of ``kernel[i, j]`` over drawn pairs of distinct original rows i ≠ j.

    With multiplicities c: ``(cᵀKc − Σ c_i² K_ii) / ((Σc)² − Σ c_i²)``; a pair of two draws
    of the same row (the same text twice) is left out, as i = j is in the full sample.
    """
    num = np.sum((counts @ kernel) * counts, axis=1) - (counts ** 2) @ np.diag(kernel)
    den = counts.sum(axis=1) ** 2 - (counts ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def uniformity_replicates(vecs: Mapping[str, np.ndarray], counts: np.ndarray, t: float = 2) -> dict[str, np.ndarray]:
    """``{"within": [B], "cross": [B]}``: `au_table`'s ``within`` and ``cross`` uniformity on
    each resample of the verses (``counts`` ``[B, n]`` from `resample_counts`).

    A row of ``counts`` all ones is the full sample and gives exactly the figures of `au_table`
    (computed exactly, not sampled). A resample that draws a single distinct verse has no
    pair and gives NaN.
    """
    units = _aligned_units(vecs)
    langs = list(units)
    counts = np.asarray(counts, dtype=np.float64)
    n = next(iter(units.values())).shape[0]
    if counts.ndim != 2 or counts.shape[1] != n:
        raise ValueError(f"counts must be [n_resamples, {n}], got {counts.shape}")
    within = []
    cross_kernel = np.zeros((n, n))
    for lang in langs:
        x = units[lang]
        within.append(np.log(_pair_means(np.exp(-t * np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)), counts)))
    for a, b in itertools.combinations(langs, 2):
        cross_kernel += np.exp(-t * np.maximum(2.0 - 2.0 * (units[a] @ units[b].T), 0.0))
    n_pairs = len(langs) * (len(langs) - 1) // 2
    return {"within": np.mean(within, axis=0), "cross": np.log(_pair_means(cross_kernel / n_pairs, counts))}


# ---------------------------------------------------------------------------- plots


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike, *, layout: bool = True) -> Path:
    path = Path(path)
    if layout:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


#: Label offsets tried around a point, in typographic points: 8 directions on growing rings.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))
_RINGS = (5, 12, 22, 34, 48, 64)


def text_box(text, renderer):
    """The display-space box of a text or annotation's text alone (an annotation's own
    window extent also covers its leader line)."""
    from matplotlib.text import Text

    if hasattr(text, "update_positions"):
        text.update_positions(renderer)
    return Text.get_window_extent(text, renderer)


def annotate_without_overlap(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *,
                             fontsize: float = 9) -> list:
    """Label each point (xs[i], ys[i]) with labels[i] so that no two labels overlap, and no label
    covers another point: each label takes the first free place among 8 directions on growing
    rings around its point (a leader line from the second ring on), inside the axes. Call it
    once the axes' limits and the figure's layout are final (the placement is measured in
    display space). Returns the text artists; a label that finds no free place takes the
    place where it overlaps the fewest labels and points.
    """
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before measuring in display space
    renderer = fig.canvas.get_renderer()
    pts = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys)]
    r_px = 3.5 * fig.dpi / 72.0  # a point marker's half-size
    frame = ax.get_window_extent(renderer)
    placed: list = []  # boxes of the labels placed so far
    texts = []

    def clashes(box, own: int) -> int:
        n = 0 if (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1) else 1
        n += sum(box.overlaps(other) for other in placed)
        return n + sum(k != own and box.x0 - r_px <= px <= box.x1 + r_px and box.y0 - r_px <= py <= box.y1 + r_px
                       for k, (px, py) in enumerate(pts))

    def make(label, x, y, ring, dx, dy):
        norm = math.hypot(dx, dy)
        return ax.annotate(
            str(label), (x, y), textcoords="offset points", xytext=(ring * dx / norm, ring * dy / norm),
            fontsize=fontsize, ha={1: "left", -1: "right", 0: "center"}[dx],
            va={1: "bottom", -1: "top", 0: "center"}[dy],
            arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=3) if ring >= 12 else None)

    for i, (label, x, y) in enumerate(zip(labels, xs, ys)):
        best = None  # (clashes, ring, dx, dy)
        for ring in _RINGS:
            for dx, dy in _DIRECTIONS:
                text = make(label, x, y, ring, dx, dy)
                n = clashes(text_box(text, renderer).padded(1.0), i)
                text.remove()
                if best is None or n < best[0]:
                    best = (n, ring, dx, dy)
                if n == 0:
                    break
            if best[0] == 0:
                break
        text = make(label, x, y, *best[1:])
        placed.append(text_box(text, renderer).padded(1.0))
        texts.append(text)
    return texts


#: What each uniformity panel shows and which way is better, in words (Wang & Isola 2020: lower is
#: better for both alignment and uniformity; pooled and cross-language uniformity need a caveat).
UNIFORMITY_VIEWS = {
    "within": ("within-language uniformity (mean over languages)",
               "lower = more uniform within each language:\nbetter"),
    "cross": ("cross-language uniformity (different verses, different languages)",
              "lower = languages farther apart;\nbelow 'within' = languages pulled apart (bias), not better"),
    "all": ("pooled uniformity (all languages together)",
            "lower = more uniform, but separating\nthe languages also lowers it (rewards bias)"),
}
ALIGNMENT_LABEL = "alignment E‖f(x) − f(y)‖², translations across languages\n(lower = better aligned)"


def plot_alignment_uniformity(
    points: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    views: Sequence[str] = ("within", "cross", "all"),
    title: str = "Alignment vs uniformity (Wang & Isola 2020)",
) -> Path:
    """One panel per uniformity view (`UNIFORMITY_VIEWS`): models at (alignment, uniformity).

    ``points[model]`` holds ``alignment`` (the ``all`` alignment: every cross-language
    translation pair) and the views' uniformities (``within``, ``cross``, ``all``); a model
    missing a view is left out of that panel. Each panel states its direction in words;
    labels never overlap. Returns `path`.
    """
    if not points:
        raise ValueError("no points to plot")
    from matplotlib import colormaps

    color = {m: colormaps["tab20"](i % 20) for i, m in enumerate(points)}  # one colour per model in every panel
    fig = _new_figure((5.2 * len(views), 5.2))
    panels = []
    for v_i, view in enumerate(views):
        ax = fig.add_subplot(1, len(views), v_i + 1)
        names = [m for m, p in points.items() if view in p and "alignment" in p]
        xs = [points[m]["alignment"] for m in names]
        ys = [points[m][view] for m in names]
        for m, x, y in zip(names, xs, ys):
            ax.scatter([x], [y], s=36, color=color[m])
        _label_au_axes(ax, view)
        panels.append((ax, xs, ys, names))
    fig.suptitle(title + ": lower alignment is better; see each panel for uniformity", fontsize=10)
    fig.tight_layout()
    for ax, xs, ys, names in panels:
        annotate_without_overlap(ax, xs, ys, names, fontsize=8)
    return _save_png(fig, path, layout=False)


def _label_au_axes(ax, view: str) -> None:
    """Axis labels, direction title, grid and margins of one alignment–uniformity panel."""
    what, direction = UNIFORMITY_VIEWS[view]
    ax.set_xlabel(ALIGNMENT_LABEL, fontsize=8)
    ax.set_ylabel(f"{what}\nlog E exp(−2‖f(x) − f(y)‖²)", fontsize=8)
    ax.set_title(direction, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.margins(0.25)


def plot_lambda_ablation(
    points: Mapping[float, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    names: Mapping[float, str] | None = None,
    views: Sequence[str] = ("within", "cross"),
) -> Path:
    """The λ ablation in the alignment–uniformity plane: one point per λ (``points[λ]`` as in
    `plot_alignment_uniformity`), joined in order of λ and labelled ``λ=<λ>`` (plus
    ``names[λ]`` where given, e.g. mimo for 0.2); one panel per view. Needs two λ or more."""
    if len(points) < 2:
        raise ValueError("the λ ablation plot needs at least two values of λ")
    names = names or {}
    lams = sorted(points)
    fig = _new_figure((5.2 * len(views), 5.2))
    panels = []
    for v_i, view in enumerate(views):
        ax = fig.add_subplot(1, len(views), v_i + 1)
        kept = [lam for lam in lams if view in points[lam] and "alignment" in points[lam]]
        xs = [points[lam]["alignment"] for lam in kept]
        ys = [points[lam][view] for lam in kept]
        ax.plot(xs, ys, "-", color="0.6", lw=1, zorder=1)
        ax.scatter(xs, ys, c=kept, cmap="viridis", vmin=0.0, vmax=1.0, s=48, zorder=2)
        _label_au_axes(ax, view)
        labels = [f"λ={lam:g}" + (f" ({names[lam]})" if lam in names else "") for lam in kept]
        panels.append((ax, xs, ys, labels))
    fig.suptitle("λ ablation: Stage 2 from one Stage-1 checkpoint, L = λ·L_XLCO + (1 − λ)·L_distill\n"
                 "(λ = 0: distillation only; λ = 1: cross-lingual InfoNCE only)", fontsize=10)
    fig.tight_layout()
    for ax, xs, ys, labels in panels:
        annotate_without_overlap(ax, xs, ys, labels, fontsize=8)
    return _save_png(fig, path, layout=False)


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
