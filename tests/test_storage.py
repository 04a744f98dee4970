"""Results (Parquet files + DuckDB views) and the MLflow tracker."""

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
    db = ResultsDB(path)
    df = db.query("SELECT dagster_run_id, count(*) AS n FROM eval_metrics GROUP BY 1 ORDER BY 1")
    assert df.n.tolist() == [15, 15]
    assert len(_files(db, "eval_metrics")) == 30  # one file per append, none overwritten


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


# --------------------------------------------------------------------------- the lakehouse shape

_ROW = {"dagster_run_id": "r1", "model": "mimo", "benchmark": "mlir", "task": "mlir", "query_lang": "all",
        "metric": "ndcg@10", "value": 0.5}


def _files(db, table):
    return sorted(p.name for p in db.table_dir(table).glob("*.parquet") if p.name != "_schema.parquet")


def test_each_append_is_one_new_parquet_file_with_the_full_typed_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    db = ResultsDB(tmp_path / "mimo.duckdb")
    db.append("eval_metrics", [_ROW])
    db.append("eval_metrics", [{**_ROW, "value": 1}, {**_ROW, "model": "xlco", "value": None}])
    names = _files(db, "eval_metrics")
    assert len(names) == 2 and all(n.endswith(".parquet") and "Z-" in n for n in names)
    assert not [p for p in db.results_dir.rglob("*") if p.name.endswith(".tmp")]
    t = pq.read_table(db.table_dir("eval_metrics") / names[1])
    assert t.column_names == [c for c, _ in TABLES["eval_metrics"]]
    assert t.schema.field("value").type == pa.float64() and t.schema.field("model").type == pa.string()
    assert pa.types.is_timestamp(t.schema.field("created_at").type)
    df = db.query("SELECT model, value FROM eval_metrics ORDER BY created_at, model")
    assert df.model.tolist() == ["mimo", "mimo", "xlco"] and df.value.tolist()[:2] == [0.5, 1.0]


def test_views_in_the_database_file_read_the_parquet_files(tmp_path):
    import duckdb

    db = ResultsDB(tmp_path / "mimo.duckdb")
    db.append("checkpoints", [{"model": "stage1", "asset": "stage1_checkpoint", "path": "/x"}])
    db.append("eval_metrics", [_ROW])  # a table's first rows after the views exist: no new view needed
    with duckdb.connect(str(db.path), read_only=True) as con:
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
        assert {t: kinds.get(t) for t in TABLES} == {t: "VIEW" for t in TABLES}
        assert con.execute("SELECT model FROM checkpoints").fetchall() == [("stage1",)]
        assert con.execute("SELECT count(*) FROM eval_metrics").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM au_metrics").fetchone() == (0,)
    # the files can be queried directly, without the database file
    with duckdb.connect() as con:
        n = con.execute(f"SELECT count(*) FROM read_parquet('{db.results_dir}/eval_metrics/*.parquet', "
                        "union_by_name=true)").fetchone()
    assert n == (1,)


_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])  # read-write, as the duckdb CLI opens a file by default
con.execute("CREATE TABLE IF NOT EXISTS mine AS SELECT 1 AS x")
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("views_exist", [False, True])
def test_a_user_holding_the_database_read_write_blocks_no_write_and_no_read(tmp_path, monkeypatch, caplog,
                                                                           views_exist):
    import subprocess
    import sys

    import duckdb

    from mimo_pipeline import storage

    monkeypatch.setattr(storage, "VIEW_LOCK_WAIT_S", 0.5)
    db = ResultsDB(tmp_path / "mimo.duckdb")
    if views_exist:
        db.append("eval_metrics", [_ROW])
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(duckdb.IOException, match="lock"):  # the file really is held
            duckdb.connect(str(db.path)).close()
        caplog.set_level("INFO", logger="mimo_pipeline.storage")
        for i in range(3):
            assert db.append("eval_metrics", [{**_ROW, "dagster_run_id": f"w{i}"}]) == 1
        assert db.append("au_metrics", [{"model": "mimo", "lang": "de", "metric": "alignment", "value": 0.1}]) == 1
        df = db.query("SELECT dagster_run_id FROM eval_metrics WHERE dagster_run_id LIKE 'w%' ORDER BY 1")
        assert df.dagster_run_id.tolist() == ["w0", "w1", "w2"]
        assert len(db.query("SELECT * FROM au_metrics")) == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if views_exist:
            assert warnings == []  # views up to date: the database file is not even opened
        else:
            assert warnings and f"PID {holder.pid}" in warnings[0] and "nothing is lost" in warnings[0]
    finally:
        holder.stdin.close()
        holder.wait(30)
    db.append("eval_metrics", [{**_ROW, "dagster_run_id": "after"}])  # the views follow once it is free
    with duckdb.connect(str(db.path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM eval_metrics").fetchone()[0] == 4 + views_exist
        assert con.execute("SELECT x FROM mine").fetchall() == [(1,)]  # the user's own table is kept


def test_old_files_with_fewer_columns_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    db = ResultsDB(tmp_path / "mimo.duckdb")
    folder = db.table_dir("eval_metrics")
    folder.mkdir(parents=True)
    # an older writer: no created_at, value as an integer
    pq.write_table(pa.table({"dagster_run_id": ["old"], "model": ["mimo"], "benchmark": ["mlir"], "task": ["mlir"],
                             "query_lang": ["all"], "metric": ["ndcg@10"], "value": pa.array([1], pa.int64())}),
                   folder / "20200101T000000000000Z-old.parquet")
    df = db.query("SELECT dagster_run_id, value, created_at IS NULL AS no_time FROM eval_metrics")
    assert df.to_dict("records") == [{"dagster_run_id": "old", "value": 1.0, "no_time": True}]
    db.append("eval_metrics", [{**_ROW, "dagster_run_id": "new"}])
    df = db.query("SELECT * FROM eval_metrics ORDER BY dagster_run_id")
    assert list(df.columns) == [c for c, _ in TABLES["eval_metrics"]]
    assert df.dagster_run_id.tolist() == ["new", "old"] and df.value.tolist() == [0.5, 1.0]
    assert df.created_at.isna().tolist() == [False, True]


def test_an_old_database_with_real_tables_moves_its_rows_into_parquet(tmp_path):
    import duckdb

    path = tmp_path / "mimo.duckdb"
    with duckdb.connect(str(path)) as con:  # the layout before the Parquet files
        con.execute("CREATE TABLE au_metrics (dagster_run_id VARCHAR, model VARCHAR, lang VARCHAR, metric VARCHAR, "
                    "value DOUBLE, created_at TIMESTAMP)")
        con.execute("INSERT INTO au_metrics VALUES ('r0', 'mimo', 'de', 'alignment', 0.3, now()::TIMESTAMP)")
    db = ResultsDB(path)
    db.append("au_metrics", [{"dagster_run_id": "r1", "model": "mimo", "lang": "de", "metric": "alignment",
                              "value": 0.2}])
    assert db.query("SELECT dagster_run_id FROM au_metrics ORDER BY 1").dagster_run_id.tolist() == ["r0", "r1"]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM au_metrics").fetchone() == (2,)
