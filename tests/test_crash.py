"""Crash safety: processes killed with SIGKILL mid-run leave resumable, readable state.

- a training run (tiny random BERT, `training.train`) killed between two state writes:
  the state file is complete, no temporary file survives the re-run, and the re-run
  resumes from the saved step and ends bitwise equal to an uninterrupted run;
- an embedding-cache build (`embedding_cache.fill_cache`) killed mid-way: every shard
  on disk loads, and the re-run encodes only the texts that are missing.

The killed processes are real subprocesses (``SIGKILL`` runs no ``finally`` and no
``atexit``); `tiny_model_dir` is also used by ``test_reliability``.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import build_tiny_bert
from tests.test_training import EN

REPO = Path(__file__).resolve().parents[1]

X = [" ".join(f"{w}_x" for w in s.split()) for s in EN]
TEACHER_DIM = 16
STEPS, CHECKPOINT_EVERY = 30, 2


def tiny_model_dir(d: Path) -> Path:
    """A sentence-transformers folder: random 2-layer 32-d BERT, WordLevel tokenizer, e5 prompts."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    return build_tiny_bert(d, EN + X)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# --------------------------------------------------------------------------- training


def run_training(model_dir: str, work_dir: str, sleep_s: float = 0.0):
    """Stage-1 distillation (model + projection) on the tiny model; the same in every process."""
    import torch

    from mimo_pipeline.losses import Projection
    from mimo_pipeline.training import DistillBatch, TrainableEncoder, TrainConfig, stage1_objective, train

    torch.set_num_threads(1)
    teacher = torch.randn(len(EN), TEACHER_DIM, generator=torch.Generator().manual_seed(0))

    def batch_at(i: int) -> DistillBatch:
        if sleep_s:
            time.sleep(sleep_s)  # slow enough to be killed between two state writes
        rows = [(i * 4 + k) % len(EN) for k in range(4)]
        return DistillBatch([X[r] for r in rows], [EN[r] for r in rows], teacher[rows])

    config = TrainConfig(steps=STEPS, batch_size=4, lr=1e-3, max_length=32, seed=0, device="cpu",
                         checkpoint_every=CHECKPOINT_EVERY, log_every=1)
    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    result = train(enc, stage1_objective(proj), batch_at, config, work_dir, extra_params=[proj])
    weights = {**{f"m.{k}": v.clone() for k, v in enc.state_dict().items()},
               **{f"p.{k}": v.clone() for k, v in proj.state_dict().items()}}
    return result, weights


def _training_main() -> None:
    """Subprocess entry: once the file ``go`` exists, ``run_training(model_dir, work_dir, sleep)``;
    weights to a file, the result as JSON. (Started early, it imports while the parent works.)"""
    import torch

    from mimo_pipeline import training  # noqa: F401 - the slow imports, before waiting

    model_dir, work_dir, out, sleep_s, go = sys.argv[1:6]
    deadline = time.monotonic() + 600
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("never told to start")
        time.sleep(0.02)
    result, weights = run_training(model_dir, work_dir, float(sleep_s))
    torch.save(weights, out)
    print(json.dumps({"resumed_from_step": result.resumed_from_step, "steps": result.steps}), flush=True)


