"""DuckDB results store and MLflow tracker."""

import multiprocessing as mp

import pytest

from mimo_pipeline.storage import TABLES, ResultsDB
from mimo_pipeline.tracking import Tracker


def _writer(path, worker, n):
    db = ResultsDB(path)
    for i in range(n):
        db.append("eval_metrics", [{"dagster_run_id": f"run{worker}", "model": "mimo", "benchmark": "mlir",
                                    "task": "mlir", "query_lang": "all", "metric": "ndcg@10", "value": i}])


def test_tables_have_the_contract_columns(tmp_path):
    db = ResultsDB(tmp_path / "mimo.duckdb")
    db.append("checkpoints", [{"model": "stage1", "asset": "stage1_checkpoint", "path": "/x"}])
    for table, cols in TABLES.items():
        df = db.query(f"SELECT * FROM {table}")
        assert list(df.columns) == [c for c, _ in cols]
    df = db.query("SELECT model, created_at FROM checkpoints")
    assert df.model.tolist() == ["stage1"] and df.created_at.notna().all()


def test_unknown_table_or_column_is_refused(tmp_path):
    db = ResultsDB(tmp_path / "mimo.duckdb")
    with pytest.raises(ValueError, match="unknown table"):
        db.append("nope", [{"a": 1}])
    with pytest.raises(ValueError, match="unknown columns"):
        db.append("au_metrics", [{"model": "mimo", "bogus": 1}])


def test_two_processes_append_to_the_same_file(tmp_path):
    path = tmp_path / "mimo.duckdb"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = ResultsDB(path).query("SELECT dagster_run_id, count(*) AS n FROM eval_metrics GROUP BY 1 ORDER BY 1")
    assert df.n.tolist() == [15, 15]


def test_tracker_nests_model_runs_under_the_dagster_run(tmp_path):
    from mlflow.tracking import MlflowClient

    tracker = Tracker(str(tmp_path))
    with tracker.run("mimo · all-MiniLM-L6-v2", dagster_run_id="abc123", params={"lr": 2e-5}) as run:
        run.log_metrics({"loss": 1.5, "ndcg@10": 0.25}, step=3)
    client = MlflowClient(tracker.tracking_uri)
    child = client.get_run(run.run_id)
    parent_id = tracker.parent_run("abc123")
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.params["lr"] == "2e-05"
    assert child.data.metrics["ndcg_at_10"] == pytest.approx(0.25)
    assert child.info.status == "FINISHED"
    assert tracker.parent_run("abc123") == parent_id  # found again, not duplicated
