"""Two runs of the pipeline side by side: the evaluation figures of two ``MIMO_HOME`` folders.

    python -m bench.compare_homes HOME_A HOME_B [--metric ndcg@10]

For example `make run` twice into two empty homes, one setting changed (training under bf16
autocast or not, another teacher, another seed). Joins the two homes' `eval_metrics` rows (same
model, seed, benchmark, task and metric, query language ``all``; each home's latest row) and
prints, per model, B − A on every benchmark with A's 95% half-interval over topics beside it,
then per benchmark the largest |B − A| over the models. Reads only; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_LATEST = """
    SELECT model, seed, benchmark, metric, value, (ci_high - ci_low) / 2 AS half
    FROM (SELECT *, row_number() OVER (PARTITION BY model, seed, benchmark, task, metric
                                       ORDER BY created_at DESC) AS k
          FROM eval_metrics WHERE query_lang = 'all' AND metric = ?) WHERE k = 1"""


def rows(home: str | Path, metric: str) -> dict[tuple, tuple[float, float]]:
    """``(model, seed, benchmark) -> (value, half-interval)`` of ``home``'s latest evaluation."""
    from mimo_pipeline.storage import ResultsDB

    db = ResultsDB(Path(home) / "mimo.duckdb")
    if not db.table_dir("eval_metrics").is_dir():
        raise SystemExit(f"{db.table_dir('eval_metrics')} does not exist: give a MIMO_HOME that `make run` has filled")
    with db.connect(read_only=True) as con:  # views over the Parquet files: a moved home reads too
        return {(m, s, b): (v, h) for m, s, b, _, v, h in con.execute(_LATEST, [metric]).fetchall()}


def compare(a: dict, b: dict) -> list[tuple]:
    """``(model, seed, benchmark, A, B, B − A, A's half-interval)`` for the keys both hold."""
    return [(*k, a[k][0], b[k][0], b[k][0] - a[k][0], a[k][1]) for k in sorted(a.keys() & b.keys(), key=str)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_homes", description=__doc__.split("\n")[0])
    p.add_argument("home_a")
    p.add_argument("home_b")
    p.add_argument("--metric", default="ndcg@10")
    args = p.parse_args(argv)
    joined = compare(rows(args.home_a, args.metric), rows(args.home_b, args.metric))
    if not joined:
        raise SystemExit("the two homes share no evaluation rows (model, seed, benchmark)")
    print(f"{args.metric} at query_lang all; A = {args.home_a}, B = {args.home_b}\n")
    print("| model | seed | benchmark | A | B | B − A | A's half-interval |\n|---|---|---|---|---|---|---|")
    for m, s, bench, va, vb, d, h in joined:
        print(f"| {m} | {s} | {bench} | {va:.4f} | {vb:.4f} | {d:+.4f} | {h:.3f} |")
    print("\n| benchmark | largest abs(B − A) | mean B − A | models |\n|---|---|---|---|")
    for bench in sorted({r[2] for r in joined}):
        ds = [r[5] for r in joined if r[2] == bench]
        print(f"| {bench} | {max(abs(d) for d in ds):.4f} | {sum(ds) / len(ds):+.4f} | {len(ds)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
