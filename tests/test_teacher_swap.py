"""Teacher swap after a full smoke run: only what depends on the teacher re-materialises.

The user's flow (README): ``MIMO_TEACHER=all-mpnet-base-v2 make swap-teacher``, i.e.
``dg launch --assets 'key:teacher_model+'``: observe the new teacher (its fingerprint
becomes teacher_model's data version, so the UI marks the assets that read the teacher,
teacher_embeddings and mlir_eval, Unsynced), then re-materialise everything downstream.
"""

import subprocess

import pytest

from tests.conftest import REPO, instance_of, materializations

pytestmark = pytest.mark.e2e

ASSETS = ("parallel_corpus", "retrieval_pairs", "mlir_benchmarks", "student_base", "teacher_embeddings",
          "stage1_checkpoint", "stage2_checkpoint", "baseline_checkpoints", "mlir_eval", "au_analysis")
UPSTREAM = {"parallel_corpus", "retrieval_pairs", "mlir_benchmarks", "student_base", "baseline_checkpoints"}
DOWNSTREAM = {"teacher_embeddings", "stage1_checkpoint", "stage2_checkpoint", "mlir_eval", "au_analysis"}
# Dagster marks Unsynced the assets whose own inputs changed: those that depend on the
# teacher directly (mlir_eval declares it for teacher_en). Their descendants follow once
# these re-materialise, which is why the swap command selects `key:teacher_model+`.
DIRECT = {"teacher_embeddings", "mlir_eval"}


def _dg_launch(env, selection, log_path):
    with open(log_path, "w") as log:
        proc = subprocess.run([str(REPO / ".venv" / "bin" / "dg"), "launch", "--assets", selection], cwd=REPO,
                              env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1500)
    assert proc.returncode == 0, f"dg launch --assets {selection!r} failed, log: {log_path}"


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
    _dg_launch(env, "key:teacher_model+", smoke["root"] / "swap.log")
    instance = instance_of(smoke)
    after = {k: len(materializations(instance, k)) for k in ASSETS}
    return {"before": before, "after": after, "stale0": stale_before_observing, "stale1": stale_after_observing,
            "stale2": _stale(instance, ASSETS), "smoke": smoke, "instance": instance}


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
