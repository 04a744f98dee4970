"""Peak resident memory of each step of ``full_mimo`` on the ``smoke`` profile (``--rss``).

Each asset is materialised on its own, in topological order, by
``dagster asset materialize -m mimo_pipeline.definitions --select <key>`` in a child
process (that command runs the step in process), against a
scratch ``MIMO_HOME`` and ``DAGSTER_HOME``; the inputs of a step are the handles its
upstream steps left in ``MIMO_HOME/manifests`` (`resources.ArtifactIOManager`). The
figure is the child's ``ru_maxrss`` from ``os.wait4``: the peak RSS of that process
(and of any process it waited for), read by the kernel, so nothing is sampled or missed.
A ``baseline`` row is the same measurement for a child that only imports
``mimo_pipeline.definitions``: the part of every figure that is Dagster and the
libraries, not the step.

The scratch home links ``catalog/`` to the real ``MIMO_HOME/catalog`` so the student is
not converted again (``student_base`` then measures a reuse). ``teacher_model`` is an
observable source asset: it is observed, not materialised, and has no row. The
default profile's steps are much larger (5× the corpus, 15× the training steps);
these figures show which steps dominate, not the default run's peak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import log

STEPS = ("parallel_corpus", "retrieval_pairs", "mlir_benchmarks", "student_base", "teacher_embeddings",
         "stage1_checkpoint", "stage2_checkpoint", "baseline_checkpoints", "mlir_eval", "au_analysis")


def _run(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit status, peak RSS in MB, seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def peak_rss_smoke(home: Path, *, steps: tuple[str, ...] = STEPS, keep: bool = False) -> list[dict]:
    """One row per step: ``{"step", "peak_rss_mb", "seconds", "ok"}``, baseline first."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    mimo_home, dagster_home = scratch / "home", scratch / "dagster_home"
    mimo_home.mkdir()
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").touch()
    if (home / "catalog").exists():
        (mimo_home / "catalog").symlink_to((home / "catalog").resolve(), target_is_directory=True)
    env = {**os.environ, "MIMO_PROFILE": "smoke", "MIMO_HOME": str(mimo_home), "DAGSTER_HOME": str(dagster_home)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    log_path = scratch / "rss.log"
    rows = []
    try:
        rc, mb, s = _run([sys.executable, "-c", "import mimo_pipeline.definitions"], env, log_path)
        rows.append({"step": "baseline (import definitions)", "peak_rss_mb": mb, "seconds": s, "ok": rc == 0})
        log(f"rss baseline: {mb:.0f} MB")
        for step in steps:
            rc, mb, s = _run([dagster, "asset", "materialize", "-m", "mimo_pipeline.definitions", "--select", step],
                             env, log_path)
            rows.append({"step": step, "peak_rss_mb": mb, "seconds": s, "ok": rc == 0})
            log(f"rss {step}: {mb:.0f} MB in {s:.0f}s{'' if rc == 0 else f' (FAILED, exit {rc}; see {log_path})'}")
            if rc != 0:
                keep = True
                break
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return rows


def format_rss(rows: list[dict]) -> str:
    w = max(len(r["step"]) for r in rows)
    lines = [f"{'step (smoke profile)'.ljust(w)}  peak RSS MB  seconds", "-" * w + "  -----------  -------"]
    lines += [f"{r['step'].ljust(w)}  {r['peak_rss_mb']:11.0f}  {r['seconds']:7.1f}{'' if r['ok'] else '  FAILED'}"
              for r in rows]
    return "\n".join(lines)


def write_rss(home: Path, rows: list[dict]) -> None:
    """Append to ``bench_rss(step, peak_rss_mb, seconds, ok, created_at)`` in ``mimo.duckdb``."""
    from mimo_pipeline.storage import ResultsDB

    db = ResultsDB(Path(home) / "mimo.duckdb")
    with db.connect() as con:
        con.execute("CREATE TABLE IF NOT EXISTS bench_rss (step VARCHAR, peak_rss_mb DOUBLE, seconds DOUBLE, "
                    "ok BOOLEAN, created_at TIMESTAMP)")
        con.executemany("INSERT INTO bench_rss VALUES (?, ?, ?, ?, now()::TIMESTAMP)",
                        [(r["step"], r["peak_rss_mb"], r["seconds"], r["ok"]) for r in rows])
