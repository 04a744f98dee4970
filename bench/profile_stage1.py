"""Where a Stage-1 step goes, ours against sentence-transformers: py-spy, both taking turns.

    python -m bench.profile_stage1 --py-spy /path/to/py-spy [--steps 6]

Runs the `train_bench` setup (same rows, model, objective, optimiser) with both loops in
threads that alternate step by step (`interleave.Baton`), under ``py-spy record --threads``
(sampling; stacks waiting for the turn are dropped), then attributes each side's
samples to phases by the functions on the stack: set-up/load, tokenise, forward,
backward, gradient clipping, optimiser step, state write, other. torch.profiler cannot
do this: it records operators only on the thread that started it. Not part of
`make bench` (py-spy is not a project dependency: ``pip install --target DIR py-spy``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

#: Phase of a stack: the first rule (in this order) with a pattern in the stack wins.
#: Stacks waiting for the turn (``Baton._acquire``) are dropped.
PHASES = (
    ("state write", ("_save_state",)),
    ("set-up/load", ("TrainableEncoder.__init__", "SentenceTransformer.__init__", "sentence_transformers/util/dec",
                     "Trainer.__init__", "_find_and_load", "Dataset.from_dict", "create_optimizer",
                     "Accelerator.prepare", "from_pretrained")),
    ("optimiser step", ("torch/optim/",)),
    ("grad clipping", ("clip_grad_norm",)),
    ("backward", ("Tensor.backward", "_engine_run_backward")),
    ("tokenise+collate", ("tokeniz", "Tokeniz", "collat", "Collat")),
    ("data loading", ("torch/utils/data/", "datasets/")),
    ("forward", ("Module._call_impl",)),
)


def phase_of(stack: str) -> str | None:
    if "Baton._acquire" in stack:
        return None
    for name, patterns in PHASES:
        if any(p in stack for p in patterns):
            return name
    return "other"


def summarise(raw: Path, sides: tuple[str, ...] = ("ours", "peer")) -> dict[str, Counter]:
    """Samples per phase per side from py-spy's raw (collapsed) output, threads named ``bench-<side>``."""
    out = {k: Counter() for k in sides}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        head, _, frames = stack.partition(";")
        who = next((w for w in sides if head.endswith(f": bench-{w}")), None)
        phase = phase_of(frames) if who else None
        if phase is not None:
            out[who][phase] += int(count)
    return out


def child(args) -> int:
    from mimo_pipeline.catalog import resolve_model
    from mimo_pipeline.losses import Projection
    from mimo_pipeline.settings import Settings
    from mimo_pipeline.teacher import build_teacher_embeddings
    from mimo_pipeline.training import DistillBatch

    from .encode_bench import english_sentences
    from .interleave import Baton
    from .train_bench import SEED, distill_rows, run_ours, run_peer

    s = Settings.resolve()
    student, teacher = resolve_model(s.student, s.home), resolve_model(s.teacher, s.home)
    n = args.steps * args.batch
    xs, ens = distill_rows(english_sentences(2000), n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        te = build_teacher_embeddings(list(dict.fromkeys(ens)), teacher, tmp / "teacher")
        tv = te.vectors(ens)
        batches = [DistillBatch(xs[i:i + args.batch], ens[i:i + args.batch], tv[i:i + args.batch])
                   for i in range(0, n, args.batch)]
        proj = Projection(384, te.dim, seed=SEED)
        baton = Baton(["ours", "peer"])
        baton.run({
            "ours": lambda: run_ours(student, batches, te.dim, args.steps, args.batch, args.max_length,
                                     tmp / "ours", baton.switch),
            "peer": lambda: run_peer(student, xs, ens, tv, proj, args.steps, args.batch, args.max_length,
                                     tmp / "peer", baton.switch),
        })
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.child).write_text(json.dumps({"segments": baton.segments}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_stage1")
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy executable")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--rate", type=int, default=25, help="samples per second")
    p.add_argument("--raw", help="keep py-spy's raw output here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if not args.py_spy:
        p.error("py-spy not found: pip install --target DIR py-spy, then --py-spy DIR/bin/py-spy")

    work = Path(tempfile.mkdtemp(prefix="bench-pyspy-"))
    raw, meta = Path(args.raw or work / "raw.txt"), work / "meta.json"
    cmd = [args.py_spy, "record", "--threads", "--format", "raw", "--rate", str(args.rate), "-o", str(raw), "--",
           sys.executable, "-m", "bench.profile_stage1", "--child", str(meta), "--steps", str(args.steps),
           "--batch", str(args.batch), "--max-length", str(args.max_length)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    subprocess.run(cmd, check=True, env=env)
    info = json.loads(meta.read_text())
    phases = summarise(raw)
    names = [n for n, _ in PHASES] + ["other"]
    print(f"\nsamples per phase (rate {args.rate}/s, {args.steps} steps of {args.batch} rows; "
          f"turn seconds: ours {sum(info['segments']['ours']):.1f}, peer {sum(info['segments']['peer']):.1f})")
    print(f"{'phase':<16}{'ours':>8}{'peer':>8}   s/step ours  s/step peer")
    for n in names:
        o, q = phases["ours"][n], phases["peer"][n]
        print(f"{n:<16}{o:>8}{q:>8}   {o / args.rate / args.steps:11.2f}  {q / args.rate / args.steps:11.2f}")
    print(f"{'total':<16}{sum(phases['ours'].values()):>8}{sum(phases['peer'].values()):>8}")
    shutil.rmtree(work, ignore_errors=True)  # py-spy's raw output stays only at --raw
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
