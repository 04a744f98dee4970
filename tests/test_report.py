"""make run's results table from DuckDB: intervals, the comparison against mimo, and older rows."""

import pytest

from mimo_pipeline.evaluation import TABLE_LEGEND, evaluate_models
from mimo_pipeline.report import results_table
from mimo_pipeline.storage import ResultsDB
from tests.test_evaluation import NoisyEmbedder, benches


class Set:
    names = ("mlir", "translation")

    def load(self, name):
        return benches()[name]


@pytest.fixture()
def result(tmp_path):
    models = {"mimo": NoisyEmbedder("mimo", 0.3), "xlco": NoisyEmbedder("xlco", 0.3, bias=3.0, seed=1)}
    return evaluate_models(models, Set(), tmp_path / "cache")


def test_results_table_shows_intervals_and_the_comparison_with_mimo(tmp_path, result):
    db = ResultsDB(tmp_path / "mimo.duckdb")
    db.append("eval_metrics", [{**r, "dagster_run_id": "r1"} for r in result.rows])
    db.append("eval_compare", [{**r, "dagster_run_id": "r1"} for r in result.compare])
    back = db.query("SELECT * FROM eval_compare WHERE dagster_run_id = 'r1'")
    assert len(back) == len(result.compare) > 0 and back.seed.isna().all() and back.p_holm.notna().all()
    ci = db.query("SELECT ci_low, ci_high, n_topics FROM eval_metrics WHERE query_lang = 'all' "
                  "AND metric = 'ndcg@10' AND benchmark = 'mlir'")
    assert (ci.n_topics == 7).all() and (ci.ci_low <= ci.ci_high).all()

    text = results_table(db, "r1")
    assert text.endswith(TABLE_LEGEND)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    mlir_ndcg = next(r for r in result.compare if (r["model"], r["benchmark"], r["metric"])
                     == ("xlco", "mlir", "ndcg@10"))
    cell = lines["xlco"].split("|")[2]
    assert "±" in cell and ("†" in cell) == (mlir_ndcg["p_holm"] < 0.05)
    assert "†" not in lines["mimo"]  # the reference is never marked


def test_results_table_reads_rows_of_older_runs(tmp_path):
    db = ResultsDB(tmp_path / "mimo.duckdb")
    db.append("eval_metrics", [{"dagster_run_id": "old", "model": m, "benchmark": "mlir", "task": "mlir",
                                "query_lang": "all", "metric": "ndcg@10", "value": v}
                               for m, v in (("mimo", 0.25), ("xlco", 0.2))])
    text = results_table(db, "old")
    table = text.split("\n\n")[0]
    assert table.splitlines()[2:] == ["| mimo | **0.2500** |", "| xlco | 0.2000 |"]  # plain values, no ± or †


def _trained(**models):
    """A `TrainedSet` of stand-ins: name -> {seed: (steps, batch size)}."""
    from types import SimpleNamespace

    from mimo_pipeline.stages import TrainedSet

    return TrainedSet({name: {seed: SimpleNamespace(steps=steps, config={"stage": {"train": {"batch_size": batch}}})
                              for seed, (steps, batch) in by_seed.items()} for name, by_seed in models.items()})


def test_training_rows_count_stage1_into_each_stage2_model_of_its_seed():
    from mimo_pipeline.report import training_rows

    rows = training_rows(_trained(stage1={13: (24, 16), 14: (10, 16)}),
                         _trained(mimo={13: (12, 16), 14: (12, 16), 15: (12, 16)}, mimo_lambda_0={13: (12, 16)}),
                         _trained(infonce={13: (36, 16)}, xlco={13: (12, 8)}))
    assert rows == {("stage1", 13): 384, ("stage1", 14): 160, ("mimo", 13): 576, ("mimo", 14): 352,
                    ("mimo", 15): 192 + 384,  # a seed without its own Stage 1 starts from Stage 1's first
                    ("mimo_lambda_0", 13): 576, ("infonce", 13): 576, ("xlco", 13): 96}
    assert training_rows(None, None, None) == {}


def test_the_budget_note_says_whether_every_baseline_saw_mimos_rows():
    from mimo_pipeline.report import budget_note

    matched = {("stage1", 13): 384, ("mimo", 13): 576, ("infonce", 13): 576, ("xlco", 13): 576, ("lakda", 13): 576}
    assert budget_note(matched).startswith("training budgets matched") and "576 rows" in budget_note(matched)
    short = {**matched, ("xlco", 13): 192, ("lakda", 13): 192}
    note = budget_note(short)
    assert note.startswith("training budgets NOT matched") and "infonce 576, xlco 192, lakda 192" in note
    assert "claims (a) and (d)" in note
    seeds = {("mimo", 13): 576, ("mimo", 14): 576, ("infonce", 13): 576, ("infonce", 14): 192}
    assert "infonce (seed 14) 192" in budget_note(seeds)
    assert budget_note({("mimo", 13): 576}) is None and budget_note({("infonce", 13): 576}) is None
