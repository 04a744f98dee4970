"""Two whole `full_mimo` runs on one MIMO_HOME at once, three times over (issue 16 item 6).

Each round starts two ``python -m mimo_pipeline.definitions full_mimo`` processes (what
`make run` runs) on the smoke profile together, on a fresh MIMO_HOME and one DAGSTER_HOME.
Both must succeed, each model must be trained by exactly one of them (the other logs that it
waits for the fingerprint and then reuses the checkpoint), the teacher cache must be encoded once
(the misses of the two runs add up to the rows in the cache) and every DuckDB checkpoint row must
point at a folder that exists.

About 20 minutes on 2 cores, so it is marked ``slow`` and left out of `make test`:

    .venv/bin/python -m pytest -m slow tests/test_concurrent_runs.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO

TRAINED = re.compile(r"\b([\w.@]+): training \d+ steps of \d+ rows")
WAITED = re.compile(r"another process is (training this fingerprint|filling it)")
TEACHER_MISSES = re.compile(r"teacher cache \S+: \d+ hits, (\d+) misses")


def _start(env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "mimo_pipeline.definitions", "full_mimo"], cwd=REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("round_", [1, 2, 3])
def test_two_full_mimo_runs_at_once(round_, tmp_path, repo_env):
    import duckdb
    import pyarrow.parquet as pq

    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("")
    env = {**repo_env, "MIMO_HOME": str(home), "MIMO_PROFILE": "smoke", "DAGSTER_HOME": str(dagster_home),
           "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / "run_a.log", tmp_path / "run_b.log"]
    t0 = time.perf_counter()
    procs = [_start(env, log) for log in logs]
    codes = [p.wait(timeout=3000) for p in procs]
    sys.stderr.write(f"round {round_}: two full_mimo runs together in {time.perf_counter() - t0:.0f}s\n")
    texts = [log.read_text() for log in logs]
    for log, code, text in zip(logs, codes, texts):
        assert code == 0, f"{log.name} failed (exit {code}):\n{text[-6000:]}"

    trained = Counter(m.group(1) for text in texts for m in TRAINED.finditer(text))
    assert trained, "no training line in either log: the runs trained nothing"
    twice = {name: n for name, n in trained.items() if n != 1}
    assert not twice, f"trained more than once across the two runs: {twice}"

    con = duckdb.connect(str(home / "mimo.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT model, seed, path, dagster_run_id FROM checkpoints").fetchall()
    finally:
        con.close()
    assert len({r[3] for r in rows}) == 2, "both runs record their checkpoints"
    missing = [r for r in rows if not Path(r[2]).is_dir()]
    assert not missing, f"checkpoint rows pointing nowhere: {missing}"
    trained_models = {r[0] for r in rows if r[0] != "base_student"}
    assert trained_models <= {name.split("@")[0] for name in trained} | {"use_m", "teacher_en"}, (
        f"checkpoint rows of models neither run trained: {trained_models - set(trained)}")

    keys = [k for f in sorted((home / "teacher_cache").rglob("part-*.parquet"))
            for k in pq.read_table(f, columns=["text_hash"]).column("text_hash").to_pylist()]
    assert keys and len(keys) == len(set(keys)), (
        f"the teacher cache holds {len(keys) - len(set(keys))} texts twice: both runs encoded them")
    misses = sum(int(m.group(1)) for text in texts for m in TEACHER_MISSES.finditer(text))
    assert misses == len(keys), f"the two runs encoded {misses} texts for a cache of {len(keys)}"
    if not any(WAITED.search(text) for text in texts):
        sys.stderr.write(f"round {round_}: the runs never met on a lock (one finished a step before the other "
                         "reached it)\n")
