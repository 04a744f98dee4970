"""MLflow tracking: one parent run per Dagster run, one nested run per trained or evaluated model.

The store is ``sqlite:///MIMO_HOME/mlflow.db`` with artifacts under
``MIMO_HOME/mlartifacts`` (MLflow 3's ``./mlruns`` file store is deprecated). Runs are
named ``<model> · <teacher>`` so the MLflow UI compares them readably.

``mlflow.db`` is switched to SQLite's write-ahead log (WAL, a property of the file, set once
by the first client): readers such as ``mlflow ui`` then never block a run's writes, even
while they hold a read transaction open (in SQLite's default rollback-journal mode one
open read transaction makes every commit fail with "database is locked"). WAL needs a
local file system (not NFS) for MIMO_HOME's ``mlflow.db``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from .fileio import file_lock

log = logging.getLogger(__name__)

EXPERIMENT = "mimo"

#: Databases this process has already put into WAL mode.
_WAL: set[str] = set()
#: Stores whose tables this process has seen created.
_READY: set[str] = set()


def ensure_wal(db_path: str | Path, timeout_s: float = 10.0) -> bool:
    """Put an SQLite database into WAL mode (persistent in the file); False if it could not be done now.

    Switching needs a moment without other connections in a transaction; if a reader holds
    one on a database still in rollback mode, this waits up to `timeout_s`, then logs and
    goes on (writes still work once that reader lets go).
    """
    db_path = str(Path(db_path).resolve())
    if db_path in _WAL:
        return True
    try:
        con = sqlite3.connect(db_path, timeout=timeout_s)
        try:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as e:
        log.warning("could not switch %s to WAL mode (%s): a reader holding it open can delay MLflow writes",
                    db_path, e)
        return False
    if str(mode).lower() != "wal":
        log.warning("%s stays in %s journal mode (WAL unsupported here): a reader holding it open can delay "
                    "MLflow writes", db_path, mode)
        return False
    _WAL.add(db_path)
    return True


@dataclass(frozen=True)
class Tracker:
    """Where MLflow writes; every method opens the client it needs (picklable, no global state)."""

    home: str
    experiment: str = EXPERIMENT

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{Path(self.home).resolve() / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return (Path(self.home).resolve() / "mlartifacts").as_uri()

    def _client(self):
        from mlflow.tracking import MlflowClient

        home = Path(self.home)
        home.mkdir(parents=True, exist_ok=True)
        if self.tracking_uri not in _READY:
            # MLflow creates a new mlflow.db's tables by migration; two runs starting together on one
            # MIMO_HOME would both migrate it ("table ... already exists"). One creates, the other waits.
            with file_lock(home / ".mlflow.init.lock"):
                ensure_wal(home / "mlflow.db")
                MlflowClient(tracking_uri=self.tracking_uri).search_experiments(max_results=1)
            _READY.add(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        client = self._client()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except Exception:  # another process created it first
            return client.get_experiment_by_name(self.experiment).experiment_id

    def parent_run(self, dagster_run_id: str, tags: Mapping[str, str] | None = None) -> str:
        """The parent run of a Dagster run (created once, found by tag afterwards)."""
        client = self._client()
        exp_id = self.experiment_id()
        found = client.search_runs([exp_id], f"tags.dagster_run_id = '{dagster_run_id}' and tags.kind = 'parent'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(exp_id, run_name=f"dagster {dagster_run_id[:8]}",
                                tags={"dagster_run_id": dagster_run_id, "kind": "parent", **(tags or {})})
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    @contextlib.contextmanager
    def run(self, name: str, *, dagster_run_id: str, params: Mapping[str, object] | None = None,
            tags: Mapping[str, str] | None = None) -> Iterator["RunLogger"]:
        """A nested run under the Dagster run's parent; marked FAILED if the block raises."""
        client = self._client()
        parent = self.parent_run(dagster_run_id)
        run = client.create_run(self.experiment_id(), run_name=name, tags={
            "mlflow.parentRunId": parent, "dagster_run_id": dagster_run_id, "kind": "model", **(tags or {})})
        logger = RunLogger(client, run.info.run_id)
        if params:
            logger.log_params(params)
        try:
            yield logger
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")


class RunLogger:
    """Logs into one MLflow run through the client (no global active-run state)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), ts, step or 0) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)


def metric_key(name: str) -> str:
    """Our metric name as an MLflow key: MLflow refuses ``@``, so ``ndcg@10`` -> ``ndcg_at_10``."""
    return name.replace("@", "_at_")
