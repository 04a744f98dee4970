"""The composition root: wires assets, resources and jobs into `defs`.

The only module of the library that imports Dagster. Run the whole pipeline with
``dagster job execute -j full_mimo`` after ``source .venv/bin/activate`` (make setup has the
activation set ``DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME`` to this module; without it add
``-m mimo_pipeline.definitions``) or ``dg launch --job full_mimo``; serve the UI with
``dagster dev -w workspace.yaml``, where the sensor ``follow_the_teacher`` re-runs what
depends on the teacher when a new one is observed.
``python -m mimo_pipeline.definitions [-c run_config.yaml]`` (what ``make run`` calls) runs
``full_mimo`` against the instance in ``DAGSTER_HOME`` and prints a summary of what it produced.
"""

import argparse
import logging
import os
import sys
import time

from dagster import (AssetKey, AssetsDefinition, AssetSelection, AutomationCondition,
                     AutomationConditionSensorDefinition, DagsterInstance, DefaultSensorStatus, Definitions,
                     define_asset_job, in_process_executor, load_asset_checks_from_modules, load_assets_from_modules,
                     map_asset_specs, multiprocess_executor)

from assets import data, evaluation, models, teacher, training
from resources import ArtifactIOManager, MimoSettings, MlflowTracking, ModelCatalog, ResultsStore

_MODULES = [data, models, teacher, training, evaluation]

settings = MimoSettings()

#: Steps run one after another in one process by default: on a 2-core machine parallel
#: steps only compete for the cores, and each extra process re-imports torch. Set
#: MIMO_EXECUTOR=multiprocess (or configure the job in the launchpad) to run
#: independent steps side by side on a bigger machine.
EXECUTORS = {"in_process": in_process_executor, "multiprocess": multiprocess_executor}


def _executor():
    name = os.environ.get("MIMO_EXECUTOR", "in_process")
    if name not in EXECUTORS:
        raise ValueError(f"MIMO_EXECUTOR={name!r}: use one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]


# ------------------------------------------------------------------ declarative automation
# With `dagster dev` (make ui) running, a new teacher re-materialises what depends on it and
# nothing else. teacher_model's data version is the teacher's fingerprint: an observation
# (the UI's "Observe" on teacher_model, or the hourly one its own automation condition asks
# for, assets/models.py) that finds a new fingerprint is an update; one that finds the same
# teacher is not. The sensor below then requests every asset downstream of teacher_model
# in one run: teacher_embeddings, stage1_checkpoint, stage2_checkpoint, mlir_eval, au_analysis.

TEACHER = AssetKey("teacher_model")
TEACHER_LINEAGE = AssetSelection.assets(TEACHER).downstream()  # teacher_model and its descendants


def follows_teacher() -> AutomationCondition:
    """True when a dependency in the teacher's lineage has a new version (a new teacher
    fingerprint, or a descendant of the teacher materialised by another run) or will be
    materialised on this tick; never while a dependency is missing or running. Unlike
    `AutomationCondition.eager()`, an update outside the lineage (say, `parallel_corpus`
    re-materialised by hand) triggers nothing, and neither does teacher_model's own scheduled
    observation being requested: only what it finds."""
    below_teacher = AssetSelection.assets(TEACHER).downstream(include_self=False)
    updated = AutomationCondition.newly_updated() & ~AutomationCondition.executed_with_root_target()
    return (
        (AutomationCondition.any_deps_match(updated).allow(TEACHER_LINEAGE)
         | AutomationCondition.any_deps_match(AutomationCondition.will_be_requested()).allow(below_teacher)
         ).since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("follows_teacher")


def _downstream(key: AssetKey, assets) -> set:
    """The keys of the assets that depend on ``key``, directly or not."""
    children = {}
    for a in assets:
        for spec in getattr(a, "specs", ()):
            for dep in spec.deps:
                children.setdefault(dep.asset_key, set()).add(spec.key)
    found, todo = set(), [key]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def with_teacher_automation(assets):
    """Every asset downstream of teacher_model gets `follows_teacher()` (here, by key, so that
    no asset module needs to know the graph); the others are left as they are."""
    keys = _downstream(TEACHER, assets)
    condition = follows_teacher()

    def attach(spec):
        return spec.replace_attributes(automation_condition=condition) if spec.key in keys else spec

    return [*map_asset_specs(attach, [a for a in assets if isinstance(a, AssetsDefinition)]),
            *(a for a in assets if not isinstance(a, AssetsDefinition))]


follow_the_teacher = AutomationConditionSensorDefinition(
    "follow_the_teacher",
    target=TEACHER_LINEAGE,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Declarative automation of the teacher's lineage: observes teacher_model hourly, and when its "
                "fingerprint changes re-materialises teacher_embeddings, stage1_checkpoint, stage2_checkpoint, "
                "mlir_eval and au_analysis. Runs whenever the daemon does (dagster dev / make ui); stop it here.",
)

full_mimo = define_asset_job(
    "full_mimo",
    selection=AssetSelection.all(include_sources=True),
    description="The whole MIMO pipeline on the profile in MIMO_PROFILE (default: the embedded default).",
    executor_def=_executor(),
)

defs = Definitions(
    assets=with_teacher_automation(load_assets_from_modules(_MODULES)),
    asset_checks=load_asset_checks_from_modules(_MODULES),
    jobs=[full_mimo],
    sensors=[follow_the_teacher],
    executor=_executor(),  # also for the implicit asset job behind `dg launch --assets` and the UI
    resources={
        "settings": settings,
        "catalog": ModelCatalog(settings=settings),
        "artifacts": ArtifactIOManager(settings=settings),
        "results": ResultsStore(settings=settings),
        "tracking": MlflowTracking(settings=settings),
    },
)


def _instance() -> DagsterInstance:
    """The instance in ``DAGSTER_HOME`` (ephemeral without it), its SQLite storage created under a
    file lock: two runs started together on a new DAGSTER_HOME would both create its tables
    ("table snapshots already exists")."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return DagsterInstance.ephemeral()
    from pathlib import Path

    from mimo_pipeline.fileio import file_lock

    with file_lock(Path(home) / ".mimo-instance.lock"):
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)  # run storage
        instance.get_latest_materialization_event(AssetKey("parallel_corpus"))  # event log storage
        instance.all_instigator_state()  # schedule storage
    return instance


def main(argv=None) -> int:
    """Run a job in process and print the summary (corpus, teacher cache, results)."""
    parser = argparse.ArgumentParser(description="Run a mimo_pipeline job and print what it produced.")
    parser.add_argument("job", nargs="?", default="full_mimo")
    parser.add_argument("-c", "--config", help="a run config YAML file, as `dagster job execute -c` takes "
                                               "(e.g. configs/three_seeds.yaml)")
    args = parser.parse_args(argv)
    run_config = {}
    if args.config:
        import yaml

        run_config = yaml.safe_load(open(args.config)) or {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mimo_pipeline.report import print_summary

    t0 = time.perf_counter()
    instance = _instance()
    result = defs.resolve_job_def(args.job).execute_in_process(instance=instance, run_config=run_config,
                                                             raise_on_error=False)
    wall = time.perf_counter() - t0
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"step {event.step_key} failed: {event.event_specific_data.error.message}", file=sys.stderr)
        print(f"job {args.job} failed after {wall:.0f}s (run {result.run_id})", file=sys.stderr)
        return 1
    print_summary(settings.resolve(), result.run_id)
    print(f"\njob {args.job} succeeded in {wall:.0f}s (run {result.run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
