"""Results in DuckDB (``MIMO_HOME/mimo.duckdb``): long-format, append-only tables.

One row per figure, so a query never needs to know which models or metrics exist:

- ``checkpoints(model, asset, path, teacher, student_base, dagster_run_id, mlflow_run_id, created_at)``
- ``eval_metrics(dagster_run_id, model, benchmark, task, query_lang, metric, value, created_at)``
- ``au_metrics(dagster_run_id, model, lang, metric, value, created_at)``
- ``bench_results(bench, metric, ours, peer, ratio, created_at)``

DuckDB lets one process write a file at a time, so every write takes an exclusive
file lock (``mimo.duckdb.lock``) and holds it only for one short transaction; two
pipeline runs against the same MIMO_HOME then queue instead of failing. Rows are
written after the artifact they describe is complete, so a crash never records a
result without its artifact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
from pathlib import Path
from typing import Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

#: Table name -> ordered (column, DuckDB type). ``created_at`` is filled in on insert.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "checkpoints": (
        ("model", "VARCHAR"), ("asset", "VARCHAR"), ("path", "VARCHAR"), ("teacher", "VARCHAR"),
        ("student_base", "VARCHAR"), ("seed", "INTEGER"), ("dagster_run_id", "VARCHAR"),
        ("mlflow_run_id", "VARCHAR"), ("created_at", "TIMESTAMP"),
    ),
    "eval_metrics": (
        ("dagster_run_id", "VARCHAR"), ("model", "VARCHAR"), ("seed", "INTEGER"), ("benchmark", "VARCHAR"),
        ("task", "VARCHAR"), ("query_lang", "VARCHAR"), ("metric", "VARCHAR"), ("value", "DOUBLE"),
        # 95% cluster-bootstrap interval over topics (stats.bootstrap_ci); NULL where not applicable
        ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"), ("n_topics", "INTEGER"), ("created_at", "TIMESTAMP"),
    ),
    "eval_compare": (  # paired comparison of model against reference = mimo (evaluation.compare_models)
        ("dagster_run_id", "VARCHAR"), ("model", "VARCHAR"), ("reference", "VARCHAR"), ("benchmark", "VARCHAR"),
        ("task", "VARCHAR"), ("query_lang", "VARCHAR"), ("metric", "VARCHAR"), ("seed", "INTEGER"),
        ("delta", "DOUBLE"), ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"), ("p_value", "DOUBLE"),
        ("p_holm", "DOUBLE"), ("n_topics", "INTEGER"), ("created_at", "TIMESTAMP"),
    ),
    "au_metrics": (
        ("dagster_run_id", "VARCHAR"), ("model", "VARCHAR"), ("lang", "VARCHAR"), ("metric", "VARCHAR"),
        ("value", "DOUBLE"), ("created_at", "TIMESTAMP"),
    ),
    "bench_results": (
        ("bench", "VARCHAR"), ("metric", "VARCHAR"), ("ours", "DOUBLE"), ("peer", "DOUBLE"),
        ("ratio", "DOUBLE"), ("created_at", "TIMESTAMP"),
    ),
}


class ResultsDB:
    """Append-only access to ``mimo.duckdb`` under an inter-process file lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
        import duckdb

        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH if read_only and self.path.exists() else fcntl.LOCK_EX)
            try:
                if read_only and self.path.exists():
                    con = duckdb.connect(str(self.path), read_only=True)
                else:
                    con = duckdb.connect(str(self.path))
                    _create_tables(con)
                try:
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, table: str, rows: Sequence[Mapping[str, object]]) -> int:
        """Insert rows (dicts keyed by column; ``created_at`` defaults to now) in one transaction."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables: {sorted(TABLES)}")
        if not rows:
            return 0
        cols = [c for c, _ in TABLES[table]]
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        unknown = set().union(*(r.keys() for r in rows)) - set(cols)
        if unknown:
            raise ValueError(f"table {table}: unknown columns {sorted(unknown)}; columns: {cols}")
        values = [tuple(r.get(c, now if c == "created_at" else None) for c in cols) for r in rows]
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            values)
            con.execute("COMMIT")
        log.info("duckdb %s: +%d rows into %s", self.path.name, len(rows), table)
        return len(rows)

    def query(self, sql: str, params: Sequence[object] = ()) -> "pandas.DataFrame":  # noqa: F821
        """Run a read query and return a pandas DataFrame."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, list(params)).df()


def _create_tables(con) -> None:
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(f'{c} {t}' for c, t in cols)})")
