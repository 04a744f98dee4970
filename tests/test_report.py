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
