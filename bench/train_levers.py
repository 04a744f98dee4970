"""Training levers on the default sizes: seconds per optimizer step of Stage 2 (`CachedMimoLoss`).

    python -m bench.train_levers [--steps 6] [--reps 2]

The student (converted multilingual-e5-small, word embeddings frozen), 16 rows per step
of 64 tokens at most, the same rows for every variant; variants run in turns (A B C ... A
B C ...) so drift on a shared machine hits each alike. A step's time is the gap between
two ``on_step_end`` callbacks (steps 2..N; step 1 carries the trainer's set-up). Levers:

- ``fp32``: today's default elsewhere: the no-gradient pass of gradient caching in fp32;
- ``bf16_no_grad``: that pass under bf16 autocast (`TrainConfig.precision`);
- ``adamw_plain``: the non-fused AdamW (``optim = adamw_torch``) instead of the fused one;
- ``mini_batch_8``: gradient caching in chunks of 8 rows instead of one chunk of 16;
- ``bf16_autocast``: the whole step under bf16 autocast (`TrainConfig.bf16`): the no-gradient
  pass, the replay with gradients and its backward; the weights and the optimizer stay fp32.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "fp32": {"precision": "fp32"},
    "bf16_no_grad": {"precision": "bf16", "bf16": False},
    "adamw_plain": {"precision": "fp32", "optim": "adamw_torch"},
    "mini_batch_8": {"precision": "fp32", "mini_batch_size": 8},
    "bf16_autocast": {"precision": "bf16", "bf16": True},
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.train_levers")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)

    import numpy as np
    from datasets import Dataset
    from transformers import TrainerCallback

    from mimo_pipeline.catalog import resolve_model
    from mimo_pipeline.losses import CachedMimoLoss, make_projection
    from mimo_pipeline.settings import Settings
    from mimo_pipeline.trainer import TrainConfig, fit, load_student

    from .train_bench import distill_rows

    settings = Settings.resolve()
    student = resolve_model(settings.student, settings.home)
    n = args.steps * args.batch
    from mimo_pipeline.bible import read_language

    english = list(dict.fromkeys(t for t in read_language("en").values() if t.strip()))[:4000]
    xs, ens = distill_rows(english, n, seed=0)
    rng = np.random.default_rng(0)
    labels = rng.standard_normal((n, 2, 384)).astype(np.float32).tolist()
    data = Dataset.from_dict({"anchor": xs, "positive": ens[1:] + ens[:1], "label": labels})

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for rep in range(args.reps):
        for name, extra in VARIANTS.items():
            cfg = TrainConfig(**{"steps": args.steps, "batch_size": args.batch, "lr": 2e-5, "max_length": 64,
                                 "seed": 0, "checkpoint_every": 0, "log_every": args.steps, "device": "cpu",
                                 **extra})
            model = load_student(student.path, cfg)
            loss = CachedMimoLoss(model, make_projection(384, 384, seed=0))
            clock = Clock()
            with tempfile.TemporaryDirectory() as tmp:
                fit(model, loss, data, cfg, Path(tmp), prompts={"anchor": "query: ", "positive": "passage: "},
                    callbacks=[clock])
            times[name] += list(np.diff(clock.t))
            print(f"rep {rep} {name}: {np.round(np.diff(clock.t), 2).tolist()}", flush=True)
    base = statistics.median(times["fp32"])
    print("\n| lever | s per step (median) | vs fp32 |\n|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.2f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()
