"""`make bench`: our pipeline's hot paths against their usual peers, side by side in one process.

    python -m bench.run                 # everything but --rss, about 10 minutes on 2 cores
    python -m bench.run --only search   # one part (encode, encode_bf16, train, search)
    python -m bench.run --rss           # also peak RSS of each smoke-profile step (subprocesses)
    python -m bench.run --only rss      # only that
    python -m bench.run --pipeline      # also a whole default full_mimo run, seconds per asset

Prints one table (ours, peer, ratio = ours / peer: higher is better for every metric)
and appends each figure to ``bench_results(bench, metric, ours, peer, ratio, created_at)``
in ``MIMO_HOME/mimo.duckdb``; the details (per-run figures, checks) go to
``MIMO_HOME/bench/run-<time>.json``, copied to ``latest.json``. How each comparison is
made fair is in the docstring of its module: `bench.train_bench`, `bench.encode_bench` (also
``encode_bf16``),
`bench.search_bench`, `bench.rss`. The machines share their cores with other work: figures move by ±20%
from run to run, ratios much less (the two sides take turns within each part).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("encode", "encode_bf16", "train", "search")  # the default; "rss" and "pipeline" run only when asked for


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=PARTS + ("rss", "pipeline"),
                   help="run only this part (repeatable)")
    p.add_argument("--rss", action="store_true", help="also measure peak RSS per smoke-profile step (minutes)")
    p.add_argument("--pipeline", action="store_true",
                   help="also time a whole default full_mimo run, seconds per asset (about 20 minutes)")
    p.add_argument("--home", help="MIMO_HOME (default: $MIMO_HOME or <repo>/data)")
    p.add_argument("--sentences", type=int, default=2000, help="teacher encoding: English verses")
    p.add_argument("--encode-batch", type=int, default=64)
    p.add_argument("--bf16-texts", type=int, default=512, help="encode_bf16: verses in 8 languages")
    p.add_argument("--steps", type=int, default=10, help="Stage-1 training steps per side")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--count-flops", action="store_true", help="also count one step's FLOPs with FlopCounterMode")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--docs", type=int, default=50_000)
    p.add_argument("--ann-docs", type=int, default=10_000, help="pool of the IVF/HNSW recall check")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--probe-seconds", type=float, default=1.0, help="length of each matmul-ceiling window")
    p.add_argument("--no-db", action="store_true", help="do not write to mimo.duckdb")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    parts = tuple(args.only or PARTS) + (("rss",) if args.rss else ()) + (("pipeline",) if args.pipeline else ())
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the peers' libraries

    t_start = time.perf_counter()
    import numpy as np  # noqa: F401 - imports first, so no part pays for them
    import torch

    from mimo_pipeline.settings import Settings

    from .common import format_table, log, write_rows
    from .flops import matmul_peak_gflops

    settings = Settings.resolve(home=args.home)
    home = settings.home
    log(f"MIMO_HOME {home}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    if {"encode", "encode_bf16", "train"} & set(parts):
        import sentence_transformers  # noqa: F401
        import transformers  # noqa: F401
        from transformers import BertModel  # noqa: F401 - lazy modules resolved before any timing

        transformers.utils.logging.disable_progress_bar()

    rows, details = [], {"args": vars(args)}
    peak = matmul_peak_gflops(seconds=args.probe_seconds)
    details["matmul_peak_gflops"] = peak
    log(f"fp32 matmul ceiling (torch.mm 1024x1024): {peak:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        teacher_handle, english = None, None
        if "encode" in parts or "train" in parts:
            from mimo_pipeline.catalog import resolve_model

            from .encode_bench import english_sentences, run_encode

            teacher = resolve_model(settings.teacher, home)
            english = english_sentences(args.sentences)
        if "encode" in parts:
            r, d, teacher_handle = run_encode(english, teacher, batch_size=args.encode_batch,
                                              keep_cache=Path(tmp) / "teacher")
            rows += r
            details["encode"] = d
        if "encode_bf16" in parts:
            from mimo_pipeline.catalog import resolve_model

            from .encode_bench import multilingual_sentences, run_encode_bf16

            r, d = run_encode_bf16(multilingual_sentences(args.bf16_texts),
                                   resolve_model(settings.student, home).path, batch_size=args.encode_batch,
                                   window=min(0.25, args.probe_seconds))
            rows += r
            details["encode_bf16"] = d
        if "train" in parts:
            from mimo_pipeline.teacher import build_teacher_embeddings

            from .train_bench import distill_rows, run_train

            student = resolve_model(settings.student, home)
            if teacher_handle is None:  # only the English sides the training rows need
                _, ens = distill_rows(english, args.steps * args.batch)
                teacher_handle = build_teacher_embeddings(list(dict.fromkeys(ens)), teacher, Path(tmp) / "teacher")
            r, d = run_train(student, teacher_handle, english, steps=args.steps, batch=args.batch,
                             max_length=args.max_length, count_flops=args.count_flops)
            rows += r
            details["train"] = d
    if "search" in parts:
        from .search_bench import run_search

        r, d = run_search(args.queries, args.docs, args.dim, args.k, ann_docs=args.ann_docs)
        rows += r
        details["search"] = d

    if "pipeline" in parts:
        from .pipeline import run_pipeline

        r, d = run_pipeline()
        rows += r
        details["pipeline"] = d

    rss_rows = None
    if "rss" in parts:
        from .rss import format_rss, peak_rss_smoke, write_rss

        rss_rows = peak_rss_smoke(home)
        details["rss"] = rss_rows

    wall = time.perf_counter() - t_start
    print()
    print(f"ratios = ours / peer (higher is better); fp32 matmul ceiling at start {peak:.1f} GFLOP/s; "
          f"{torch.get_num_threads()} torch threads; {wall:.0f}s")
    if rows:
        print(format_table(rows))
    if rss_rows:
        print()
        print(format_rss(rss_rows))
    if not args.no_db:
        write_rows(home, rows)
        if rss_rows:
            write_rss(home, rss_rows)
        out = home / "bench" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(details, indent=1, default=str))
        (home / "bench" / "latest.json").write_text(out.read_text())
        what = f"{len(rows)} rows to bench_results" + (f", {len(rss_rows)} to bench_rss" if rss_rows else "")
        print(f"\n{what} in {home / 'mimo.duckdb'}; details in {out} (and latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
