"""The training loop, objectives and checkpoints on a tiny random BERT (32-d, 2 layers)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from mimo_pipeline.checkpoint import PoolingSpec, read_pooling_spec, write_sentence_transformers_files
from mimo_pipeline.encoder import SentenceEncoder, pool
from mimo_pipeline.errors import MimoError, MimoInputError
from mimo_pipeline.losses import LossOutput, Projection
from mimo_pipeline.training import (
    PROJECTION_FILE,
    STATE_DIR,
    STATE_FILE,
    DistillBatch,
    LakdaBatch,
    PairBatch,
    TrainableEncoder,
    TrainConfig,
    infonce_objective,
    lakda_objective,
    mimo_objective,
    stage1_objective,
    train,
    xlco_objective,
)

from tests.conftest import build_tiny_bert

torch.set_num_threads(1)

EN = ["in the beginning god created the heaven and the earth",
      "and the earth was without form and void",
      "and god said let there be light",
      "and god saw the light that it was good",
      "and god called the light day",
      "and the darkness he called night",
      "and the evening and the morning were the first day",
      "and god made the firmament"]
# a made-up "language X": every English word gets a fixed foreign spelling
X = [" ".join(f"{w}_x" for w in s.split()) for s in EN]
Y = [" ".join(f"{w}_y" for w in s.split()) for s in EN]
TEACHER_DIM = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A sentence-transformers folder: tiny BERT, WordLevel tokenizer, e5-style prompts."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), EN + X + Y)


def teacher_vecs(seed: int = 0, n: int = len(EN)) -> torch.Tensor:
    return torch.randn(n, TEACHER_DIM, generator=torch.Generator().manual_seed(seed))


T_EN = teacher_vecs()
T_EN_P = teacher_vecs(1)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=10, batch_size=4, lr=1e-3, warmup_ratio=0.1, max_length=32, seed=0,
                checkpoint_every=0, log_every=5, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def batch_at(i: int) -> PairBatch:
    """A deterministic MIMO batch per index: 4 of the 8 rows, rotating, query in X, passage in Y."""
    rows = [(i * 4 + k) % len(EN) for k in range(4)]
    return PairBatch([X[r] for r in rows], [Y[(r + 1) % len(EN)] for r in rows],
                     T_EN[rows], T_EN_P[[(r + 1) % len(EN) for r in rows]])


def eval_loss(enc, objective, batch) -> float:
    enc.eval()
    with torch.no_grad():
        return objective(enc, batch).total.item()


# --------------------------------------------------------------------------- objectives learn


OBJECTIVES = {
    "stage1": (lambda p: stage1_objective(p), DistillBatch(X, EN, T_EN)),
    "mimo": (lambda p: mimo_objective(p), PairBatch(X, EN, T_EN, T_EN)),
    "infonce": (lambda p: infonce_objective(), PairBatch(EN, EN)),
    "xlco": (lambda p: xlco_objective(), PairBatch(X, Y)),
    "lakda": (lambda p: lakda_objective(), LakdaBatch(X, Y, EN)),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_loss_decreases_on_a_fixed_batch(model_dir, tmp_path, name):
    make, batch = OBJECTIVES[name]
    enc = TrainableEncoder(model_dir)
    proj = Projection(32, TEACHER_DIM, seed=0)
    objective = make(proj)
    before = eval_loss(enc, objective, batch)
    logs = []
    res = train(enc, objective, [batch], cfg(steps=30, log_every=10, lr=3e-3), tmp_path / "work",
                extra_params=[proj], on_log=logs.append)
    after = eval_loss(enc, objective, batch)
    assert after < 0.7 * before, (before, after)
    assert res.steps == 30 and res.resumed_from_step == 0 and res.pairs_per_s > 0
    assert [r["step"] for r in res.history] == [10, 20, 30] and logs == res.history
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert "loss" in res.final_terms and "grad_norm" in res.final_terms
    assert not enc.training  # left in eval mode


def test_lr_schedule_warms_up_then_decays(model_dir, tmp_path):
    enc = TrainableEncoder(model_dir)
    res = train(enc, infonce_objective(), [PairBatch(EN[:4], EN[:4])],
                cfg(steps=10, warmup_ratio=0.2, log_every=1, lr=1e-3), tmp_path / "w")
    lrs = [r["lr"] for r in res.history]
    # ceil(0.2*10) = 2 warm-up steps: lr 0, 0.5, then linear decay 1, 7/8, ..., 1/8 (x 1e-3)
    expected = [0.0, 0.5] + [(10 - s) / 8 for s in range(2, 10)]
    assert lrs == pytest.approx([1e-3 * e for e in expected])


# --------------------------------------------------------------------------- resume


def _weights(enc, proj):
    return {**{f"m.{k}": v.clone() for k, v in enc.state_dict().items()},
            **{f"p.{k}": v.clone() for k, v in proj.state_dict().items()}}


class Crash(RuntimeError):
    pass


def test_resumed_run_matches_uninterrupted_run_bitwise(model_dir, tmp_path):
    config = cfg(steps=10, grad_accum=2, checkpoint_every=3, log_every=1)

    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    full = train(enc, mimo_objective(proj), batch_at, config, tmp_path / "a", extra_params=[proj])
    want = _weights(enc, proj)

    def crash_at_5(rec):
        if rec["step"] == 5:
            raise Crash("simulated kill")

    work = tmp_path / "b"
    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    with pytest.raises(Crash):
        train(enc, mimo_objective(proj), batch_at, config, work, extra_params=[proj], on_log=crash_at_5)
    assert sorted(os.listdir(work / STATE_DIR)) == [STATE_FILE]  # no temp files left behind
    torch.manual_seed(12345)  # a restarted process has other RNG state: the saved one must win

    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    resumed = train(enc, mimo_objective(proj), batch_at, config, work, extra_params=[proj])
    assert resumed.resumed_from_step == 3  # the state at step 5 was never written
    got = _weights(enc, proj)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    strip = lambda h: [{k: v for k, v in r.items() if k != "pairs_per_s"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert resumed.final_terms == full.final_terms

    # a finished run started again does nothing and restores the final weights
    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    again = train(enc, mimo_objective(proj), batch_at, config, work, extra_params=[proj])
    assert again.resumed_from_step == 10 and len(again.history) == 10
    assert all(torch.equal(v, want[k]) for k, v in _weights(enc, proj).items())


def test_resume_refuses_other_settings(model_dir, tmp_path):
    enc = TrainableEncoder(model_dir)
    train(enc, infonce_objective(), [PairBatch(EN[:4], EN[:4])], cfg(steps=2), tmp_path / "w")
    with pytest.raises(MimoInputError, match="lr") as e:
        train(TrainableEncoder(model_dir), infonce_objective(), [PairBatch(EN[:4], EN[:4])],
              cfg(steps=2, lr=5e-4), tmp_path / "w")
    assert "delete" in str(e.value)


def test_non_finite_loss_stops_training(model_dir, tmp_path):
    def nan_objective(model, batch):
        v = model.embed(batch.q_texts).sum() * float("nan")
        return LossOutput(v, {"loss": float("nan")})

    with pytest.raises(MimoError, match="non-finite loss at step 1"):
        train(TrainableEncoder(model_dir), nan_objective, [PairBatch(EN[:2], EN[:2])], cfg(steps=3),
              tmp_path / "w")


# --------------------------------------------------------------------------- checkpoints


def test_saved_checkpoint_loads_in_sentence_transformers_and_plain_transformers(model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    train(enc, mimo_objective(proj), batch_at, cfg(steps=3), tmp_path / "w", extra_params=[proj])
    dest = enc.save(tmp_path / "ckpt", projection=proj)
    assert read_pooling_spec(dest).prompts == {"query": "query: ", "document": "passage: "}
    texts = EN[:3] + X[:2]

    with torch.no_grad():
        ours = enc.embed(texts, "query").numpy()
        ours_doc = enc.embed(texts, "document").numpy()
    st = SentenceTransformer(str(dest), device="cpu", local_files_only=True)
    assert np.allclose(st.encode(texts, prompt_name="query"), ours, atol=1e-5)
    assert np.allclose(st.encode(texts, prompt_name="document"), ours_doc, atol=1e-5)

    # plain transformers: AutoModel + tokenizer + the pooling config
    spec = read_pooling_spec(dest)
    tok, model = AutoTokenizer.from_pretrained(dest), AutoModel.from_pretrained(dest).eval()
    batch = tok([spec.prompt("query") + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = pool(model(**batch).last_hidden_state, batch["attention_mask"], spec.mode).numpy()
    assert np.allclose(plain, ours, atol=1e-5)
    assert np.allclose(SentenceEncoder(dest, device="cpu").encode(texts, prompt="query"), ours, atol=1e-5)
    # the prompts matter: without them the vectors differ
    assert not np.allclose(st.encode(texts), ours, atol=1e-3)

    back = Projection.load(dest / PROJECTION_FILE)
    assert torch.equal(back.linear.weight, proj.linear.weight.cpu())
    # trained weights, not the base model's
    base = AutoModel.from_pretrained(model_dir)
    assert not torch.equal(base.encoder.layer[0].attention.self.query.weight,
                           model.encoder.layer[0].attention.self.query.weight)


def test_frozen_word_embeddings_stay_unchanged(model_dir, tmp_path):
    enc, proj = TrainableEncoder(model_dir), Projection(32, TEACHER_DIM, seed=0)
    words0 = enc.get_input_embeddings().weight.detach().clone()
    pos0 = enc.model.embeddings.position_embeddings.weight.detach().clone()
    train(enc, stage1_objective(proj), [DistillBatch(X[:4], EN[:4], T_EN[:4])],
          cfg(steps=5, freeze_word_embeddings=True), tmp_path / "w", extra_params=[proj])
    assert torch.equal(enc.get_input_embeddings().weight, words0)
    assert not torch.equal(enc.model.embeddings.position_embeddings.weight, pos0)
    state = torch.load(tmp_path / "w" / STATE_DIR / STATE_FILE, weights_only=True)
    assert "model.embeddings.word_embeddings.weight" not in state["model"]  # not stored either

    enc2 = TrainableEncoder(model_dir)
    train(enc2, infonce_objective(), [PairBatch(EN[:4], EN[:4])], cfg(steps=3, freeze_word_embeddings=False),
          tmp_path / "w2")
    assert not torch.equal(enc2.get_input_embeddings().weight, words0)


def test_embed_truncates_and_prompts(model_dir):
    enc = TrainableEncoder(model_dir, max_length=4)
    enc.eval()
    with torch.no_grad():
        a = enc.embed(["and god said let there be light"])
        b = enc.embed(["and god said"])  # [CLS] and god [SEP] either way
        c = enc.embed(["and god said"], "query")
    assert a.shape == (1, 32) and torch.allclose(a, b)
    assert not torch.allclose(b, c)
    assert enc.embed(["x"]).requires_grad


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("name,value", [
    ("steps", 0), ("steps", 2.5), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")),
    ("warmup_ratio", 1.0), ("warmup_ratio", -0.1), ("weight_decay", -0.01), ("grad_accum", 0),
    ("max_length", 0), ("seed", -1), ("checkpoint_every", -5), ("log_every", 0),
    ("max_grad_norm", 0.0), ("device", "warp-drive"), ("bf16", "yes"), ("freeze_word_embeddings", 1),
])
def test_config_validation_names_the_setting(name, value):
    kw = dict(steps=10, batch_size=4, lr=1e-4)
    kw[name] = value
    with pytest.raises(MimoInputError) as e:
        TrainConfig(**kw)
    assert e.value.source == f"TrainConfig.{name}"
    msg = str(e.value)
    assert name in msg and repr(value) in msg and "use " in msg


def test_config_defaults_are_valid():
    c = TrainConfig(steps=1, batch_size=1, lr=1e-5)
    assert c.warmup_ratio == 0.1 and c.freeze_word_embeddings and c.max_grad_norm == 1.0
    assert TrainConfig(steps=1, batch_size=1, lr=1e-5, max_grad_norm=None, checkpoint_every=0).max_grad_norm is None
    assert c.resolved_device().type in ("cpu", "cuda")
    assert math.isclose(TrainConfig(steps=1, batch_size=1, lr=1e-5, warmup_ratio=0.0).warmup_ratio, 0.0)


def test_stage1_fit_rows_avoid_the_rows_training_draws():
    from mimo_pipeline.stages import _fit_rows, _order

    drawn = _order(100, 40, seed=3)
    rows = _fit_rows(100, drawn, 30, seed=3)
    assert len(rows) == 30 and len(set(rows.tolist())) == 30
    assert not set(rows.tolist()) & set(drawn.tolist())  # out of sample: W never saw a training batch
    assert rows.tolist() == _fit_rows(100, drawn, 30, seed=3).tolist()  # seeded
    # too few undrawn rows: all of them, topped up with drawn ones, still without repeats
    rows = _fit_rows(100, drawn, 80, seed=3)
    assert len(rows) == 80 and len(set(rows.tolist())) == 80
    assert set(range(100)) - set(drawn.tolist()) <= set(rows.tolist())
