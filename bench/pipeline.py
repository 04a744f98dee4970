"""`--pipeline`: the seconds per asset of a whole `full_mimo` run on the default profile.

    python -m bench.run --only pipeline          # = make bench BENCH_ARGS="--only pipeline"
    python -m bench.pipeline DAGSTER_HOME        # the figures of the latest run in an instance

Runs ``python -m mimo_pipeline.definitions full_mimo`` (what `make run` runs) in a child
process with an empty MIMO_HOME and its own DAGSTER_HOME, then reads each step's start
and end from the run's Dagster event log. One row per asset (``<asset>_s``) and one for
the whole job (``total_s``) go to ``bench_results`` with ``bench = 'pipeline'``; there is
no peer run side by side (a second default run would double the time), so ``peer`` and
``ratio`` are NaN: compare rows across dates with DuckDB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Row, log

REPO = Path(__file__).resolve().parents[1]


def step_seconds(dagster_home: str | Path, run_id: str | None = None) -> tuple[str, dict[str, float]]:
    """``(run_id, {step: seconds})`` of a run (the latest ``full_mimo`` run by default)."""
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    instance = DagsterInstance.from_config(str(dagster_home))
    if run_id is None:
        runs = instance.get_runs(RunsFilter(job_name="full_mimo"), limit=1)
        if not runs:
            raise SystemExit(f"no full_mimo run in {dagster_home}")
        run_id = runs[0].run_id
    starts, ends = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or record.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[record.step_key] = record.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[record.step_key] = record.timestamp
    return run_id, {k: round(ends[k] - starts[k], 1) for k in starts if k in ends}


def run_pipeline(profile: str = "default") -> tuple[list[Row], dict]:
    """A whole `full_mimo` run in a child process on an empty MIMO_HOME; per-asset seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        home, dagster_home = Path(tmp) / "home", Path(tmp) / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text("")
        env = {**os.environ, "MIMO_HOME": str(home), "MIMO_PROFILE": profile, "DAGSTER_HOME": str(dagster_home)}
        log(f"pipeline: full_mimo on the {profile} profile, empty MIMO_HOME (minutes)")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mimo_pipeline.definitions", "full_mimo"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"full_mimo failed: {proc.stderr[-3000:]}")
        run_id, seconds = step_seconds(dagster_home)
    rows = [Row("pipeline", f"{step}_s", s, float("nan"), "seconds of the step; no peer") for step, s in
            sorted(seconds.items(), key=lambda kv: -kv[1])]
    rows.append(Row("pipeline", "total_s", wall, float("nan"), f"{profile} profile, empty MIMO_HOME, child process"))
    return rows, {"run_id": run_id, "seconds": seconds, "wall_s": wall}


if __name__ == "__main__":
    rid, secs = step_seconds(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(f"run {rid}")
    for step, s in sorted(secs.items(), key=lambda kv: -kv[1]):
        print(f"| {step} | {s:.0f} |")
    print(f"| total of the steps | {sum(secs.values()):.0f} |")
