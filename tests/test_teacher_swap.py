"""Teacher swap after a full smoke run: only what depends on the teacher re-materialises, and
SIGKILLs during the swap lose nothing.

The user's flow (README): ``MIMO_TEACHER=all-mpnet-base-v2 make swap-teacher``, i.e.
``dg launch --assets 'key:teacher_model+'``: observe the new teacher (its fingerprint
becomes teacher_model's data version, so the UI marks the assets that read the teacher,
teacher_embeddings and mlir_eval, Unsynced), then re-materialise everything downstream.

Crash anywhere: the swap is SIGKILLed at three seeded points, each a seeded delay after the
step's STEP_START line in the launch's log: in the new teacher's cache (`teacher_embeddings`,
0.2–3 s: loading the teacher or encoding), in Stage 1 (`stage1_checkpoint`, 40–75 % of the
step's seconds in the smoke run before the swap: Stage 1 loads, fits `W` and probes the base
first, then trains and writes, so that is mostly training) and in the evaluation (`mlir_eval`,
10–60 % of its smoke-run seconds). Fractions of the step's own time on this host, not fixed
seconds, so the kills land in the same phase on a slow host and a fast one; a kill that lands
after its step finished is recorded, and at least one must land during its step. The kills
are chained so that each lands on work not done yet: the launch killed in the teacher cache is
launched again and killed in Stage 1, that one again and killed in the evaluation, and the last
launch must succeed. Afterwards every checkpoint row in DuckDB points at a folder that exists,
every finished checkpoint folder has its row, and the last run has its evaluation and A–U rows.
The swap re-runs exactly the three steps the chain kills, which is why the chain rides on it
instead of on a smoke run of its own (make test's minutes).

The swap changes the session's smoke home (a second teacher's checkpoints and vectors, killed
runs); the tests that read what the smoke runs left either run before this module (pytest takes
the modules by name) or, like `test_pipeline_e2e`'s, select the smoke runs' own rows.
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

from tests.conftest import REPO, instance_of, materializations

pytestmark = pytest.mark.e2e

SEED = 16
#: (step, the range of the seeded delay after its STEP_START line, and its unit: "s" seconds, or
#: "of smoke" a fraction of the step's seconds in the smoke fixture's first run)
KILL_POINTS = (("teacher_embeddings", (0.2, 3.0), "s"), ("stage1_checkpoint", (0.4, 0.75), "of smoke"),
               ("mlir_eval", (0.1, 0.6), "of smoke"))
#: Models whose checkpoint folders the training assets record in `checkpoints`.
TRAINED = {"stage1", "mimo", "mimo_lambda_0", "mimo_lambda_0.5", "mimo_lambda_1", "infonce", "xlco", "lakda"}

ASSETS = ("parallel_corpus", "retrieval_pairs", "mlir_benchmarks", "student_base", "teacher_embeddings",
          "stage1_checkpoint", "stage2_checkpoint", "baseline_checkpoints", "mlir_eval", "au_analysis")
UPSTREAM = {"parallel_corpus", "retrieval_pairs", "mlir_benchmarks", "student_base", "baseline_checkpoints"}
DOWNSTREAM = {"teacher_embeddings", "stage1_checkpoint", "stage2_checkpoint", "mlir_eval", "au_analysis"}
# Dagster marks Unsynced the assets whose own inputs changed: those that depend on the
# teacher directly (mlir_eval declares it for teacher_en). Their descendants follow once
# these re-materialise, which is why the swap command selects `key:teacher_model+`.
DIRECT = {"teacher_embeddings", "mlir_eval"}


def _dg_launch_command(selection):
    return [str(REPO / ".venv" / "bin" / "dg"), "launch", "--assets", selection]


def _dg_launch(env, selection, log_path):
    with open(log_path, "w") as log:
        proc = subprocess.run(_dg_launch_command(selection), cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=1500)
    assert proc.returncode == 0, f"dg launch --assets {selection!r} failed, log: {log_path}"


def _kill_during(env: dict, selection: str, log_path: Path, step: str, delay: float, timeout: float = 1500) -> bool:
    """Launch ``selection``, SIGKILL its whole process group ``delay`` s after ``step`` starts; True
    if the step was still running at the kill."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_dg_launch_command(selection), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    started, finished = f'Started execution of step "{step}"', f'Finished execution of step "{step}"'
    deadline = time.monotonic() + timeout
    try:
        while started not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"the launch ended (rc {proc.returncode}) before step {step} started; log: {log_path}")
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


def _first_run_step_seconds(smoke) -> dict[str, float]:
    """Seconds per step of the smoke fixture's first full_mimo run (the one that computed everything)."""
    from dagster import RunsFilter

    from bench.pipeline import step_seconds

    first = instance_of(smoke).get_runs(RunsFilter(job_name="full_mimo"), ascending=True)[0]
    return step_seconds(smoke["env"]["DAGSTER_HOME"], first.run_id)[1]


