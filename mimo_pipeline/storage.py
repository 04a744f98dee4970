"""Results: append-only Parquet files under ``MIMO_HOME/results/<table>/``, DuckDB views over them.

Long format, one row per figure, so a query never needs to know which models or
metrics exist. The tables and their columns are `TABLES` (the single schema definition).

Every `ResultsDB.append` writes one new Parquet file ``results/<table>/<UTC time>-<uuid>.parquet``
(a temporary name, then a rename) with the table's full schema; nothing is ever rewritten.
So any number of writers (concurrent runs) and readers never wait for one another, and a
crash never leaves half a file. Rows are written after the artifact they describe is complete,
so a crash never records a result without its artifact.

``mimo.duckdb`` holds only views, one per table, over
``read_parquet('<abs>/results/<table>/*.parquet', union_by_name=true)`` with every column
of `TABLES`, typed (NULL where an older file lacks a column). A writer (re)creates them
when it first needs to (the first write to a MIMO_HOME, a new column, a moved MIMO_HOME),
the only time the database file is opened for writing (each folder then holds a zero-row
``_schema.parquet``, so a table's first rows need no new view); if another process holds it
(``duckdb data/mimo.duckdb`` opens it read-write), the writer retries briefly, then logs
who holds it and goes on: the rows are safe in Parquet and the views follow with the
next write. `ResultsDB.query` never opens the file: it defines the same views in an
in-memory DuckDB, so it works while anyone holds ``mimo.duckdb``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .fileio import atomic_path, file_lock, write_json, write_parquet

log = logging.getLogger(__name__)

#: Table name -> ordered (column, DuckDB type). ``created_at`` is filled in on insert.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "checkpoints": (
        ("model", "VARCHAR"), ("asset", "VARCHAR"), ("path", "VARCHAR"), ("teacher", "VARCHAR"),
        ("student_base", "VARCHAR"),
        # where each model's files came from ("hub", "catalog", "local") and their fingerprint (catalog.fingerprint)
        ("teacher_source", "VARCHAR"), ("teacher_fingerprint", "VARCHAR"), ("student_base_source", "VARCHAR"),
        ("student_base_fingerprint", "VARCHAR"), ("seed", "INTEGER"), ("dagster_run_id", "VARCHAR"),
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


#: How long a writer waits for another process to release ``mimo.duckdb`` before it goes on
#: without (re)creating the views (the rows are in Parquet already).
VIEW_LOCK_WAIT_S = 5.0
#: Written beside the Parquet folders once the views in ``mimo.duckdb`` match them.
VIEWS_STATE = ".views.json"
#: A zero-row file with the table's schema, so that a table's view reads Parquet from the start
#: and ``mimo.duckdb`` needs no change when the table's first rows arrive.
SCHEMA_FILE = "_schema.parquet"


class DatabaseBusyError(RuntimeError):
    """Another process holds ``mimo.duckdb`` (the message names it)."""


class ResultsDB:
    """Append-only results: Parquet files under ``<folder of path>/results/``, views in ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def results_dir(self) -> Path:
        return self.path.parent / "results"

    def table_dir(self, table: str) -> Path:
        _check_table(table)
        return self.results_dir / table

    # ------------------------------------------------------------------ writing

    def append(self, table: str, rows: Sequence[Mapping[str, object]]) -> int:
        """Write rows (dicts keyed by column; ``created_at`` defaults to now, UTC) as one new Parquet file."""
        _check_table(table)
        if not rows:
            return 0
        cols = [c for c, _ in TABLES[table]]
        unknown = set().union(*(r.keys() for r in rows)) - set(cols)
        if unknown:
            raise ValueError(f"table {table}: unknown columns {sorted(unknown)}; columns: {cols}")
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        data = _arrow_table(table, rows, now)
        name = f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}.parquet"
        dest = write_parquet(data, self.table_dir(table) / name)
        log.info("results: +%d rows into %s (%s)", len(rows), table, dest)
        self._ensure_views()
        return len(rows)

    def _ensure_views(self) -> bool:
        """Make the views in ``mimo.duckdb`` match the Parquet folders; False if another process holds the file."""
        state_path = self.results_dir / VIEWS_STATE
        if self.path.exists() and _read_json(state_path) == self._views_state():
            return True  # the usual case: the database file is not touched at all
        try:
            with self._file_connection(wait_s=VIEW_LOCK_WAIT_S) as con:
                state = self._create_views(con)
            write_json(state, state_path)
            return True
        except DatabaseBusyError as e:
            log.warning("%s; nothing is lost: the rows are saved under %s/, where ResultsDB.query and "
                        "read_parquet see them, and the views in %s (needed only on a MIMO_HOME's first write or "
                        "when a table gains columns) are made by the next write once the file is free",
                        e, self.results_dir, self.path.name)
            return False

    def _views_state(self) -> dict:
        return {"database": str(self.path.resolve()),
                "views": {t: _view_select(t, self.results_dir / t) for t in TABLES}}

    def _create_views(self, con) -> dict:
        """Move rows of old-style tables into Parquet, then (re)create every view; returns the state written."""
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                 "WHERE table_schema = 'main'").fetchall())
        for table in TABLES:
            folder = self.results_dir / table
            if kinds.get(table) == "BASE TABLE":
                _migrate_table(con, table, folder)
            if not any(folder.glob("*.parquet")):
                write_parquet(_arrow_schema(table).empty_table(), folder / SCHEMA_FILE)
        state = self._views_state()
        for table, select in state["views"].items():
            con.execute(f"CREATE OR REPLACE VIEW {table} AS {select}")
        log.info("results: views %s in %s over %s", ", ".join(TABLES), self.path, self.results_dir)
        return state

    @contextlib.contextmanager
    def _file_connection(self, *, wait_s: float) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
        """A read-write connection to ``mimo.duckdb``: our own processes queue on a file lock, a
        foreign holder (a user's DuckDB session) is waited for up to `wait_s`."""
        import duckdb

        with file_lock(self.path.with_name(self.path.name + ".lock")):
            deadline, delay = time.monotonic() + wait_s, 0.05
            while True:
                try:
                    con = duckdb.connect(str(self.path))
                    break
                except (duckdb.IOException, duckdb.ConnectionException) as e:
                    if time.monotonic() >= deadline:
                        raise DatabaseBusyError(_holder(self.path, e)) from e
                    time.sleep(delay)
                    delay = min(2 * delay, 0.5)
            try:
                yield con
            finally:
                con.close()

    # ------------------------------------------------------------------ reading

    @contextlib.contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
        """A DuckDB connection with one view per table.

        ``read_only=True``: an in-memory database defining the views over the Parquet files;
        it never opens ``mimo.duckdb``, so nobody holding that file can block it.
        Otherwise: ``mimo.duckdb`` itself, read-write, views up to date (waits briefly for a
        foreign holder, then raises `DatabaseBusyError` naming it).
        """
        if read_only:
            import duckdb

            con = duckdb.connect(":memory:")
            try:
                for table in TABLES:
                    con.execute(f"CREATE VIEW {table} AS {_view_select(table, self.results_dir / table)}")
                yield con
            finally:
                con.close()
            return
        with self._file_connection(wait_s=VIEW_LOCK_WAIT_S) as con:
            state = self._create_views(con)
            write_json(state, self.results_dir / VIEWS_STATE)
            yield con

    def query(self, sql: str, params: Sequence[object] = ()) -> "pandas.DataFrame":  # noqa: F821
        """Run a read query over the views and return a pandas DataFrame (never blocks, never blocked)."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, list(params)).df()


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables: {sorted(TABLES)}")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _view_select(table: str, folder: Path) -> str:
    """SELECT of a table's rows: every column of `TABLES`, typed; NULL where a file lacks a column;
    an empty typed select while the folder holds no file (read_parquet refuses an empty glob)."""
    cols = TABLES[table]
    empty = "SELECT " + ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in cols) + " WHERE false"
    if not any(folder.glob("*.parquet")):
        return empty
    glob = _sql_str(f"{folder.resolve()}/*.parquet")
    return ("SELECT " + ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in cols)
            + f" FROM ({empty} UNION ALL BY NAME SELECT * FROM read_parquet({glob}, union_by_name=true))")


_ARROW_SCHEMAS: dict[tuple, "pa.Schema"] = {}  # noqa: F821


def _arrow_schema(table: str):
    """The Arrow schema DuckDB gives the table's columns (so any DuckDB type in `TABLES` works)."""
    cols = TABLES[table]
    schema = _ARROW_SCHEMAS.get(cols)
    if schema is None:
        import duckdb

        with duckdb.connect(":memory:") as con:
            sql = "SELECT " + ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in cols) + " LIMIT 0"
            schema = _ARROW_SCHEMAS[cols] = con.sql(sql).to_arrow_table().schema
    return schema


