"""Topic statistics against closed forms and known results."""

import itertools
import math

import numpy as np
import pytest

from mimo_pipeline.stats import TopicScores, bootstrap_ci, bootstrap_difference, holm, paired_test, topic_scores


def scores(values, sizes=None, prefix="t"):
    values = np.asarray(values, dtype=float)
    sizes = np.ones_like(values) if sizes is None else np.asarray(sizes, dtype=float)
    return TopicScores(tuple(f"{prefix}{i}" for i in range(len(values))), values, sizes)


def test_topic_scores_average_the_language_versions_of_a_query():
    per_query = {"v1:en": 1.0, "v1:de": 0.0, "v2:en": 0.5, "v2:de": 0.5, "lonely": 0.25}
    topic_of = {"v1:en": "v1", "v1:de": "v1", "v2:en": "v2", "v2:de": "v2"}
    ts = topic_scores(per_query, topic_of)
    assert ts.topics == ("query:lonely", "v1", "v2")  # a query without a group is its own topic
    assert ts.values.tolist() == [0.25, 0.5, 0.5] and ts.sizes.tolist() == [1, 2, 2]
    assert ts.mean() == pytest.approx(np.mean(list(per_query.values())))  # the query-level mean
    with pytest.raises(ValueError, match="non-finite"):
        topic_scores({"q": float("nan")}, {})


def test_constant_scores_give_a_zero_width_interval():
    ci = bootstrap_ci(scores([0.4] * 30))
    assert (ci.estimate, ci.low, ci.high, ci.n_topics) == (pytest.approx(0.4), 0.4, 0.4, 30)


def test_interval_of_a_big_normal_sample_is_the_normal_one():
    # Closed form: mean +- 1.96 sd / sqrt(n); the bootstrap must land within a few % of the width.
    x = np.random.default_rng(1).normal(0.3, 0.2, size=2000)
    ci = bootstrap_ci(x, seed=5)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_is_seeded_and_needs_two_topics():
    x = np.random.default_rng(2).uniform(size=40)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    one = bootstrap_ci([0.7])
    assert (one.estimate, one.low, one.high, one.n_topics) == (0.7, None, None, 1)
    with pytest.raises(ValueError, match="at least 1000"):
        bootstrap_ci(x, n_resamples=999)


def test_unequal_topic_sizes_weight_the_topics_by_their_queries():
    # Resampling whole topics: a topic of 3 queries counts 3 times in the mean over queries.
    ts = scores([1.0, 0.0], sizes=[3, 1])
    ci = bootstrap_ci(ts)
    assert ci.estimate == pytest.approx(0.75)
    # Every resample holds 2 topics: {0,0} -> 0, {1,1} -> 1, {0,1} -> 0.75; the interval spans them.
    assert 0.0 <= ci.low <= 0.75 <= ci.high <= 1.0


def test_sign_flip_p_value_matches_exact_enumeration():
    rng = np.random.default_rng(0)
    ref = rng.uniform(size=8)
    diff = np.array([0.3, 0.1, -0.05, 0.2, 0.15, -0.1, 0.25, 0.05])
    res = paired_test(scores(ref + diff), scores(ref), seed=0)
    observed = diff.mean()
    flips = [np.mean(np.array(s) * diff) for s in itertools.product((1, -1), repeat=len(diff))]
    exact = np.mean([abs(f) >= abs(observed) - 1e-12 for f in flips])
    assert res.p_value == pytest.approx(exact) and res.n_topics == 8
    assert res.delta == pytest.approx(observed)
    assert res.ci_low < observed < res.ci_high


def test_sign_flip_of_three_topics_by_hand():
    # differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach |mean| >= 2: p = 2/8.
    res = paired_test(scores([1.0, 2.0, 3.0]), scores([0.0, 0.0, 0.0]))
    assert res.p_value == pytest.approx(0.25) and res.delta == pytest.approx(2.0)


def test_identical_systems_have_p_one_and_zero_delta():
    ts = scores([0.1, 0.5, 0.9])
    res = paired_test(ts, ts)
    assert (res.delta, res.ci_low, res.ci_high, res.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_a_clear_difference_on_many_topics_is_significant():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.2, 0.6, size=100)
    res = paired_test(scores(ref + 0.05 + rng.normal(0, 0.02, size=100)), scores(ref), seed=1)
    assert res.p_value < 0.001 and 0.04 < res.ci_low < res.delta < res.ci_high < 0.06


def test_paired_test_uses_the_common_topics_only():
    model = TopicScores(("a", "b", "c"), np.array([1.0, 0.5, 0.2]), np.ones(3))
    ref = TopicScores(("b", "c", "d"), np.array([0.25, 0.2, 0.9]), np.ones(3))
    res = paired_test(model, ref)
    assert res.n_topics == 2 and res.delta == pytest.approx((0.25 + 0.0) / 2)
    none = paired_test(model, TopicScores(("z",), np.array([0.0]), np.ones(1)))
    assert none.n_topics == 0 and none.p_value is None


def test_holm_on_the_textbook_example():
    # Holm (1979) as worked on Wikipedia's "Holm–Bonferroni method" page: four hypotheses,
    # p = 0.01, 0.04, 0.03, 0.005; at alpha 0.05 H1 and H4 are rejected. Adjusted, by hand:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04).
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [a < 0.05 for a in adj] == [True, False, False, True]


def test_holm_caps_at_one_keeps_missing_and_checks_range():
    assert holm([0.5, None, 0.6, float("nan")]) == [pytest.approx(1.0), None, pytest.approx(1.0), None]
    assert holm([]) == []
    assert holm([0.02]) == [0.02]
    with pytest.raises(ValueError, match="outside"):
        holm([1.5])



def test_bootstrap_difference_known_answers():
    # 999 replicates 1..999 (/1000): percentile interval = numpy quantiles; none at or below 0
    reps = np.arange(1, 1000) / 1000
    res = bootstrap_difference(0.5, reps)
    assert (res.delta, res.n_topics) == (0.5, 999)
    # linear interpolation: position 0.025 * 998 = 24.95 -> (25 + 0.95) / 1000; 0.975 * 998 = 973.05 -> 974.05 / 1000
    assert res.ci_low == pytest.approx(0.02595) and res.ci_high == pytest.approx(0.97405)
    assert res.p_value == pytest.approx(2 * 1 / 1000)  # (0 + 1) / (B + 1), two-sided
    # symmetric around 0: 500 of 1001 on either side (plus one exactly 0, counted on both): p = 1
    sym = np.r_[-np.arange(1, 501), 0.0, np.arange(1, 501)]
    assert bootstrap_difference(0.0, sym).p_value == 1.0
    # 49 of 999 at or below 0: p = 2 * 50 / 1000 = 0.1
    mixed = np.r_[-np.ones(49), np.ones(950)]
    assert bootstrap_difference(0.9, mixed).p_value == pytest.approx(0.1)
    # NaN replicates are dropped; none left: no interval, no p-value
    assert bootstrap_difference(1.0, [np.nan, 1.0, 2.0]).n_topics == 2
    empty = bootstrap_difference(1.0, [np.nan])
    assert (empty.ci_low, empty.p_value, empty.n_topics) == (None, None, 0)
