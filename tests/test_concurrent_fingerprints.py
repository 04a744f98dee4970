"""Two processes on one MIMO_HOME build one fingerprint once (issue 16 item 6, the cheap half).

Real subprocesses, started together behind a barrier (each says it is ready, then waits for a
``go`` file), on what two concurrent `full_mimo` runs share:

- the embedding / teacher cache (`embedding_cache.fill_cache` and `fill_cache_stream`): the two
  fill one cache folder with the same texts; a per-folder file lock makes the second wait (a log
  line says so) and then find the vectors: every text is encoded once, both succeed, the cache
  reads;
- training (`stages.train_stage2` on a tiny random BERT, `stages._training_lock`): the two train
  one fingerprint; one trains, the other waits (a log line) and reuses the checkpoint
  (``reused=True``), and the checkpoint is intact: nothing of the trainer's was removed.

The full version (two smoke `full_mimo` runs together, three times) is too slow for `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

DIM = 8
TEXTS = [f"sentence number {i} of the shared cache" for i in range(240)]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def expected_vector(text: str) -> np.ndarray:
    import hashlib

    seed = int(hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), 16)
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def run_together(tmp: Path, code: str, args_per_process: list[list[str]], timeout: float = 300):
    """Start one ``python -c code`` per argument list; each gets ``ready`` and ``go`` paths as its
    first two arguments, touches ``ready`` after its imports, then waits for ``go``. Returns
    ``[(returncode, log text)]``."""
    procs, logs = [], []
    go = tmp / "go"
    for i, args in enumerate(args_per_process):
        log = open(tmp / f"proc{i}.log", "w")
        logs.append(tmp / f"proc{i}.log")
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(tmp / f"ready{i}"), str(go), *args],
                                      cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.monotonic() + timeout
    try:
        while not all((tmp / f"ready{i}").exists() for i in range(len(procs))):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        go.touch()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, path.read_text()) for p, path in zip(procs, logs)]


# --------------------------------------------------------------------------- the embedding cache

FILL = r"""
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
import numpy as np
from mimo_pipeline.embedding_cache import EmbeddingCache, fill_cache, fill_cache_stream, text_key
from tests.test_concurrent_fingerprints import TEXTS, DIM, expected_vector
ready, go, root, out, mode = sys.argv[1:6]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
encoded = []
def encode(batch):
    time.sleep(0.4)  # a slow model: the two processes overlap
    encoded.extend(batch)
    return np.stack([expected_vector(t) for t in batch])
cache = EmbeddingCache(root, "fp", dim=DIM, model="fake")
if mode == "stream":
    report = fill_cache_stream(cache, (TEXTS[i:i + 40] for i in range(0, len(TEXTS), 40)), encode, chunk_size=40)
else:
    report = fill_cache(cache, TEXTS, encode, chunk_size=40)
got = cache.get([text_key(t) for t in TEXTS])
assert np.array_equal(got, np.stack([expected_vector(t) for t in TEXTS]))
json.dump({"misses": report.misses, "hits": report.hits, "encoded": len(encoded)}, open(out, "w"))
"""


@pytest.mark.parametrize("mode", ["list", "stream"])
def test_two_processes_filling_one_cache_encode_each_text_once(tmp_path, mode):
    from mimo_pipeline.embedding_cache import EmbeddingCache, text_key

    root = tmp_path / "cache"
    results = run_together(tmp_path, FILL, [[str(root), str(tmp_path / f"out{i}.json"), mode] for i in range(2)])
    for i, (rc, log) in enumerate(results):
        assert rc == 0, f"process {i} failed:\n{log[-3000:]}"
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert sum(o["encoded"] for o in outs) == len(TEXTS), outs  # once, not twice
    assert sorted(o["misses"] for o in outs) == [0, len(TEXTS)]
    waited = [log for (_, log), o in zip(results, outs) if o["misses"] == 0]
    assert "another process is filling it; waiting" in waited[0], waited[0][-2000:]
    cache = EmbeddingCache(root, "fp", dim=DIM)
    assert len(cache) == len(TEXTS)
    assert np.array_equal(cache.get([text_key(t) for t in TEXTS]), np.stack([expected_vector(t) for t in TEXTS]))
    assert not [p for p in (root / "fp").iterdir() if p.name.endswith(".tmp") or ".corrupt-" in p.name]


# --------------------------------------------------------------------------- training

TRAIN = r"""
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
from pathlib import Path
from mimo_pipeline.stages import train_stage2
from tests.test_reliability import Ctx, FakeTeacher, stage_cfg
ready, go, tmp, model_dir, pairs, projection, out = sys.argv[1:8]
ctx = Ctx(Path(tmp), Path(model_dir), FakeTeacher(armed=False))
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
def slow(record):
    time.sleep(1.0)  # a slow step: the other process arrives while this one trains
