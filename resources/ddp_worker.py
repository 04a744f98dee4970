"""The torchrun entry point of data-parallel training (``world_size > 1`` in a training asset's config).

    torchrun --standalone --nproc-per-node=N -m resources.ddp_worker JOB.pkl

``JOB.pkl`` holds the `mimo_pipeline.stages` function to call (``train_stage1``,
``train_stage2`` or ``train_baseline``), its arguments, where to write the result and,
optionally, the MLflow run to log into. Every process joins one torch.distributed group
(gloo on CPU, nccl on GPU) and runs the same function: `SentenceTransformerTrainer`
wraps the model in DDP, each process takes its share of every global batch, and the
gradient-cached losses gather the other processes' embeddings, so every query sees the
whole global batch as negatives (`losses`). Rank 0 writes the checkpoint, logs to MLflow
and, when launched by ``dagster.PipesSubprocessClient`` (`resources.launcher`), streams
its log lines and the result back through Dagster Pipes (the ``dagster_pipes`` package,
not Dagster itself).
"""

import logging
import os
import pickle
import sys
from pathlib import Path


def main(job_path: str) -> int:
    import torch
    import torch.distributed as dist

    from mimo_pipeline import stages
    from mimo_pipeline.fileio import atomic_path

    job = pickle.loads(Path(job_path).read_bytes())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s")
    pipes = _open_pipes() if rank == 0 else None
    mlflow_run = _mlflow_run(job.get("mlflow")) if rank == 0 else None

    def on_log(record: dict) -> None:
        if mlflow_run is not None:
            mlflow_run.log_metrics({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))
        if pipes is not None:
            pipes.log.info(" ".join(f"{k}={v:.4g}" for k, v in record.items()))

    try:
        fn = getattr(stages, job["function"])
        trained = fn(*job["args"], on_log=on_log if rank == 0 else None, **job.get("kwargs", {}))
        if rank == 0:
            with atomic_path(job["result"]) as tmp:
                tmp.write_bytes(pickle.dumps(trained))
            if pipes is not None:
                pipes.report_custom_message({"result": job["result"], "steps": trained.steps,
                                             "rows_per_s": trained.rows_per_s, "world_size": dist.get_world_size()})
        dist.barrier()
    finally:
        if pipes is not None:
            pipes.__exit__(None, None, None)
        dist.destroy_process_group()
    return 0


def _open_pipes():
    """Dagster Pipes when launched by PipesSubprocessClient, else None (e.g. plain torchrun)."""
    if "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes().__enter__()


def _mlflow_run(spec):
    if not spec:
        return None
    from mlflow.tracking import MlflowClient

    from mimo_pipeline.tracking import RunLogger, Tracker

    return RunLogger(MlflowClient(Tracker(spec["home"]).tracking_uri), spec["run_id"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