def _stale(instance, keys):
    from dagster import AssetKey
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from mimo_pipeline.definitions import defs

    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return {k for k in keys if resolver.get_status(AssetKey(k)) == StaleStatus.STALE}


@pytest.fixture(scope="module")
def swapped(smoke):
    env = {**smoke["env"], "MIMO_TEACHER": "all-mpnet-base-v2"}
    instance = instance_of(smoke)
    before = {k: len(materializations(instance, k)) for k in ASSETS}
    stale_before_observing = _stale(instance, ASSETS)
    _dg_launch(env, "key:teacher_model", smoke["root"] / "observe.log")
    stale_after_observing = _stale(instance_of(smoke), ASSETS)
    rng = random.Random(SEED)
    killed_during = {}
    smoke_seconds = _first_run_step_seconds(smoke)
    for i, (step, (low, high), unit) in enumerate(KILL_POINTS):  # each launch re-runs the one killed before it
        delay = rng.uniform(low, high) * (smoke_seconds[step] if unit == "of smoke" else 1.0)
        killed_during[step] = _kill_during(env, "key:teacher_model+", smoke["root"] / f"swap-killed{i}.log", step,
                                           delay)
        print(f"SIGKILL {delay:.1f} s after {step} started: {'during' if killed_during[step] else 'after'} it")
    _dg_launch(env, "key:teacher_model+", smoke["root"] / "swap.log")
    instance = instance_of(smoke)
    after = {k: len(materializations(instance, k)) for k in ASSETS}
    last_run = instance.get_runs(limit=1)[0]  # newest first: the launch that finished the swap
    return {"before": before, "after": after, "stale0": stale_before_observing, "stale1": stale_after_observing,
            "stale2": _stale(instance, ASSETS), "smoke": smoke, "instance": instance, "killed_during": killed_during,
            "last_run_id": last_run.run_id, "last_run_status": last_run.status.value}


def test_a_new_teacher_marks_its_descendants_unsynced(swapped):
    assert swapped["stale0"] == set()
    assert swapped["stale1"] == DIRECT  # the UI's "Unsynced": the assets that read the teacher
    assert swapped["stale2"] == set()


def test_only_downstream_assets_rematerialised(swapped):
    before, after = swapped["before"], swapped["after"]
    assert {k for k in ASSETS if after[k] > before[k]} == DOWNSTREAM
    assert all(after[k] == before[k] for k in UPSTREAM)


def test_new_cache_beside_the_old_and_new_projection_dimension(swapped):
    instance = swapped["instance"]
    old, new = materializations(instance, "teacher_embeddings")[0], materializations(instance, "teacher_embeddings")[-1]
    assert old.metadata["fingerprint"].value != new.metadata["fingerprint"].value
    assert (old.metadata["dim"].value, new.metadata["dim"].value) == (384, 768)
    home = swapped["smoke"]["home"]
    assert {p.name for p in (home / "teacher_cache").iterdir()} >= {old.metadata["fingerprint"].value,
                                                                    new.metadata["fingerprint"].value}
    from safetensors.torch import load_file

    projections = sorted((home / "models" / "mimo").glob("*.projection.safetensors"))
    shapes = {tuple(load_file(str(p))["weight"].shape) for p in projections}  # EmbedDistillLoss' format
    assert shapes == {(384, 384), (768, 384)}


def test_duckdb_holds_both_teachers_side_by_side(swapped):
    from mimo_pipeline.storage import ResultsDB
    from tests.test_readme_queries import readme_queries

    query = next(q for q in readme_queries() if "both teachers side by side" in q)
    df = ResultsDB(swapped["smoke"]["home"] / "mimo.duckdb").query(query)
    assert {"all-MiniLM-L6-v2", "all-mpnet-base-v2"} <= set(df.teacher)
    assert {"mimo", "stage1"} <= set(df[df.teacher == "all-mpnet-base-v2"].model)


def test_sigkills_at_three_points_lose_nothing(swapped):
    """The launch after three SIGKILLs succeeded (the fixture); DuckDB and the checkpoint folders agree."""
    from mimo_pipeline.storage import ResultsDB

    # a kill that came after its step finished still tested a crash, just not the one named
    assert any(swapped["killed_during"].values()), f"every kill missed its step: {swapped['killed_during']}"
    home = swapped["smoke"]["home"]
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
    assert swapped["last_run_status"] == "SUCCESS"
    assert last == swapped["last_run_id"], "the newest evaluation rows are not the last launch's"
    n = db.query("SELECT count(*) AS n FROM eval_metrics WHERE dagster_run_id = ?", [last]).n[0]
    assert n > 0
    assert len(db.query("SELECT * FROM au_metrics WHERE dagster_run_id = ?", [last])) > 0
