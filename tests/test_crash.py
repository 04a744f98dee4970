"""Crash safety: processes killed with SIGKILL mid-run leave resumable, readable state.

- a training run (tiny random BERT, gradient-cached MIMO loss on `trainer.fit`) killed
  after a trainer checkpoint: the re-run resumes from the last complete checkpoint and
  ends bitwise equal to an uninterrupted run; a half-written checkpoint is swept;
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

from tests.conftest import build_tiny_bert, cached_teacher, tiny_student, torch_threads
from tests.test_training import EN

REPO = Path(__file__).resolve().parents[1]

X = [" ".join(f"{w}_x" for w in s.split()) for s in EN]
TEACHER_DIM = 16
STEPS, CHECKPOINT_EVERY = 12, 2


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
    """MIMO's Stage 2 (model + projection W, gradient-cached) on the tiny model, with
    `trainer.fit`; the same in every process. ``sleep_s`` per step makes it killable."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from mimo_pipeline.losses import CachedMimoLoss, make_projection
    from mimo_pipeline.trainer import TrainConfig, fit, load_student

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    t_q, t_p = (torch.randn(len(EN), TEACHER_DIM, generator=g).numpy() for _ in range(2))
    idx = [i % len(EN) for i in range(STEPS * 4)]
    data = Dataset.from_dict({"anchor": [X[i] for i in idx], "positive": [EN[(i + 1) % len(EN)] for i in idx],
                              "label": [np.stack([t_q[i], t_p[(i + 1) % len(EN)]]).tolist() for i in idx]})

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(sleep_s)

    config = TrainConfig(steps=STEPS, batch_size=4, mini_batch_size=2, lr=1e-3, max_length=32, seed=0,
                         device="cpu", checkpoint_every=CHECKPOINT_EVERY, log_every=1,
                         freeze_word_embeddings=False)
    model = load_student(model_dir, config)
    loss = CachedMimoLoss(model, make_projection(32, TEACHER_DIM, seed=0), lam=0.5)
    result = fit(model, loss, data, config, work_dir, prompts={"anchor": "query: ", "positive": "passage: "},
                 callbacks=[Slow()] if sleep_s else None)
    weights = {**{f"m.{k}": v.clone() for k, v in model.state_dict().items()},
               **{f"p.{k}": v.detach().clone() for k, v in loss.projection.state_dict().items()}}
    return result, weights


def _training_main() -> None:
    """Subprocess entry: once the file ``go`` exists, ``run_training(model_dir, work_dir, sleep)``;
    weights to a file, the result as JSON. (Started early, it imports while the parent works.)"""
    import torch

    from mimo_pipeline import trainer  # noqa: F401 - the slow imports, before waiting
    import sentence_transformers  # noqa: F401

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


def _tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def _complete_step(work: Path) -> int:
    """The last complete trainer checkpoint's step under ``work`` (at any depth: a stage's
    ``.work-<fingerprint>`` folder included); 0 if none. ``os.walk`` skips folders the trainer
    removes while we look (its checkpoint rotation); ``Path.rglob`` raised on them."""
    steps = [int(Path(d).name.split("-")[-1]) for d, _, files in os.walk(work)
             if Path(d).name.startswith("checkpoint-") and "trainer_state.json" in files]
    return max(steps, default=0)