def _spawn_training(model_dir, work, out, sleep_s, log_path, go):
    code = "from tests.test_crash import _training_main; _training_main()"
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-c", code, str(model_dir), str(work), str(out), str(sleep_s),
                                 str(go)], cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _load_state(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the file vanished between exists() and open()? never with os.replace
        return None


def _tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def _kill_after_a_save(proc: subprocess.Popen, state_path: Path, min_step: int, timeout: float = 120.0) -> int:
    """SIGKILL ``proc`` just after it has written a state at step >= ``min_step``; that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the training subprocess ended before it could be killed"
        if state_path.exists():
            state = _load_state(state_path)
            if state is not None and state["step"] >= min_step:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return state["step"]
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise AssertionError(f"no state at step >= {min_step} within {timeout} s")


def test_training_killed_mid_run_resumes_to_the_uninterrupted_weights(model_dir, tmp_path):
    import torch

    from mimo_pipeline.training import STATE_DIR, STATE_FILE

    work = tmp_path / "work"
    state_path = work / STATE_DIR / STATE_FILE
    go_kill, go_resume = tmp_path / "go-killed", tmp_path / "go-resumed"
    # both processes import torch/transformers now, while this one trains the reference
    victim = _spawn_training(model_dir, work, tmp_path / "killed.pt", 0.1, tmp_path / "killed.log", go_kill)
    resumer = _spawn_training(model_dir, work, tmp_path / "resumed.pt", 0.0, tmp_path / "resumed.log", go_resume)
    try:
        threads = torch.get_num_threads()
        try:
            full, want = run_training(str(model_dir), str(tmp_path / "uninterrupted"))
        finally:
            torch.set_num_threads(threads)
        assert full.steps == STEPS and full.resumed_from_step == 0

        go_kill.touch()
        seen_step = _kill_after_a_save(victim, state_path, min_step=4)
        assert victim.returncode == -signal.SIGKILL, (victim.returncode,
                                                      (tmp_path / "killed.log").read_text()[-3000:])
        assert not (tmp_path / "killed.pt").exists()  # it never finished

        # the state on disk is complete and consistent
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        assert {"format", "step", "config", "model", "extras", "optimizer", "scheduler", "rng", "history",
                "last_terms", "window", "window_n"} <= set(state)
        saved = state["step"]
        assert seen_step <= saved < STEPS and saved % CHECKPOINT_EVERY == 0
        assert [h["step"] for h in state["history"]] == list(range(1, saved + 1))
        assert state["model"] and all(torch.isfinite(t).all() for t in state["model"].values())
        assert state["extras"][0].keys() == {"linear.weight", "linear.bias"}
        opt = state["optimizer"]
        assert sum(len(g["params"]) for g in opt["param_groups"]) == len(state["model"]) + 2
        assert opt["state"] and all(int(s["step"]) == saved for s in opt["state"].values())
        # only the state write in flight at the kill (if any) may have left a temporary file
        leftovers = _tmp_files(work)
        assert all(p.parent == state_path.parent and p.name.startswith(f".{STATE_FILE}.") for p in leftovers), \
            leftovers

        go_resume.touch()
        assert resumer.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    finally:
        for proc in (victim, resumer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = json.loads((tmp_path / "resumed.log").read_text().strip().splitlines()[-1])
    assert report == {"resumed_from_step": saved, "steps": STEPS}
    assert _tmp_files(work) == []
    got = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, differ
    final = torch.load(state_path, map_location="cpu", weights_only=True)
    assert final["step"] == STEPS and len(final["history"]) == STEPS


def test_stale_state_temp_file_is_swept_on_resume(model_dir, tmp_path):
    """A temp file from a state write cut short (what SIGKILL during `_save_state` leaves) is removed."""
    import torch

    from mimo_pipeline.training import STATE_DIR, STATE_FILE

    work = tmp_path / "work"
    threads = torch.get_num_threads()
    try:
        run_training(str(model_dir), str(work))
        stale = work / STATE_DIR / f".{STATE_FILE}.abc123.tmp"
        stale.write_bytes(b"half a torch.save")
        result, _ = run_training(str(model_dir), str(work))
    finally:
        torch.set_num_threads(threads)
    assert result.resumed_from_step == STEPS  # nothing left to do
    assert not stale.exists() and _tmp_files(work) == []


# --------------------------------------------------------------------------- embedding cache


def fake_vector(text: str):
    """A deterministic 8-d vector of a text (stands in for a model)."""
    import hashlib

    import numpy as np

    return np.frombuffer(hashlib.blake2b(text.encode(), digest_size=8).digest(), np.uint8).astype(np.float32) / 255


CACHE_TEXTS = [f"sentence number {i}" for i in range(40)]
CACHE_SCRIPT = inspect.getsource(fake_vector) + '''
import sys, time
import numpy as np
from mimo_pipeline.embedding_cache import EmbeddingCache, fill_cache

root, calls = sys.argv[1], sys.argv[2]
texts = [f"sentence number {i}" for i in range(40)]

def encode(batch):
    time.sleep(0.15)
    with open(calls, "a") as f:
        f.write(f"{len(batch)}\\n")
    return np.stack([fake_vector(t) for t in batch])

fill_cache(EmbeddingCache(root, "fp", dim=8), texts, encode, chunk_size=4)
print("done", flush=True)
'''


def test_cache_build_killed_mid_way_stays_readable_and_resumes(tmp_path):
    from mimo_pipeline.embedding_cache import EmbeddingCache, fill_cache, text_key

    root, calls = tmp_path / "cache", tmp_path / "calls.txt"
    proc = subprocess.Popen([sys.executable, "-c", CACHE_SCRIPT, str(root), str(calls)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(list((root / "fp").glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard written within 60 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # every shard on disk loads and holds whole chunks; a shard in flight is only a hidden temp file
    shards = sorted((root / "fp").glob("part-*.parquet"))
    for shard in shards:
        t = pq.read_table(shard)
        assert t.num_rows == 4 and t.column_names == ["text_hash", "embedding"]
    assert all(p.name.startswith(".part-") for p in _tmp_files(root)), _tmp_files(root)
    cache = EmbeddingCache(root, "fp", dim=8)
    cached = len(cache)
    assert cached == 4 * len(shards) and 0 < cached < len(CACHE_TEXTS)
    before = {t for t in CACHE_TEXTS if text_key(t) in cache}
    assert len(before) == cached

    encoded: list[str] = []

    def encode(batch):
        encoded.extend(batch)
        return np.stack([fake_vector(t) for t in batch])

    report = fill_cache(EmbeddingCache(root, "fp", dim=8), CACHE_TEXTS, encode, chunk_size=4)
    assert sorted(encoded) == sorted(set(CACHE_TEXTS) - before)  # only the missing texts, each once
    assert report.hits == cached and report.misses == len(CACHE_TEXTS) - cached
    assert report.cache_rows == len(CACHE_TEXTS)
    got = EmbeddingCache(root, "fp", dim=8).get([text_key(t) for t in CACHE_TEXTS])
    np.testing.assert_array_equal(got, np.stack([fake_vector(t) for t in CACHE_TEXTS]))
