"""Statistics over topics: cluster-bootstrap intervals, paired tests against a reference, Holm.

A benchmark's queries are not independent: the language versions of one query verse
share their relevant documents. The unit of resampling is therefore the *topic*, the
query verse (all queries sharing a ``group`` in the benchmark; a query without a group
is its own topic). A topic's score is the mean of its queries' values; its weight is
its number of queries.

- `topic_scores`: per-query values -> `TopicScores` (topic ids, topic means, sizes).
- `bootstrap_ci`: 95% cluster-bootstrap interval of the query-level mean, resampling
  whole topics (``scipy.stats.bootstrap``, BCa, seeded). The statistic of a resample is
  ``sum(size * score) / sum(size)``, the mean over the resample's queries; when every
  topic has the same number of queries (the Bible benchmarks: one query per language)
  this is the plain mean of the topic scores, and on the full sample it equals the
  figure in ``eval_metrics.value``.
- `paired_test`: model minus reference on the topics both have: the difference of the
  weighted means (``delta``), its paired cluster-bootstrap interval, and a two-sided
  paired randomisation (sign-flip) p-value: under the null hypothesis that the two
  systems are exchangeable on each topic, each topic's difference is as likely to have
  either sign (``scipy.stats.permutation_test(permutation_type='samples')``, which
  enumerates all 2^n sign patterns exactly when that is no more than ``n_resamples``).
- `holm`: Holm's step-down adjustment of a family of p-values.
- `bootstrap_difference`: the interval and p-value of a difference from its paired bootstrap
  replicates, for statistics that are no mean of per-topic values (uniformity: the log of a
  mean over pairs of verses), where the sign-flip test does not apply.

Everything is seeded: the same inputs and seed give the same interval and p-value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: Resamples of the bootstrap and of the randomisation test (>= 1000).
N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class TopicScores:
    """Per-topic scores of one model on one benchmark and metric."""

    topics: tuple[str, ...]
    values: np.ndarray  # [n_topics] mean of the topic's per-query values
    sizes: np.ndarray  # [n_topics] number of queries of the topic

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float64)
        sizes = np.asarray(self.sizes, dtype=np.float64)
        if not (len(self.topics) == values.shape[0] == sizes.shape[0]) or values.ndim != 1:
            raise ValueError("topics, values and sizes must be 1-d and of the same length")
        if len(set(self.topics)) != len(self.topics):
            raise ValueError("topic ids must be unique")
        if np.any(sizes <= 0):
            raise ValueError("every topic needs at least one query")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "sizes", sizes)

    @property
    def n_topics(self) -> int:
        return len(self.topics)

    def mean(self) -> float:
        """The mean over queries (topic scores weighted by their sizes)."""
        return float(np.sum(self.values * self.sizes) / np.sum(self.sizes)) if self.n_topics else float("nan")


def topic_scores(per_query: Mapping[str, float], topic_of: Mapping[str, str | None]) -> TopicScores:
    """Group per-query values into topics (``topic_of[qid]``; None or absent = the query's own topic).

    Non-finite values are an error: a query either has a value or is left out.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for qid, value in per_query.items():
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"query {qid!r}: non-finite value {value}")
        topic = topic_of.get(qid)
        topic = f"query:{qid}" if topic is None else str(topic)
        sums[topic] = sums.get(topic, 0.0) + value
        counts[topic] = counts.get(topic, 0) + 1
    topics = tuple(sorted(sums))
    return TopicScores(topics, np.array([sums[t] / counts[t] for t in topics]),
                       np.array([counts[t] for t in topics], dtype=np.float64))


