"""The bf16 quality guard (Speed issue): the same checkpoints evaluated in bf16 and in fp32.

    make run                                           # the default, MIMO_HOME=./data
    MIMO_HOME=./data DAGSTER_HOME=./.dagster_home .venv/bin/python -m bench.precision_guard

Materialises `mlir_eval` alone twice, on the checkpoints the last `make run` left (its upstream
assets are read, not rebuilt): once with ``precision: bf16`` (the vectors are in the embedding
cache already on bf16 hardware) and once with ``precision: fp32`` (every text encoded again in
fp32, about as long as `make run`'s `mlir_eval` times the bf16 speed-up). Then it joins the two
runs' `eval_metrics` rows (same model, seed, benchmark, query language and metric) and prints,
per benchmark, the largest |bf16 − fp32| of nDCG@10 over the models at query_lang ``all`` (the
guard: at most 0.005 on every benchmark), the mean signed difference, the interval it sits in,
and the largest difference over the per-language rows (10 topics each, so one swapped rank moves
them by more).
One row per benchmark goes to ``bench_results`` (``bench = 'precision_guard'``,
``metric = 'max_abs_delta_ndcg@10:<benchmark>'``, ``ours`` = that largest difference,
``peer`` = the 0.005 bound, so ``ratio`` ≤ 1 means it holds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .common import Row, log, write_rows

BOUND = 0.005


def _eval_run(precision: str) -> str:
    from dagster import AssetKey, DagsterInstance

    from mimo_pipeline.definitions import defs

    log(f"precision_guard: mlir_eval with precision {precision}")
    t0 = time.perf_counter()
    result = defs.resolve_job_def("full_mimo").execute_in_process(
        asset_selection=[AssetKey("mlir_eval")], instance=DagsterInstance.get(), raise_on_error=True,
        run_config={"ops": {"mlir_eval": {"config": {"precision": precision}}}})
    log(f"precision_guard: {precision} evaluation took {time.perf_counter() - t0:.0f}s (run {result.run_id})")
    return result.run_id


def compare(db_path, bf16_run: str, fp32_run: str) -> list[tuple]:
    """Per benchmark: ``(benchmark, max |Δ| nDCG@10 at query_lang all, mean Δ there, the largest
    half 95% interval there, max |Δ| nDCG@10 over every query language, rows joined)`` over the
    models both runs evaluated (Δ = bf16 − fp32)."""
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute("""
            SELECT a.benchmark,
                   max(abs(a.value - b.value)) FILTER (WHERE a.query_lang = 'all'),
                   avg(a.value - b.value) FILTER (WHERE a.query_lang = 'all'),
                   max(b.ci_high - b.ci_low) FILTER (WHERE a.query_lang = 'all') / 2,
                   max(abs(a.value - b.value)),
                   count(*)
            FROM eval_metrics a JOIN eval_metrics b
              ON a.model = b.model AND a.seed IS NOT DISTINCT FROM b.seed AND a.benchmark = b.benchmark
             AND a.task = b.task AND a.query_lang = b.query_lang AND a.metric = b.metric
            WHERE a.dagster_run_id = ? AND b.dagster_run_id = ? AND a.metric = 'ndcg@10'
            GROUP BY a.benchmark ORDER BY a.benchmark""", [bf16_run, fp32_run]).fetchall()
    finally:
        con.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs=2, metavar=("BF16_RUN", "FP32_RUN"),
                        help="compare two existing mlir_eval runs instead of running them")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        raise SystemExit("set DAGSTER_HOME to the instance `make run` used (./.dagster_home)")
    from mimo_pipeline.definitions import settings

    home = settings.resolve().home
    bf16_run, fp32_run = args.runs or (_eval_run("bf16"), _eval_run("fp32"))
    rows = compare(home / "mimo.duckdb", bf16_run, fp32_run)
    if not rows:
        raise SystemExit(f"no eval_metrics rows joined between runs {bf16_run} and {fp32_run}")
    print(f"bf16 run {bf16_run} against fp32 run {fp32_run}: nDCG@10, Δ = bf16 − fp32 over the models")
    print("| benchmark | max abs Δ (all) | mean Δ (all) | fp32 half-interval (all, largest) | max abs Δ (any query "
          "language) | rows | guard (all ≤ 0.005) |\n|---|---|---|---|---|---|---|")
    for bench, d_all, mean_all, half, d_any, n in rows:
        print(f"| {bench} | {d_all:.4f} | {mean_all:+.4f} | {half:.3f} | {d_any:.4f} | {n} | "
              f"{'holds' if d_all <= BOUND else 'FAILS'} |")
    write_rows(home, [Row("precision_guard", f"max_abs_delta_ndcg@10:{r[0]}", r[1], BOUND) for r in rows])
    return 0 if all(r[1] <= BOUND for r in rows) else 1

if __name__ == "__main__":
    sys.exit(main())
