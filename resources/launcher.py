"""Launch a training function on several processes: torchrun in a subprocess, through Dagster Pipes."""

import os
import pickle
import sys
import tempfile
from pathlib import Path


def launch_distributed(context, function: str, args: tuple, world_size: int, mlflow: dict | None = None,
                       kwargs: dict | None = None):
    """Run ``mimo_pipeline.stages.<function>(*args, **kwargs)`` under
    ``torchrun --standalone --nproc-per-node=world_size`` (`resources.ddp_worker`),
    launched with ``dagster.PipesSubprocessClient`` so that rank 0's log lines reach the
    Dagster run; returns what rank 0's call returned. Each process gets its share of
    ``OMP_NUM_THREADS``."""
    from dagster import PipesSubprocessClient

    with tempfile.TemporaryDirectory(prefix="mimo-ddp-") as tmp:
        job_path, result_path = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job_path.write_bytes(pickle.dumps({"function": function, "args": args, "kwargs": kwargs or {},
                                           "result": str(result_path), "mlflow": mlflow}))
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)) // world_size)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
                   "-m", "resources.ddp_worker", str(job_path)]
        context.log.info(f"launching {function} on {world_size} processes: {' '.join(command)}")
        PipesSubprocessClient().run(command=command, context=context,
                                    env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return pickle.loads(result_path.read_bytes())