def _weighted_mean(a: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(a * w, axis=axis) / np.sum(w, axis=axis)


def _bootstrap(values: np.ndarray, weights: np.ndarray, *, confidence: float, n_resamples: int,
               seed: int) -> tuple[float, float]:
    """BCa cluster-bootstrap interval of the weighted mean; (v, v) when every value is v."""
    from scipy.stats import bootstrap

    if np.ptp(values) == 0.0:  # every resample has the same mean: a zero-width interval
        v = float(values[0])
        return v, v
    data = (values * weights, weights)  # topic sums and sizes, resampled together (paired)

    def ratio(sums, sizes, axis=-1):
        return np.sum(sums, axis=axis) / np.sum(sizes, axis=axis)

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's DegenerateDataWarning: the percentile fallback follows
            res = bootstrap(data, ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                            confidence_level=confidence, method=method, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    raise ArithmeticError("bootstrap interval is not finite")  # pragma: no cover (percentile always is)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None  # None where undefined (fewer than two topics)
    high: float | None
    n_topics: int


def bootstrap_ci(scores: TopicScores | Sequence[float], *, weights: Sequence[float] | None = None,
                 confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """Cluster-bootstrap interval of the mean over topics (see the module docstring).

    ``scores`` is a `TopicScores` or plain topic scores (then ``weights``, default all 1,
    are the topics' sizes). Fewer than two topics: no interval (``low = high = None``).
    """
    if isinstance(scores, TopicScores):
        values, w = scores.values, scores.sizes
    else:
        values = np.asarray(scores, dtype=np.float64)
        w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    _check(values, w, n_resamples, confidence)
    if values.size == 0:
        return Interval(float("nan"), None, None, 0)
    estimate = float(_weighted_mean(values, w))
    if values.size < 2:
        return Interval(estimate, None, None, int(values.size))
    low, high = _bootstrap(values, w, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return Interval(estimate, low, high, int(values.size))


@dataclass(frozen=True)
class PairedResult:
    delta: float  # model minus reference, mean over the common topics' queries
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # two-sided sign-flip p-value; None with no common topic
    n_topics: int


def paired_test(model: TopicScores, reference: TopicScores, *, confidence: float = CONFIDENCE,
                n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedResult:
    """Model minus reference on the topics both have (see the module docstring).

    Topics are matched by id; each is weighted by the reference's number of queries
    (the same as the model's on one benchmark). ``delta`` is the difference of the
    weighted means; the interval is the paired cluster bootstrap of it; ``p_value`` is
    the two-sided paired randomisation test (exact for up to log2(n_resamples) topics).
    """
    from scipy.stats import permutation_test

    _check(np.zeros(0), np.zeros(0), n_resamples, confidence)
    ref_pos = {t: i for i, t in enumerate(reference.topics)}
    common = [(i, ref_pos[t]) for i, t in enumerate(model.topics) if t in ref_pos]
    if not common:
        return PairedResult(float("nan"), None, None, None, 0)
    mi, ri = (np.array(ix) for ix in zip(*common))
    x, y, w = model.values[mi], reference.values[ri], reference.sizes[ri]
    d = x - y
    delta = float(_weighted_mean(d, w))
    n = len(common)
    if n < 2:
        return PairedResult(delta, None, None, None, n)
    low, high = _bootstrap(d, w, confidence=confidence, n_resamples=n_resamples, seed=seed)
    if np.all(d == 0.0):
        return PairedResult(delta, low, high, 1.0, n)
    total = float(np.sum(w))

    def statistic(a, b, axis=-1):  # a, b: weighted topic sums of the two systems (swapped per topic)
        return (np.sum(a, axis=axis) - np.sum(b, axis=axis)) / total

    res = permutation_test((x * w, y * w), statistic, permutation_type="samples", vectorized=True,
                           n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return PairedResult(delta, low, high, float(min(1.0, res.pvalue)), n)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order; None/NaN stay None.

    With the m defined p-values sorted ascending, p_(1) <= ... <= p_(m):
    ``adj_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j))``. Rejecting where
    ``adj < alpha`` controls the family-wise error rate at alpha.
    """
    defined = [(float(p), i) for i, p in enumerate(p_values) if p is not None and math.isfinite(float(p))]
    for p, _ in defined:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value {p} is outside [0, 1]")
    out: list[float | None] = [None] * len(p_values)
    m = len(defined)
    running = 0.0
    for j, (p, i) in enumerate(sorted(defined)):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def bootstrap_difference(estimate: float, replicates: Sequence[float], *,
                         confidence: float = CONFIDENCE) -> PairedResult:
    """A difference and its paired-bootstrap replicates -> interval and two-sided p-value.

    ``replicates`` are the difference recomputed on B resamples that both systems share
    (NaN replicates, resamples where the statistic is undefined, are dropped). The
    interval is the percentile interval (the ``(1 − confidence)/2`` and ``(1 + confidence)/2``
    quantiles, numpy's linear interpolation). The p-value inverts it: twice the smaller share
    of replicates on either side of 0, with the usual +1 correction,
    ``min(1, 2 · (min(#{d* ≤ 0}, #{d* ≥ 0}) + 1) / (B + 1))``: the smallest two-sided
    level at which the percentile interval would exclude 0, never 0 itself.
    ``n_topics`` is B (the replicates used).
    """
    d = np.asarray(replicates, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if d.size == 0:
        return PairedResult(float(estimate), None, None, None, 0)
    low, high = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    tail = min(int(np.sum(d <= 0.0)), int(np.sum(d >= 0.0)))
    p = min(1.0, 2.0 * (tail + 1) / (d.size + 1))
    return PairedResult(float(estimate), float(low), float(high), p, int(d.size))


def _check(values: np.ndarray, weights: np.ndarray, n_resamples: int, confidence: float) -> None:
    if values.shape != weights.shape or values.ndim != 1:
        raise ValueError("scores and weights must be 1-d and of the same length")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores must be finite")
    if np.any(weights <= 0):
        raise ValueError("weights must be positive")
    if n_resamples < 1000:
        raise ValueError(f"n_resamples must be at least 1000, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
