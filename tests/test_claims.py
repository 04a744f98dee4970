"""The claims report: verdicts from hand-made figures with known answers, and from toy models."""

import numpy as np
import pytest

from mimo_pipeline.claims import ClaimsReport, claim_a, claim_b, claim_c, claim_d, claims_markdown, evaluate_claims
from mimo_pipeline.evaluation import AUModel
from mimo_pipeline.stats import TopicScores, holm


def fig(model, metric, value, seed=None, bench="mlir"):
    return {"model": model, "benchmark": bench, "task": "mlir", "query_lang": "all", "metric": metric,
            "value": value, "seed": seed}


def cmp(model, metric, delta, p_holm, seed=None, ci=(None, None), bench="mlir"):
    return {"model": model, "reference": "mimo", "benchmark": bench, "task": "mlir", "query_lang": "all",
            "metric": metric, "seed": seed, "delta": delta, "ci_low": ci[0], "ci_high": ci[1], "p_value": p_holm / 2,
            "p_holm": p_holm, "n_topics": 80}


def test_claim_a_is_decided_by_eval_compare():
    rows = [fig("mimo", "ndcg@10", 0.25), fig("infonce", "ndcg@10", 0.15), fig("xlco", "ndcg@10", 0.23),
            fig("lakda", "ndcg@10", 0.20)]
    compare = [cmp("infonce", "ndcg@10", -0.10, 0.001, ci=(-0.13, -0.07)), cmp("xlco", "ndcg@10", -0.02, 0.2),
               cmp("lakda", "ndcg@10", -0.05, 0.01), cmp("infonce", "ndcg@10", -0.5, 0.001, bench="dev-mlir")]
    claim = claim_a(rows, compare)
    assert [c.other for c in claim.comparisons] == ["infonce", "xlco", "lakda"]  # dev-mlir is not the test side
    infonce = claim.comparisons[0]
    # mimo − infonce = −delta; the interval flips with it
    assert (infonce.value, infonce.other_value, infonce.diff) == (0.25, 0.15, 0.10)
    assert (infonce.ci_low, infonce.ci_high, infonce.p_holm, infonce.holds) == (0.07, 0.13, 0.001, True)
    assert [c.holds for c in claim.comparisons] == [True, False, True]  # xlco: p_holm 0.2
    assert claim.verdict == "does not hold"
    compare[1] = cmp("xlco", "ndcg@10", -0.02, 0.04)
    assert claim_a(rows, compare).verdict == "holds"
    compare[1] = cmp("xlco", "ndcg@10", +0.02, 0.001)  # significant, but the wrong way
    assert claim_a(rows, compare).verdict == "does not hold"
    assert claim_a(rows[:1], []).verdict == "not tested"
    partial = claim_a(rows[:2], compare[:1])  # only infonce was trained: said so beside the verdict
    assert partial.missing == ("mimo vs xlco", "mimo vs lakda")
    assert "| 1/1 (not on this run: mimo vs xlco, mimo vs lakda) |" in claims_markdown(ClaimsReport((partial,)))


def test_claim_d_needs_higher_mrc_and_lower_own_language_share():
    rows = [fig(m, met, v) for m, met, v in (("mimo", "mrc@10", -30.0), ("xlco", "mrc@10", -35.0),
                                              ("mimo", "own_lang@10", 0.30), ("xlco", "own_lang@10", 0.45))]
    compare = [cmp("xlco", "mrc@10", -5.0, 0.01), cmp("xlco", "own_lang@10", +0.15, 0.01)]
    claim = claim_d(rows, compare)
    mrc, own = claim.comparisons
    assert (mrc.diff, mrc.better, mrc.holds) == (5.0, "higher", True)
    assert (own.diff, own.better, own.holds) == pytest.approx((-0.15, "lower", True))
    assert claim.verdict == "holds"
    # a higher own-language share for mimo is more bias: the claim fails
    assert claim_d(rows, [compare[0], cmp("xlco", "own_lang@10", -0.15, 0.01)]).verdict == "does not hold"
    # figures without a test (MRC@10 without per-group figures): shown, undecided
    undecided = claim_d(rows, [compare[1]])
    assert undecided.comparisons[0].p_value is None and undecided.verdict == "undecided"


