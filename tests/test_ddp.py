"""Data-parallel Stage 1 under torchrun (2 CPU processes, gloo) equals the 1-process run.

Same global batch, same seed, dropout off: distillation is a per-row mean, so the mean
of the two shards' gradients is the one-process gradient and the trained weights agree
to float rounding.
"""

import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from mimo_pipeline.embedding_cache import CacheReport, EmbeddingCache, text_key
from mimo_pipeline.stages import StageConfig, train_stage1
from mimo_pipeline.student import ModelCheckpoint
from mimo_pipeline.teacher import TeacherEmbeddings
from mimo_pipeline.training import TrainConfig
from tests.conftest import REPO, build_tiny_bert

EN = [f"verse {i} of the law and the prophets number {i % 7}" for i in range(40)]
X = [" ".join(f"{w}_x" for w in s.split()) for s in EN]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model = build_tiny_bert(root / "student", EN + X, dropout=0.0)
    corpus = root / "corpus" / "parallel.parquet"
    corpus.parent.mkdir()
    pq.write_table(pa.table({"text": X, "en": EN, "split": ["train"] * len(EN), "lang": ["xx"] * len(EN)}), corpus)
    cache = EmbeddingCache(root / "teacher_cache", "tinyteacher", dim=16)
    cache.put([text_key(t) for t in EN], np.random.default_rng(0).normal(size=(len(EN), 16)).astype(np.float32))
    teacher = TeacherEmbeddings(str(root / "teacher_cache"), "tiny", "", "tinyteacher", 16, False,
                                CacheReport(str(cache.dir), "tinyteacher", 16, len(EN), len(EN), 0, 0.0, len(EN), 0))
    student = ModelCheckpoint("base_student", str(model), "tinystudent", "tiny", 32, {})
    cfg = StageConfig(TrainConfig(steps=6, batch_size=8, lr=1e-3, max_length=32, seed=3, checkpoint_every=3,
                                  log_every=1), projection_init="random")
    return root, student, corpus, teacher, cfg


def test_two_processes_match_one(setup):
    root, student, corpus, teacher, cfg = setup
    one = train_stage1(student, corpus, teacher, cfg, root / "models_1proc")
    job = root / "job.pkl"
    job.write_bytes(pickle.dumps({"function": "train_stage1", "result": str(root / "result.pkl"),
                                  "args": (student, str(corpus), teacher, cfg, str(root / "models_2proc"))}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "assets.ddp_worker", str(job)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = pickle.loads((root / "result.pkl").read_bytes())
    assert two.steps == one.steps == 6
    w1 = load_file(f"{one.checkpoint.path}/model.safetensors")
    w2 = load_file(f"{two.checkpoint.path}/model.safetensors")
    base = load_file(f"{student.path}/model.safetensors")
    changed = [k for k in w1 if not torch.equal(w1[k], base[k])]
    assert changed, "training changed nothing"
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=2e-5, rtol=1e-4), k
    losses1 = [h["loss"] for h in one.history]
    losses2 = [h["loss"] for h in two.history]
    assert np.allclose(losses1, losses2, rtol=1e-4)