res = train_stage2(ctx.student(), projection, pairs, ctx.teacher, stage_cfg(steps=4), Path(tmp) / "models",
                   on_log=slow)
json.dump({"reused": res.reused, "path": res.checkpoint.path, "steps": res.steps,
           "fingerprint": res.checkpoint.fingerprint}, open(out, "w"))
"""


def test_two_processes_training_one_fingerprint_train_it_once(tmp_path):
    from mimo_pipeline.stages import checkpoint_ready
    from tests.test_crash import TEACHER_DIM, tiny_model_dir
    from tests.test_reliability import Ctx, FakeTeacher

    ctx = Ctx(tmp_path, tiny_model_dir(tmp_path / "tiny_bert"), FakeTeacher(armed=False))
    pairs, projection = ctx.pairs(), ctx.projection(32, TEACHER_DIM)
    results = run_together(tmp_path, TRAIN, [[str(tmp_path), str(ctx.model_dir), str(pairs), str(projection),
                                               str(tmp_path / f"out{i}.json")] for i in range(2)])
    for i, (rc, log) in enumerate(results):
        assert rc == 0, f"process {i} failed:\n{log[-3000:]}"
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert sorted(o["reused"] for o in outs) == [False, True], outs
    assert outs[0]["path"] == outs[1]["path"] and outs[0]["steps"] == outs[1]["steps"] == 4
    waited = next(log for (_, log), o in zip(results, outs) if o["reused"])
    assert "another process is training this fingerprint; waiting for it" in waited, waited[-2000:]
    trained = next(log for (_, log), o in zip(results, outs) if not o["reused"])
    assert "training 4 steps" in trained and "training 4 steps" not in waited
    models = tmp_path / "models" / "mimo"
    assert checkpoint_ready(tmp_path / "models", "mimo", outs[0]["fingerprint"])  # every file matches its hash
    assert not [p.name for p in models.iterdir() if p.name.startswith(".work-") or ".corrupt-" in p.name]


# --------------------------------------------------------------------------- new stores, created by two runs at once

NEW_STORES = r"""
import os, sys, time
ready, go, home, dagster_home = sys.argv[1:5]
os.environ["DAGSTER_HOME"] = dagster_home
from mimo_pipeline.definitions import _instance
from mimo_pipeline.tracking import Tracker
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
instance = _instance()
print("runs", len(instance.get_runs(limit=5)))
print("experiment", Tracker(home).experiment_id())
"""


@pytest.mark.parametrize("attempt", [1, 2])
def test_two_runs_create_a_new_dagster_instance_and_mlflow_store_together(tmp_path, attempt):
    """Found by the slow test of two `full_mimo` runs at once: on a new DAGSTER_HOME and MIMO_HOME
    both processes created the SQLite tables ("table snapshots already exists", and MLflow's
    "table _alembic_tmp_model_versions already exists")."""
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("")
    results = run_together(tmp_path, NEW_STORES, [[str(home), str(dagster_home)]] * 2, timeout=240)
    for code, text in results:
        assert code == 0, text[-4000:]
    experiments = {line.split()[-1] for _, text in results for line in text.splitlines()
                   if line.startswith("experiment ")}
    assert len(experiments) == 1, f"the two processes made different experiments: {experiments}"