def _au(name, seed, align, within, reps):
    n = len(align)
    return AUModel(name, seed, {"all": {"alignment": float(np.mean(align))}, "within": {"uniformity": within}},
                   TopicScores(tuple(f"v{i}" for i in range(n)), np.asarray(align, float), np.ones(n)),
                   {"within": np.asarray(reps, float), "cross": np.asarray(reps, float)})


def test_claims_b_and_c_from_alignment_per_verse_and_uniformity_replicates():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.5, 10)
    reps = rng.normal(0, 0.01, 1000)
    models = [_au("base_student", None, base, -1.0, -1.0 + reps),
              _au("stage1", 13, base - 0.05, -1.1, -1.1 + reps),  # better aligned on every verse
              _au("xlco", 13, base, -1.3, -1.3 + reps + rng.normal(0, 0.01, 1000)),
              _au("mimo_lambda_0", 13, base - 0.1, -1.2, -1.2 + reps),
              _au("mimo_lambda_1", 13, base - 0.1 + rng.normal(0, 0.01, 10), -1.21, -1.21 + reps + 0.2 * reps)]
    b = claim_b(models)
    assert [(c.system, c.other) for c in b.comparisons] == [("stage1", "base_student"),
                                                            ("mimo_lambda_0", "mimo_lambda_1")]
    s1 = b.comparisons[0]
    # 10 verses all one way: the exact sign-flip p-value (2^10 patterns, enumerated) is 2 / 2^10
    assert s1.diff == pytest.approx(-0.05) and s1.p_value == pytest.approx(2 / 1024)
    assert [c.p_holm for c in b.comparisons] == holm([c.p_value for c in b.comparisons])
    assert s1.holds and s1.seed == 13
    c = claim_c(models)
    assert [(x.system, x.other) for x in c.comparisons] == [("mimo_lambda_1", "mimo_lambda_0"),
                                                            ("xlco", "base_student")]
    lam, xlco = c.comparisons
    assert xlco.diff == pytest.approx(-0.3) and xlco.holds  # every replicate of the difference below 0
    assert xlco.p_value == pytest.approx(2 / 1001)
    # λ=1 vs λ=0: a difference of −0.01 against replicates spread ±0.002 around it: holds as well
    assert lam.diff == pytest.approx(-0.01) and lam.ci_high < 0 and lam.holds
    # no ablation trained: (b) rests on stage1 alone, (c) on xlco alone
    plain = [m for m in models if not m.name.startswith("mimo_lambda")]
    assert len(claim_b(plain).comparisons) == 1 and len(claim_c(plain).comparisons) == 1
    assert claim_b([]).verdict == "not tested"


def test_seeds_pair_up_and_the_table_gives_mean_and_sd():
    rows = [fig("mimo", "ndcg@10", 0.25, 1), fig("mimo", "ndcg@10", 0.27, 2),
            fig("xlco", "ndcg@10", 0.20, 1), fig("xlco", "ndcg@10", 0.26, 2)]
    compare = [cmp("xlco", "ndcg@10", -0.05, 0.01, seed=1), cmp("xlco", "ndcg@10", -0.01, 0.3, seed=2)]
    claim = claim_a(rows, compare)
    assert [(c.seed, c.value, c.other_value, c.holds) for c in claim.comparisons] == [
        (1, 0.25, 0.20, True), (2, 0.27, 0.26, False)]
    assert claim.verdict == "does not hold"  # a claim needs every seed
    text = claims_markdown(ClaimsReport((claim,)))
    assert "| (a) | mimo − xlco (seed 1) | MLIR nDCG@10 (higher = better) | 0.2500 vs 0.2000 | +0.0500 | 0.0050 | " \
           "0.0100 | yes |" in text
    assert f"| (a) | mimo − xlco, mean over 2 seeds | MLIR nDCG@10 (higher = better) |  | +0.0300 ± " \
           f"{np.std([0.05, 0.01], ddof=1):.4f} (sd) |  |  | 1/2 seeds |" in text
    assert "| **does not hold** | 1/2 (not on this run: mimo vs infonce, mimo vs lakda) |" in text