def _kill_after_a_save(proc: subprocess.Popen, work: Path, min_step: int, timeout: float = 180.0) -> int:
    """SIGKILL ``proc`` once a complete trainer checkpoint at step >= ``min_step`` exists; that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the training subprocess ended before it could be killed"
        step = _complete_step(work)
        if step >= min_step:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return step
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise AssertionError(f"no trainer checkpoint at step >= {min_step} within {timeout} s")


def test_training_killed_mid_run_resumes_to_the_uninterrupted_weights(model_dir, tmp_path):
    """SIGKILL a gradient-cached MIMO run (dropout on) after a trainer checkpoint; the re-run
    resumes from the last complete checkpoint and ends bitwise equal to an uninterrupted run,
    W included (the trainer checkpoint carries the loss' own parameters)."""
    import torch

    from mimo_pipeline.trainer import LOSS_PARAMS_FILE

    work = tmp_path / "work"
    go_kill, go_resume = tmp_path / "go-killed", tmp_path / "go-resumed"
    # both processes import torch/transformers now, while this one trains the reference
    victim = _spawn_training(model_dir, work, tmp_path / "killed.pt", 0.3, tmp_path / "killed.log", go_kill)
    resumer = _spawn_training(model_dir, work, tmp_path / "resumed.pt", 0.0, tmp_path / "resumed.log", go_resume)
    try:
        with torch_threads():  # run_training sets one thread
            full, want = run_training(str(model_dir), str(tmp_path / "uninterrupted"))
        assert full.steps == STEPS and full.resumed_from_step == 0

        go_kill.touch()
        seen_step = _kill_after_a_save(victim, work, min_step=4)
        assert victim.returncode == -signal.SIGKILL, (victim.returncode,
                                                      (tmp_path / "killed.log").read_text()[-3000:])
        assert not (tmp_path / "killed.pt").exists()  # it never finished
        saved = _complete_step(work)
        assert seen_step <= saved < STEPS and saved % CHECKPOINT_EVERY == 0
        assert (work / f"checkpoint-{saved}" / LOSS_PARAMS_FILE).exists()

        go_resume.touch()
        assert resumer.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    finally:
        for proc in (victim, resumer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = json.loads((tmp_path / "resumed.log").read_text().strip().splitlines()[-1])
    assert report["steps"] == STEPS and report["resumed_from_step"] >= saved
    got = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, differ


def test_a_half_written_trainer_checkpoint_is_swept_on_resume(model_dir, tmp_path):
    """What SIGKILL during a trainer save leaves (a checkpoint folder without its trainer
    state) is removed, and the run resumes from the complete one before it. (The trainer
    state of the last step is never written: the finished model is, by the caller.)"""
    import shutil

    work = tmp_path / "work"
    with torch_threads():  # run_training sets one thread
        run_training(str(model_dir), str(work))
        last = STEPS - CHECKPOINT_EVERY
        assert _complete_step(work) == last and not (work / f"checkpoint-{STEPS}").exists()
        half = work / f"checkpoint-{STEPS + 2}"
        shutil.copytree(work / f"checkpoint-{last}", half)
        (half / "trainer_state.json").unlink()
        result, _ = run_training(str(model_dir), str(work))
    assert result.resumed_from_step == last
    assert not half.exists() and _tmp_files(work) == []


def stage_setup(root: Path) -> None:
    """What the training asset's library call reads: a student folder, a teacher cache and a pairs file."""
    import pyarrow as pa

    tiny_model_dir(root / "student")
    cached_teacher(root / "teacher", EN, np.random.default_rng(0).normal(size=(len(EN), TEACHER_DIM)))
    (root / "pairs").mkdir()
    n = len(EN)
    pq.write_table(pa.table({"q_a": X, "p_b": [EN[(i + 1) % n] for i in range(n)], "q_en": EN,
                             "p_en": [EN[(i + 1) % n] for i in range(n)]}), root / "pairs" / "pairs.parquet")


def run_stage2(root: str, models_dir: str, sleep_s: float = 0.0):
    """`stages.train_stage2`, what `stage2_checkpoint` calls (its `.work-<fingerprint>` folder, the
    fingerprint's lock, rows laid out from the pairs file, W, the checkpoint written at the end),
    with dropout on and a trainer checkpoint every 2 steps; ``sleep_s`` per step makes it killable."""
    import torch

    from mimo_pipeline.stages import StageConfig, train_stage2
    from mimo_pipeline.trainer import TrainConfig

    torch.set_num_threads(1)
    root = Path(root)
    teacher = cached_teacher(root / "teacher", dim=TEACHER_DIM)
    init = tiny_student(root / "student")
    train = TrainConfig(steps=STEPS, batch_size=4, mini_batch_size=2, lr=1e-3, max_length=32, seed=0, device="cpu",
                        checkpoint_every=CHECKPOINT_EVERY, log_every=1, freeze_word_embeddings=False)
    return train_stage2(init, None, root / "pairs" / "pairs.parquet", teacher, StageConfig(train, lam=0.5),
                        models_dir, on_log=lambda rec: time.sleep(sleep_s))


def _stage_main() -> None:
    """Subprocess entry: once ``go`` exists, ``run_stage2(root, models_dir, sleep)``; the result as JSON."""
    from mimo_pipeline import stages  # noqa: F401 - the slow imports, before waiting

    root, models_dir, sleep_s, go = sys.argv[1:5]
    deadline = time.monotonic() + 600
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("never told to start")
        time.sleep(0.02)
    trained = run_stage2(root, models_dir, float(sleep_s))
    print(json.dumps({"resumed_from_step": trained.resumed_from_step, "steps": trained.steps,
                      "path": trained.checkpoint.path, "projection": trained.projection_path}), flush=True)


def test_a_killed_stage2_asset_call_resumes_to_the_uninterrupted_checkpoint(tmp_path):
    """The training asset's own call (`stages.train_stage2`) SIGKILLed after a trainer checkpoint:
    re-run, it resumes in its `.work-<fingerprint>` folder from the last complete checkpoint, and the
    checkpoint folder it writes holds bitwise the weights and W of an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    stage_setup(tmp_path)
    code = "from tests.test_crash import _stage_main; _stage_main()"
    procs = {}
    for name, sleep_s in (("killed", 0.3), ("resumed", 0.0)):
        with open(tmp_path / f"{name}.log", "w") as log:
            procs[name] = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "models"),
                                            str(sleep_s), str(tmp_path / f"go-{name}")], cwd=REPO, env=_env(),
                                           stdout=log, stderr=subprocess.STDOUT)
    try:
        with torch_threads():  # run_stage2 sets one thread
            full = run_stage2(str(tmp_path), str(tmp_path / "uninterrupted"))
        (tmp_path / "go-killed").touch()
        _kill_after_a_save(procs["killed"], tmp_path / "models", min_step=4)
        saved = _complete_step(tmp_path / "models")
        assert 4 <= saved < STEPS and list((tmp_path / "models" / "mimo").glob(".work-*"))
        assert not list((tmp_path / "models" / "mimo").glob("*/modules.json"))  # no checkpoint folder yet
        (tmp_path / "go-resumed").touch()
        assert procs["resumed"].wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = json.loads((tmp_path / "resumed.log").read_text().strip().splitlines()[-1])
    assert report["resumed_from_step"] >= saved and report["steps"] == STEPS
    assert Path(report["path"]).name == Path(full.checkpoint.path).name  # the same fingerprint
    for got, want in ((f"{report['path']}/model.safetensors", f"{full.checkpoint.path}/model.safetensors"),
                      (report["projection"], full.projection_path)):
        a, b = load_file(got), load_file(want)
        differ = [k for k in b if not torch.equal(a[k], b[k])]
        assert a.keys() == b.keys() and not differ, differ
    assert not list((tmp_path / "models" / "mimo").glob(".work-*"))  # the spent trainer state is removed


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
