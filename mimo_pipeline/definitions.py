"""The composition root: wires assets, resources and jobs into `defs`.

The only module of the library that imports Dagster. Run the whole pipeline with
``dagster job execute -m mimo_pipeline.definitions -j full_mimo`` or
``dg launch --job full_mimo``; serve the UI with ``dagster dev -w workspace.yaml``.
``python -m mimo_pipeline.definitions`` (what ``make run`` calls) runs ``full_mimo``
against the instance in ``DAGSTER_HOME`` and prints a summary of what it produced.
"""

import argparse
import logging
import os
import sys
import time

from dagster import (AssetSelection, DagsterInstance, Definitions, define_asset_job, in_process_executor,
                     load_asset_checks_from_modules, load_assets_from_modules, multiprocess_executor)

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


full_mimo = define_asset_job(
    "full_mimo",
    selection=AssetSelection.all(include_sources=True),
    description="The whole MIMO pipeline on the profile in MIMO_PROFILE (default: the embedded default).",
    executor_def=_executor(),
)

defs = Definitions(
    assets=load_assets_from_modules(_MODULES),
    asset_checks=load_asset_checks_from_modules(_MODULES),
    jobs=[full_mimo],
    executor=_executor(),  # also for the implicit asset job behind `dg launch --assets` and the UI
    resources={
        "settings": settings,
        "catalog": ModelCatalog(settings=settings),
        "artifacts": ArtifactIOManager(settings=settings),
        "results": ResultsStore(settings=settings),
        "tracking": MlflowTracking(settings=settings),
    },
)


def main(argv=None) -> int:
    """Run a job in process and print the summary (corpus, teacher cache, results)."""
    parser = argparse.ArgumentParser(description="Run a mimo_pipeline job and print what it produced.")
    parser.add_argument("job", nargs="?", default="full_mimo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mimo_pipeline.report import print_summary

    t0 = time.perf_counter()
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    result = defs.resolve_job_def(args.job).execute_in_process(instance=instance, raise_on_error=False)
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
