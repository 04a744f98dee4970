"""Data-parallel training under torchrun (2 CPU processes, gloo) equals the 1-process run.

Same global batch, same seed, dropout off. Stage 1's distillation is a per-row mean, so
averaged gradients equal the one-process gradient. For MIMO's Stage 2 the gradient-cached
loss gathers the other process' embeddings (with gradients), so each query still sees the
whole global batch as negatives and W's gradients are averaged like the model's: the
trained weights and W agree with the 1-process run to float rounding.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from mimo_pipeline.stages import StageConfig, train_stage1, train_stage2
from mimo_pipeline.trainer import TrainConfig
from tests.conftest import REPO, build_tiny_bert, cached_teacher, tiny_student

EN = [f"verse {i} of the law and the prophets number {i % 7}" for i in range(40)]
X = [" ".join(f"{w}_x" for w in s.split()) for s in EN]
Y = [" ".join(f"{w}_y" for w in s.split()) for s in EN]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model = build_tiny_bert(root / "student", EN + X + Y, dropout=0.0)
    corpus = root / "corpus" / "parallel.parquet"
    corpus.parent.mkdir()
    pq.write_table(pa.table({"text": X, "en": EN, "split": ["train"] * len(EN), "lang": ["xx"] * len(EN)}), corpus)
    pairs = root / "pairs" / "pairs.parquet"
    pairs.parent.mkdir()
    n = len(EN)
    pq.write_table(pa.table({"q_a": X, "p_b": [Y[(i + 3) % n] for i in range(n)], "q_en": EN,
                             "p_en": [EN[(i + 3) % n] for i in range(n)]}), pairs)
    teacher = cached_teacher(root / "teacher_cache", EN, np.random.default_rng(0).normal(size=(len(EN), 16)))
    student = tiny_student(model)
    train = TrainConfig(steps=4, batch_size=8, lr=1e-3, max_length=32, seed=3, checkpoint_every=0, log_every=1,
                        freeze_word_embeddings=False, device="cpu")
    return root, student, corpus, pairs, teacher, train


def _torchrun(root, function, args, name):
    job = root / f"{name}.pkl"
    job.write_bytes(pickle.dumps({"function": function, "result": str(root / f"{name}.result.pkl"), "args": args}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "resources.ddp_worker", str(job)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return pickle.loads((root / f"{name}.result.pkl").read_bytes())


def _same(one, two, base_path):
    assert two.steps == one.steps
    w1 = load_file(f"{one.checkpoint.path}/model.safetensors")
    w2 = load_file(f"{two.checkpoint.path}/model.safetensors")
    base = load_file(f"{base_path}/model.safetensors")
    assert [k for k in w1 if not torch.equal(w1[k], base[k])], "training changed nothing"
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=2e-5, rtol=1e-4), k
    p1, p2 = load_file(one.projection_path), load_file(two.projection_path)
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=2e-5, rtol=1e-4), k
    assert np.allclose([h["loss"] for h in one.history], [h["loss"] for h in two.history], rtol=1e-4)


def _through_pipes(function, args, world_size=2):
    """What a training asset with ``world_size: 2`` does: `resources.launcher.launch_distributed` inside
    a materialisation, torchrun launched by Dagster Pipes; what rank 0 returned and the run's log lines."""
    from dagster import AssetExecutionContext, DagsterInstance, MaterializeResult, asset, materialize

    from resources.launcher import launch_distributed

    got = {}

    @asset
    def ddp_training(context: AssetExecutionContext):
        got["trained"] = launch_distributed(context, function, args, world_size)
        return MaterializeResult(metadata={"steps": got["trained"].steps})  # as the training assets return

    instance = DagsterInstance.ephemeral()
    res = materialize([ddp_training], instance=instance)
    assert res.success
    return got["trained"], [e.user_message for e in instance.all_logs(res.run_id)]


def test_mimo_on_two_processes_matches_one(setup):
    """Stage 2 (mimo), launched the way a training asset with world_size 2 launches it (torchrun through
    Dagster Pipes), ends where the 1-process run with the same global batch ends."""
    root, student, corpus, pairs, teacher, train = setup
    cfg = StageConfig(train, lam=0.5)
    one = train_stage2(student, None, pairs, teacher, cfg, root / "m1")
    two, logs = _through_pipes("train_stage2", (student, None, str(pairs), teacher, cfg, str(root / "m2")))
    _same(one, two, student.path)
    assert any("launching train_stage2 on 2 processes" in m for m in logs)
    assert any("loss=" in m and "xlco=" in m for m in logs), "rank 0's training log did not reach the run (Pipes)"
    # the gathered negatives matter: 2 processes without gathering would see 4 rows each
    assert one.history[0]["xlco"] > np.log(5)


def test_stage1_on_two_processes_matches_one(setup):
    root, student, corpus, pairs, teacher, train = setup
    cfg = StageConfig(train, projection_init="random", english_share=0.0)
    one = train_stage1(student, corpus, teacher, cfg, root / "s1")
    two = _torchrun(root, "train_stage1", (student, str(corpus), teacher, cfg, str(root / "s2")), "stage1")
    _same(one, two, student.path)