def _arrow_table(table: str, rows: Sequence[Mapping[str, object]], now: dt.datetime):
    """Rows as an Arrow table with the table's full schema (absent columns NULL)."""
    import pyarrow as pa

    schema = _arrow_schema(table)
    arrays = []
    for field in schema:
        values = [r.get(field.name, now if field.name == "created_at" else None) for r in rows]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            # e.g. an int for a VARCHAR column: cast as DuckDB's INSERT would
            loose = [None if v is None else (str(v) if pa.types.is_string(field.type) else v) for v in values]
            arrays.append(pa.array(loose).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _migrate_table(con, table: str, folder: Path) -> None:
    """Move the rows of a table of an older ``mimo.duckdb`` (real tables) into a Parquet file, then drop it."""
    n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    if n:
        # a fixed name: a crash before DROP and a second migration write the same rows to the same file
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "00000000-migrated-from-mimo.duckdb.parquet") as tmp:
            con.execute(f"COPY {table} TO {_sql_str(str(tmp))} (FORMAT parquet)")
    con.execute(f"DROP TABLE {table}")
    log.info("results: moved %d rows of table %s from the database file into %s/", n, table, folder)


def _holder(path: Path, exc: Exception) -> str:
    """Who holds the database file, from DuckDB's lock error."""
    m = re.search(r"Conflicting lock is held in (.*?) \(PID (\d+)\)", str(exc))
    who = f"{m.group(1)} (PID {m.group(2)})" if m else "another process"
    return f"{path} is held by {who} ({str(exc).splitlines()[0]})"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