def test_claims_on_toy_models(tmp_path):
    """mimo language-blind, infonce with a strong language axis: on MLIR every one of infonce's top 10 is
    in the query's language and about a third of mimo's, on each of the 7 topics: the exact sign-flip
    p-value is 2/2^7 < 0.05, so the own-language part of (d) holds."""
    from mimo_pipeline.evaluation import alignment_uniformity, evaluate_models
    from tests.test_evaluation import AllBenches, TextCounter

    bench_set = AllBenches()
    models = {"mimo": TextCounter("mimo", "fp-m"), "infonce": TextCounter("infonce", "fp-i", bias=5.0),
              "base_student": TextCounter("base_student", "fp-b", bias=1.0),
              "stage1": TextCounter("stage1", "fp-s")}
    ev = evaluate_models(models, bench_set, tmp_path / "cache")
    au = alignment_uniformity(models, bench_set.load("mlir"), tmp_path / "cache", tmp_path / "plots", ev)
    report = evaluate_claims(ev.rows, ev.compare, au.models)
    own = next(c for c in report.claims[3].comparisons if c.measure.startswith("MLIR own-language"))
    assert own.other_value == pytest.approx(1.0) and own.diff < 0
    assert own.p_value == pytest.approx(2 / 2 ** 7) and own.holds
    # (b): stage1 (language-blind: translations coincide) is better aligned than base_student on every verse
    b = report.claims[1].comparisons[0]
    assert b.value == pytest.approx(0.0, abs=1e-9) and b.diff < 0 and b.holds
    assert report.verdicts()["c"] == "not tested"  # neither xlco nor the λ ablation here
    text = report.markdown()
    assert text.count("| (a) ") + text.count("| (b) ") >= 2 and "not tested" in text


def _trained(**models):
    """A `TrainedSet` of stand-ins: name -> {seed: (steps, batch size)}."""
    from types import SimpleNamespace

    from mimo_pipeline.stages import TrainedSet

    return TrainedSet({name: {seed: SimpleNamespace(steps=steps, config={"stage": {"train": {"batch_size": batch}}})
                              for seed, (steps, batch) in by_seed.items()} for name, by_seed in models.items()})


def test_training_rows_count_stage1_into_each_stage2_model_of_its_seed():
    from mimo_pipeline.claims import training_rows

    rows = training_rows(_trained(stage1={13: (24, 16), 14: (10, 16)}),
                         _trained(mimo={13: (12, 16), 14: (12, 16), 15: (12, 16)}, mimo_lambda_0={13: (12, 16)}),
                         _trained(infonce={13: (36, 16)}, xlco={13: (12, 8)}))
    assert rows == {("stage1", 13): 384, ("stage1", 14): 160, ("mimo", 13): 576, ("mimo", 14): 352,
                    ("mimo", 15): 192 + 384,  # a seed without its own Stage 1 starts from Stage 1's first
                    ("mimo_lambda_0", 13): 576, ("infonce", 13): 576, ("xlco", 13): 96}
    assert training_rows(None, None, None) == {}


def test_the_budget_note_says_whether_every_baseline_saw_mimos_rows():
    from mimo_pipeline.claims import budget_note

    matched = {("stage1", 13): 384, ("mimo", 13): 576, ("infonce", 13): 576, ("xlco", 13): 576, ("lakda", 13): 576}
    assert budget_note(matched).startswith("training budgets matched") and "576 rows" in budget_note(matched)
    short = {**matched, ("xlco", 13): 192, ("lakda", 13): 192}
    note = budget_note(short)
    assert note.startswith("training budgets NOT matched") and "infonce 576, xlco 192, lakda 192" in note
    assert "claims (a) and (d)" in note
    seeds = {("mimo", 13): 576, ("mimo", 14): 576, ("infonce", 13): 576, ("infonce", 14): 192}
    assert "infonce (seed 14) 192" in budget_note(seeds)
    assert budget_note({("mimo", 13): 576}) is None and budget_note({("infonce", 13): 576}) is None
    # a baseline seed without its own mimo is compared with mimo's first seed, and only that figure is named
    other = budget_note({("mimo", 13): 576, ("mimo", 14): 352, ("infonce", 15): 576})
    assert other.startswith("training budgets matched") and "saw 576 rows" in other
