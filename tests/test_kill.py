"""Crash anywhere: SIGKILL a smoke run of full_mimo at three seeded points, re-running it each time.

The points: during the teacher cache (`teacher_embeddings`), during training
(`stage1_checkpoint`) and during evaluation (`mlir_eval`), each a seeded delay after the
step's STEP_START line in the CLI log. The kills are chained so that each one lands on
work not done yet: the run killed in the teacher cache is re-run and that re-run is
killed in Stage 1's training, its re-run is killed in the evaluation, and the last
re-run must succeed; afterwards every checkpoint row in DuckDB points at a folder that
exists, every finished checkpoint folder has its row, and the last run has its
evaluation and A–U rows. About one and a half smoke runs: marked e2e.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, execute_full_mimo

pytestmark = pytest.mark.e2e

SEED = 16
#: (step, the longest seeded delay after its STEP_START line, in seconds)
POINTS = (("teacher_embeddings", 3.0), ("stage1_checkpoint", 6.0), ("mlir_eval", 6.0))
#: Models whose checkpoint folders the training assets record in `checkpoints`.
TRAINED = {"stage1", "mimo", "mimo_lambda_0", "mimo_lambda_0.5", "mimo_lambda_1", "infonce", "xlco", "lakda"}


def _kill_during(env: dict, log_path: Path, step: str, delay: float, timeout: float = 1500) -> bool:
    """Start full_mimo, SIGKILL its whole process group `delay` s after `step` starts; True if the
    step was still running at the kill."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "dagster"), "job", "execute", "-m", "mimo_pipeline.definitions",
             "-j", "full_mimo"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started, finished = f'Started execution of step "{step}"', f'Finished execution of step "{step}"'
    deadline = time.monotonic() + timeout
    try:
        while started not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"full_mimo ended (rc {proc.returncode}) before step {step} started; log: {log_path}")
            if time.monotonic() > deadline:
                pytest.fail(f"step {step} did not start within {timeout:.0f} s; log: {log_path}")
            time.sleep(0.1)
        time.sleep(delay)
        during = proc.poll() is None and finished not in log_path.read_text(errors="replace")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    return during


def test_sigkill_at_three_points_then_every_rerun_succeeds_and_nothing_is_lost(tmp_path, repo_env):
    from mimo_pipeline.storage import ResultsDB

    home = tmp_path / "home"
    env = {**repo_env, "MIMO_HOME": str(home), "MIMO_PROFILE": "smoke", "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("")
    rng = random.Random(SEED)
    killed_during = {}
    for i, (step, longest) in enumerate(POINTS):  # each run re-runs the one killed before it
        delay = rng.uniform(0.2, longest)
        killed_during[step] = _kill_during(env, tmp_path / f"killed{i}.log", step, delay)
    rc, _ = execute_full_mimo(env, tmp_path / "rerun.log")
    assert rc == 0, f"the re-run after three SIGKILLs failed; log: {tmp_path}/rerun.log"
    # a kill that came after its step finished still tested a crash, just not the one named
    assert any(killed_during.values()), f"every kill missed its step: {killed_during}"

    db = ResultsDB(home / "mimo.duckdb")
    rows = db.query("SELECT model, path, dagster_run_id FROM checkpoints")
    assert not rows.empty
    dangling = [p for p in rows.path if not Path(p).exists()]
    assert dangling == [], f"checkpoint rows pointing at nothing: {dangling}"
    recorded = {str(Path(p).resolve()) for p in rows.path}
    finished = [d for m in TRAINED for d in (home / "models" / m).glob("*")
                if not d.name.startswith(".") and ".corrupt-" not in d.name and (d / "modules.json").is_file()]
    assert finished, "no finished checkpoint folder"
    unrecorded = [str(d) for d in finished if str(d.resolve()) not in recorded]
    assert unrecorded == [], f"finished checkpoints without their row: {unrecorded}"
    last = db.query("SELECT dagster_run_id FROM eval_metrics ORDER BY created_at DESC LIMIT 1").dagster_run_id[0]
    n = db.query("SELECT count(*) AS n FROM eval_metrics WHERE dagster_run_id = ?", [last]).n[0]
    assert n > 0
    assert len(db.query("SELECT * FROM au_metrics WHERE dagster_run_id = ?", [last])) > 0
