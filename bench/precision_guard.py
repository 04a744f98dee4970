"""The bf16 quality guard (Speed issue): the same checkpoints evaluated in bf16 and in fp32.

    make run                                           # the default, MIMO_HOME=./data
    MIMO_HOME=./data DAGSTER_HOME=./.dagster_home .venv/bin/python -m bench.precision_guard

Materialises `mlir_eval` alone twice, on the checkpoints the last `make run` left (its upstream
assets are read, not rebuilt): once with ``precision: bf16`` (the vectors are in the embedding
cache already on bf16 hardware) and once with ``precision: fp32`` (every text encoded again in
fp32, about as long as `make run`'s `mlir_eval` times the bf16 speed-up). Then it joins the two
runs' `eval_metrics` rows (same model, seed, benchmark, query language and metric) and prints,
per benchmark, the largest |bf16 − fp32| of nDCG@10 over models and query languages, and of
every metric. The guard holds when every benchmark's nDCG@10 moves by at most 0.005.
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


def compare(db_path, bf16_run: str, fp32_run: str) -> list[tuple[str, float, float, int]]:
    """``[(benchmark, max |Δ| nDCG@10, max |Δ| any metric in [0, 1], rows joined)]``."""
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute("""
            SELECT a.benchmark,
                   max(abs(a.value - b.value)) FILTER (WHERE a.metric = 'ndcg@10'),
                   max(abs(a.value - b.value)) FILTER (WHERE a.metric <> 'mrc@10'),
                   count(*)
            FROM eval_metrics a JOIN eval_metrics b
              ON a.model = b.model AND a.seed IS NOT DISTINCT FROM b.seed AND a.benchmark = b.benchmark
             AND a.task = b.task AND a.query_lang = b.query_lang AND a.metric = b.metric
            WHERE a.dagster_run_id = ? AND b.dagster_run_id = ?
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
    print(f"bf16 run {bf16_run} against fp32 run {fp32_run}: largest |bf16 − fp32| over models and query languages")
    print("| benchmark | ndcg@10 | any metric in [0, 1] | rows | guard (≤ 0.005) |\n|---|---|---|---|---|")
    for bench, d_ndcg, d_any, n in rows:
        print(f"| {bench} | {d_ndcg:.4f} | {d_any:.4f} | {n} | {'holds' if d_ndcg <= BOUND else 'FAILS'} |")
    write_rows(home, [Row("precision_guard", f"max_abs_delta_ndcg@10:{b}", d, BOUND) for b, d, _, _ in rows])
    return 0 if all(d <= BOUND for _, d, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
