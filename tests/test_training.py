"""Training on SentenceTransformerTrainer with our loss modules, on a tiny random BERT (32-d, 2 layers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mimo_pipeline.errors import MimoError, MimoInputError
from mimo_pipeline.losses import (CachedLakdaLoss, CachedMimoLoss, contrastive_loss, distill_loss, info_nce,
                                  lakda_loss, make_projection, mimo_loss, stage1_loss)
from mimo_pipeline.trainer import LOSS_PARAMS_FILE, TrainConfig, fit, latest_complete_checkpoint, load_student

from tests.conftest import build_tiny_bert, cached_teacher, tiny_student, torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for these tiny models (waking a second costs more than a tiny op),
    given back afterwards: the end-to-end tests that run in this process need both cores."""
    with torch_threads(1):
        yield


EN = ["in the beginning god created the heaven and the earth",
      "and the earth was without form and void",
      "and god said let there be light",
      "and god saw the light that it was good",
      "and god called the light day",
      "and the darkness he called night",
      "and the evening and the morning were the first day",
      "and god made the firmament",
      "and god called the firmament heaven",
      "and the waters were gathered together",
      "and god called the dry land earth",
      "let the earth bring forth grass",
      "and the earth brought forth grass and herb",
      "let there be lights in the firmament",
      "and god made two great lights",
      "and god set them in the firmament"]
# made-up "languages": every English word gets a fixed foreign spelling
X = [" ".join(f"{w}_x" for w in s.split()) for s in EN]
Y = [" ".join(f"{w}_y" for w in s.split()) for s in EN]
TEACHER_DIM = 16
PROMPTS_QP = {"anchor": "query: ", "positive": "passage: ", "anchor_b": "query: "}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A sentence-transformers folder: tiny BERT, WordLevel tokenizer, e5-style prompts."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), EN + X + Y)


@pytest.fixture(scope="module")
def no_dropout_dir(tmp_path_factory):
    """The same without dropout: dropout masks are drawn per forward chunk, so only a model
    without dropout has weights that cannot depend on the chunk size."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_nd"), EN + X + Y, dropout=0.0)


def teacher_vecs(seed: int, n: int = len(EN)) -> np.ndarray:
    return torch.randn(n, TEACHER_DIM, generator=torch.Generator().manual_seed(seed)).numpy()


T_Q, T_P = teacher_vecs(0), teacher_vecs(1)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=3, batch_size=16, lr=1e-3, warmup_ratio=0.0, max_length=32, seed=0, checkpoint_every=0,
                log_every=1, device="cpu", freeze_word_embeddings=False)
    base.update(kw)
    return TrainConfig(**base)


def mimo_rows(n_rows: int):
    from datasets import Dataset

    idx = [i % len(EN) for i in range(n_rows)]
    return Dataset.from_dict({"anchor": [X[i] for i in idx], "positive": [Y[(i + 1) % len(EN)] for i in idx],
                              "label": [np.stack([T_Q[i], T_P[(i + 1) % len(EN)]]).tolist() for i in idx]})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_mimo(model_dir, work, config, n_rows=None, callbacks=None):
    model = load_student(model_dir, config)
    loss = CachedMimoLoss(model, make_projection(32, TEACHER_DIM, seed=0), lam=0.5)
    result = fit(model, loss, mimo_rows(n_rows or config.steps * config.batch_size), config, work,
                 prompts=PROMPTS_QP, callbacks=callbacks)
    return model, loss, result


def _allclose(a: dict, b: dict, atol: float) -> bool:
    return all(torch.allclose(a[k], b[k], atol=atol) for k in a)


# --------------------------------------------------------------------------- gradient caching


def test_mini_batch_size_leaves_the_weights_unchanged_but_accumulation_does_not(no_dropout_dir, tmp_path,
                                                                                  monkeypatch):
    """3 steps at batch 16: mini-batches of 16, 4 and 1 give the same weights (and W); 3 steps of
    4 accumulated micro-batches of 4 (the same rows and schedule, but each query sees only the
    3 negatives of its micro-batch) give other weights."""
    model_dir = no_dropout_dir
    runs = {}
    for mb in (16, 4, 1):
        model, loss, _ = train_mimo(model_dir, tmp_path / f"mb{mb}", cfg(mini_batch_size=mb))
        runs[mb] = (weights(model), loss.projection.weight.detach().clone())
    ref_w, ref_p = runs[16]
    for mb in (4, 1):
        assert _allclose(runs[mb][0], ref_w, atol=1e-5), f"mini_batch_size {mb} changed the weights"
        assert torch.allclose(runs[mb][1], ref_p, atol=1e-5)
    # the same 48 rows as 3 optimizer steps, each 4 accumulated micro-batches of 4, move elsewhere
    from mimo_pipeline import trainer

    real = trainer.training_arguments

    def accumulating(config, output_dir, prompts=None):
        args = real(config, output_dir, prompts)
        args.per_device_train_batch_size, args.gradient_accumulation_steps = 4, 4
        return args

    monkeypatch.setattr(trainer, "training_arguments", accumulating)
    model, loss, result = train_mimo(model_dir, tmp_path / "accumulated", cfg(mini_batch_size=4))
    assert [h["step"] for h in result.history] == [1, 2, 3]  # 3 optimizer steps, as above
    assert not _allclose(weights(model), ref_w, atol=1e-5)


def test_cached_losses_equal_the_formulas_on_the_whole_batch(model_dir):
    """One forward of each loss module = the pure formula on the model's own embeddings."""
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    model = load_student(model_dir, cfg())
    model.eval()
    proj = make_projection(32, TEACHER_DIM, seed=0)
    tok = lambda texts: model.preprocess(texts)  # noqa: E731
    q, p, b = X[:8], Y[:8], EN[:8]
    labels = torch.from_numpy(np.stack([T_Q[:8], T_P[:8]], axis=1))
    with torch.no_grad():
        eq, ep, eb = (model.encode(t, convert_to_tensor=True) for t in (q, p, b))
        got = CachedMimoLoss(model, proj, lam=0.3, mini_batch_size=3)([tok(q), tok(p)], labels)
        want = mimo_loss(eq, ep, proj(eq), proj(ep), labels[:, 0], labels[:, 1], lam=0.3).total
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        got = CachedLakdaLoss(model, alpha=0.5, mini_batch_size=3)([tok(q), tok(b), tok(p)])
        assert got.item() == pytest.approx(lakda_loss(eq, ep, eb, alpha=0.5).total.item(), rel=1e-5)
        got = contrastive_loss(model, mini_batch_size=3)([tok(q), tok(p)], None)
        assert got.item() == pytest.approx(info_nce(eq, ep).item(), rel=1e-5)
        s1 = stage1_loss(model, proj)
        got = s1([tok(q)], labels[:, 0])
        assert got.item() == pytest.approx(distill_loss(proj(eq), labels[:, 0]).item(), rel=1e-5)
    assert SentenceTransformerDataCollator  # the trainer's collator builds these same features


# --------------------------------------------------------------------------- the loop


def test_every_loss_learns_on_a_fixed_batch(model_dir, tmp_path):
    from datasets import Dataset

    n = 16 * 6
    idx = [i % len(EN) for i in range(n)]
    data = {
        "stage1": Dataset.from_dict({"text": [X[i] for i in idx], "label": [T_Q[i].tolist() for i in idx]}),
        "lakda": Dataset.from_dict({"anchor": [X[i] for i in idx], "positive": [EN[i] for i in idx],
                                    "anchor_b": [Y[i] for i in idx]}),
        "xlco": Dataset.from_dict({"anchor": [X[i] for i in idx], "positive": [Y[i] for i in idx]}),
    }
    for name, ds in data.items():
        config = cfg(steps=6, lr=3e-3, mini_batch_size=8)
        model = load_student(model_dir, config)
        loss = {"stage1": lambda m: stage1_loss(m, make_projection(32, TEACHER_DIM, seed=0)),
                "lakda": lambda m: CachedLakdaLoss(m), "xlco": lambda m: contrastive_loss(m)}[name](model)
        result = fit(model, loss, ds, config, tmp_path / name, prompts={"text": "query: ", **PROMPTS_QP})
        losses = [h["loss"] for h in result.history]
        assert len(losses) == 6 and losses[-1] < losses[0], (name, losses)
        assert all("rows_per_s" in h and "lr" in h for h in result.history)
    # our losses' own terms are logged beside the total
    _, _, result = train_mimo(model_dir, tmp_path / "terms", cfg(steps=2))
    assert {"xlco", "distill", "distill_q", "distill_p"} <= set(result.history[-1])


def test_lr_warms_up_then_decays(model_dir, tmp_path):
    _, _, result = train_mimo(model_dir, tmp_path / "w", cfg(steps=10, batch_size=4, warmup_ratio=0.2))
    lrs = [h["lr"] for h in result.history]
    peak = int(np.argmax(lrs))
    assert 0 < peak <= 2 and lrs[-1] < lrs[peak]
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def test_non_finite_loss_stops_training_with_the_step(model_dir, tmp_path):
    from datasets import Dataset

    config = cfg(steps=2)
    model = load_student(model_dir, config)
    bad = np.full((len(EN), TEACHER_DIM), np.nan, dtype=np.float32)
    ds = Dataset.from_dict({"text": X * 2, "label": bad.tolist() * 2})
    with pytest.raises(MimoError, match="non-finite loss at step 1"):
        fit(model, stage1_loss(model, make_projection(32, TEACHER_DIM, seed=0)), ds, config, tmp_path / "nan",
            prompts={"text": "query: "})


def test_too_few_rows_and_frozen_everything_are_named(model_dir, tmp_path):
    config = cfg(steps=4)
    model = load_student(model_dir, config)
    with pytest.raises(MimoInputError, match="need 64"):
        fit(model, CachedMimoLoss(model, make_projection(32, TEACHER_DIM)), mimo_rows(20), config, tmp_path / "a")
    for p in model.parameters():
        p.requires_grad_(False)
    loss = contrastive_loss(model)
    with pytest.raises(MimoInputError, match="frozen"):
        fit(model, loss, mimo_rows(64).remove_columns("label"), config, tmp_path / "b")


def test_frozen_word_embeddings_stay_unchanged(model_dir, tmp_path):
    config = cfg(steps=2, freeze_word_embeddings=True)
    model = load_student(model_dir, config)
    emb = model[0].model.get_input_embeddings().weight.detach().clone()
    other = model[0].model.encoder.layer[0].attention.self.query.weight.detach().clone()
    fit(model, CachedMimoLoss(model, make_projection(32, TEACHER_DIM)), mimo_rows(32), config, tmp_path / "f",
        prompts=PROMPTS_QP)
    assert torch.equal(model[0].model.get_input_embeddings().weight, emb)
    assert not torch.equal(model[0].model.encoder.layer[0].attention.self.query.weight, other)


def test_students_of_one_tokenizer_parse_it_once_and_keep_their_own_max_length(model_dir, tmp_path, monkeypatch):
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import transformer as st_transformer

    from mimo_pipeline import encoder

    parses = []
    parse = transformers.AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: parses.append(a[0]) or parse(cls, *a, **kw)))
    monkeypatch.setattr(encoder, "_TOKENIZERS", type(encoder._TOKENIZERS)())
    other = shutil.copytree(model_dir, tmp_path / "other")  # another checkpoint, the same tokenizer files
    a, b = load_student(model_dir, cfg(max_length=12)), load_student(other, cfg(max_length=7))
    assert len(parses) == 1 and st_transformer.AutoProcessor is transformers.AutoProcessor  # put back
    assert a.tokenizer.backend_tokenizer is b.tokenizer.backend_tokenizer
    assert (a.max_seq_length, b.max_seq_length) == (12, 7)
    plain = SentenceTransformer(str(model_dir), device="cpu")  # as sentence-transformers loads it
    plain.max_seq_length = 12
    assert len(parses) == 2  # outside load_student nothing is shared
    texts = [X[0] + " " + Y[1], EN[2]]
    assert torch.equal(a.encode(texts, convert_to_tensor=True), plain.encode(texts, convert_to_tensor=True))
    assert a.tokenize(texts)["input_ids"].shape[1] == 12 and b.tokenize(texts)["input_ids"].shape[1] == 7


def test_only_a_plain_local_tokenizer_is_taken_from_the_parsed_ones(tmp_path):
    from mimo_pipeline.trainer import _plain_local_tokenizer

    st_kwargs = {"subfolder": "", "token": None, "cache_dir": None, "revision": None, "local_files_only": True,
                 "trust_remote_code": False, "model_max_length": 512}  # what sentence-transformers 6.2 passes
    assert not _plain_local_tokenizer(tmp_path, st_kwargs)  # no tokenizer.json: not a fast tokenizer's folder
    (tmp_path / "tokenizer.json").write_text("{}")
    assert _plain_local_tokenizer(tmp_path, st_kwargs) and _plain_local_tokenizer(tmp_path, {})
    for change in ({"subfolder": "tok"}, {"revision": "v2"}, {"trust_remote_code": True}, {"use_fast": False}):
        assert not _plain_local_tokenizer(tmp_path, {**st_kwargs, **change}), change
    (tmp_path / "preprocessor_config.json").write_text("{}")  # a processor, not a tokenizer
    assert not _plain_local_tokenizer(tmp_path, st_kwargs)


# --------------------------------------------------------------------------- resume


class StopAt:
    """A trainer callback that stops a run after ``step`` steps (as a crash would, after a save)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True

        return _Stop()


def test_resumed_run_matches_the_uninterrupted_run(model_dir, tmp_path):
    """Stop after 3 of 6 steps (a checkpoint every step), resume: same weights and W as 6 steps
    straight, bitwise (dropout on: the RNG state travels too); the loss' own parameters
    travel in the trainer checkpoint."""
    config = cfg(steps=6, batch_size=4, checkpoint_every=1)
    full_model, full_loss, full = train_mimo(model_dir, tmp_path / "full", config)
    work = tmp_path / "cut"
    train_mimo(model_dir, work, config, callbacks=[StopAt(3)])
    ckpt = latest_complete_checkpoint(work)
    assert ckpt.name == "checkpoint-3" and (ckpt / LOSS_PARAMS_FILE).exists()
    model, loss, result = train_mimo(model_dir, work, config)
    assert result.resumed_from_step == 3
    assert _allclose(weights(model), weights(full_model), atol=0.0)
    assert torch.equal(loss.projection.weight, full_loss.projection.weight)
    assert [h["step"] for h in result.history] == [h["step"] for h in full.history]


def test_an_incomplete_trainer_checkpoint_is_removed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # killed before its trainer state was written
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("name,value", [("steps", 0), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")),
                                        ("warmup_ratio", 1.0), ("mini_batch_size", 0), ("seed", -1),
                                        ("optim", "sgd"), ("max_grad_norm", 0.0), ("bf16", 1), ("device", "tpu?")])
def test_config_validation_names_the_setting(name, value):
    with pytest.raises(MimoInputError, match=name):
        cfg(**{name: value})


def test_chunk_and_fingerprint_settings():
    assert cfg(mini_batch_size=None).chunk == 16 and cfg(mini_batch_size=64).chunk == 16
    s = cfg(mini_batch_size=4).result_settings()
    assert s["batch_size"] == 16 and s["mini_batch_size"] == 4 and "log_every" not in s


def test_the_checkpoint_fingerprint_holds_batch_size_and_mini_batch_size():
    """The contract: a checkpoint's folder (its fingerprint) changes with either size."""
    from dataclasses import replace

    from mimo_pipeline.stages import StageConfig, checkpoint_fingerprint
    from mimo_pipeline.student import ModelCheckpoint

    init = ModelCheckpoint("base_student", "/m", "0123456789abcdef", "tiny", 32, {})
    base = StageConfig(train=cfg(mini_batch_size=4))
    variants = [base, replace(base, train=replace(base.train, mini_batch_size=1)),
                replace(base, train=replace(base.train, batch_size=32)), replace(base, lam=0.5)]
    fps = [checkpoint_fingerprint("mimo", init, "/data/pairs/abc/pairs.parquet", c) for c in variants]
    assert len(set(fps)) == len(variants)
    assert fps[0] == checkpoint_fingerprint("mimo", init, "/elsewhere/abc/pairs.parquet", base)  # the folder's name
    assert fps[0] != checkpoint_fingerprint("xlco", init, "/data/pairs/abc/pairs.parquet", base)


# --------------------------------------------------------------------------- precision, concurrency


def test_bf16_no_grad_pass_moves_the_weights_a_little(no_dropout_dir, tmp_path):
    """Gradient caching's no-gradient pass in bf16 (the `precision` setting): the same run as fp32
    up to bf16 rounding of the cached embeddings; a different run, so its fingerprint differs."""
    fp32, _, _ = train_mimo(no_dropout_dir, tmp_path / "fp32", cfg(precision="fp32"))
    bf16, _, _ = train_mimo(no_dropout_dir, tmp_path / "bf16", cfg(precision="bf16", bf16=False))
    a, b = weights(fp32), weights(bf16)
    assert not _allclose(a, b, atol=0.0)
    assert _allclose(a, b, atol=2e-3)
    assert cfg(precision="bf16").result_settings() != cfg(precision="fp32").result_settings()


def test_bf16_autocast_trains_the_whole_step_in_bf16_and_gives_the_model_back_in_fp32(no_dropout_dir, tmp_path):
    """``bf16`` on a CPU: every forward pass of the step (gradient caching's replay included) runs
    under bf16 autocast, the weights stay float32 and move close to an fp32 run's; after `fit` the
    model's own forward is back, so an encode of the model in memory is float32 again."""
    seen = []

    def probe(module, args, output):
        seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))

    fp32, _, _ = train_mimo(no_dropout_dir, tmp_path / "fp32", cfg(precision="fp32", bf16=False))
    model = load_student(no_dropout_dir, cfg(bf16=True))
    handle = model[0].register_forward_hook(probe)
    loss = CachedMimoLoss(model, make_projection(32, TEACHER_DIM, seed=0), lam=0.5)
    result = fit(model, loss, mimo_rows(48), cfg(bf16=True, mini_batch_size=8), tmp_path / "bf16",
                 prompts=PROMPTS_QP)
    handle.remove()
    assert {g for g, _ in seen} == {False, True}  # the no-gradient pass and the replay with gradients
    assert all(a for _, a in seen), "a forward pass of the step ran without autocast"
    a, b = weights(fp32), weights(model)
    assert all(v.dtype == torch.float32 for v in b.values())
    assert not _allclose(a, b, atol=0.0) and _allclose(a, b, atol=2e-2)
    assert np.isfinite(result.final_terms["loss"])
    assert "_original_forward" not in model.__dict__
    seen.clear()
    model[0].register_forward_hook(probe)
    out = model.encode(["and god said let there be light"], convert_to_tensor=True)
    assert out.dtype == torch.float32 and seen == [(False, False)]


def test_bf16_and_auto_precision_are_resolved_for_the_machine_and_in_the_fingerprint(monkeypatch):
    """``bf16`` unset follows ``precision`` as resolved here; the checkpoint fingerprint holds the
    resolved pair, so ``auto`` gives another folder on a machine where it means bf16."""
    from mimo_pipeline import precision
    from mimo_pipeline.stages import StageConfig, checkpoint_fingerprint
    from mimo_pipeline.student import ModelCheckpoint

    assert cfg(precision="fp32").resolved().bf16 is False
    assert cfg(precision="bf16").resolved().bf16 is True
    assert cfg(precision="bf16", bf16=False).resolved().bf16 is False
    assert cfg(precision="fp32", bf16=True).resolved().bf16 is True
    init = ModelCheckpoint("base_student", "/m", "0123456789abcdef", "tiny", 32, {})
    auto = StageConfig(train=cfg(precision="auto"))
    fps = {}
    for host in ("fp32", "bf16"):
        monkeypatch.setattr(precision, "_cpu_auto", lambda host=host: host)
        assert auto.train.resolved().precision == host and auto.train.resolved().bf16 is (host == "bf16")
        fps[host] = checkpoint_fingerprint("infonce", init, "/data/pairs/abc/pairs.parquet", auto)
    assert fps["fp32"] != fps["bf16"]
    assert fps["fp32"] == checkpoint_fingerprint("infonce", init, "/data/pairs/abc/pairs.parquet",
                                                 StageConfig(train=cfg(precision="fp32", bf16=False)))


def test_a_second_process_waits_for_the_fingerprint_being_trained(tmp_path):
    """Two runs on one MIMO_HOME training one fingerprint: the second waits for the first's lock."""
    import threading
    import time

    from mimo_pipeline.stages import _training_lock

    lock = tmp_path / ".fp.lock"
    order = []

    def second():
        with _training_lock(lock):
            order.append("second")

    with _training_lock(lock):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(timeout=10)
    assert order == ["first done", "second"]


# --------------------------------------------------------------------------- the stages' inputs


def _corpus(tmp_path, texts, english, splits=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corpus" / "parallel.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, "en": english, "split": splits or ["train"] * len(texts),
                             "lang": ["xx"] * len(texts)}), path)
    return path


def test_stage1_rows_add_english_identity_rows_one_per_sentence_or_a_share(tmp_path):
    from mimo_pipeline.stages import stage1_rows

    path = _corpus(tmp_path, X[:8] + Y[:8] + X[8:10], EN[:8] * 2 + EN[8:10], ["train"] * 16 + ["dev"] * 2)
    rows = stage1_rows(path, None, seed=0)  # the official preparation: one (en, en) row per distinct sentence
    assert rows.n_identity == 8 and len(rows.texts) == 24
    assert rows.texts[:16] == X[:8] + Y[:8] and rows.english[:16] == EN[:8] * 2  # dev rows never enter
    assert rows.texts[16:] == rows.english[16:] == EN[:8]
    share = stage1_rows(path, 0.2, seed=0)  # s/(1−s) of the 16 X rows: 4 identity rows, a share of 0.2
    assert share.n_identity == 4 and share.n_identity / len(share.texts) == pytest.approx(0.2)
    assert share.texts[16:] == share.english[16:] and set(share.texts[16:]) <= set(EN[:8])
    assert share.texts[16:] != stage1_rows(path, 0.2, seed=1).texts[16:]  # a seeded sample
    assert stage1_rows(path, 0.0, seed=0).n_identity == 0


def test_one_prompt_convention_across_stages(model_dir, tmp_path, monkeypatch):
    """Stage 1 fits W (least squares) and trains on the student's query inputs, the inputs Stage 2's
    anchors and evaluation's queries get: the prompt is the student's own "query" prompt throughout."""
    from mimo_pipeline import encoder, stages
    from mimo_pipeline.stages import STAGE1_PROMPT, StageConfig, train_stage1, train_stage2

    import pyarrow as pa
    import pyarrow.parquet as pq

    teacher = cached_teacher(tmp_path / "teacher", EN, T_Q)
    init = tiny_student(model_dir)
    pairs = tmp_path / "pairs" / "pairs.parquet"
    pairs.parent.mkdir()
    pq.write_table(pa.table({"q_a": X, "p_b": Y[1:] + Y[:1], "q_en": EN, "p_en": EN[1:] + EN[:1]}), pairs)
    runs, fitted = {}, []
    monkeypatch.setattr(stages, "_run", lambda name, init, fp, models_dir, cfg, build_loss, dataset, prompts,
                        on_log, **kw: runs.setdefault(name, prompts))
    real_encode = encoder.SentenceEncoder.encode
    monkeypatch.setattr(encoder.SentenceEncoder, "encode",
                        lambda self, texts, prompt=None, **kw: fitted.append(prompt) or real_encode(self, texts,
                                                                                                   prompt=prompt, **kw))
    train = cfg(steps=1, batch_size=8)
    train_stage1(init, _corpus(tmp_path, X, EN), teacher, StageConfig(train, projection_init="lstsq",
                                                                      projection_fit_rows=8), tmp_path / "m")
    train_stage2(init, None, pairs, teacher, StageConfig(train), tmp_path / "m")
    assert STAGE1_PROMPT == "query" and fitted == ["query"]  # evaluation encodes queries with prompt "query"
    assert runs["stage1"] == {"text": "query: "}
    assert runs["mimo"]["anchor"] == "query: " and runs["mimo"]["positive"] == "passage: "


def test_a_trained_checkpoint_carries_its_initial_models_tokenizer_files(tmp_path):
    """Training changes no token: a checkpoint's tokenizer files are its initial model's, byte for
    byte, not the trainer's save of them (which records the training max length as a truncation,
    padding and load arguments). So every checkpoint of one student has one `tokenizer_key`, and
    evaluation and the reload probes load that tokenizer once per run. Its input limit is the
    initial model's too (48 here, below the tokenizer's 64; training's max length is 32), in
    sentence-transformers and in our evaluation."""
    import json

    from sentence_transformers import SentenceTransformer

    from mimo_pipeline.catalog import TOKENIZER_PATTERNS
    from mimo_pipeline.checkpoint import read_pooling_spec
    from mimo_pipeline.encoder import SentenceEncoder, tokenizer_key
    from mimo_pipeline.stages import StageConfig, train_stage1

    model_dir = build_tiny_bert(tmp_path / "init", EN + X + Y)
    sbert = model_dir / "sentence_bert_config.json"
    sbert.write_text(json.dumps({**json.loads(sbert.read_text()), "max_seq_length": 48}))
    assert read_pooling_spec(model_dir).max_seq_length == 48
    init = tiny_student(model_dir)
    teacher = cached_teacher(tmp_path / "teacher", EN + X, np.concatenate([T_Q, T_Q]))
    trained = train_stage1(init, _corpus(tmp_path, X, EN), teacher, StageConfig(cfg(steps=1, batch_size=8)),
                           tmp_path / "m")

    def tokenizer_files(folder):
        return {f.name: f.read_bytes() for f in Path(folder).iterdir() if f.name in TOKENIZER_PATTERNS}

    ckpt = trained.checkpoint.path
    assert tokenizer_files(ckpt) == tokenizer_files(model_dir) != {}
    assert tokenizer_key(ckpt) == tokenizer_key(model_dir)
    ids = SentenceEncoder(ckpt).tokenizer(X[:2], padding=True, truncation=True, max_length=64)["input_ids"]
    from transformers import AutoTokenizer

    assert ids == AutoTokenizer.from_pretrained(model_dir)(X[:2], padding=True, truncation=True,
                                                           max_length=64)["input_ids"]
    assert read_pooling_spec(ckpt).max_seq_length == 48
    assert SentenceTransformer(ckpt, local_files_only=True).max_seq_length == 48


def test_a_retrain_removes_what_a_killed_write_left_of_its_fingerprint(model_dir, tmp_path):
    """A SIGKILL while a checkpoint is written leaves its temporary folder (the model's size)
    beside it; the next training of that fingerprint removes it, and nothing of other models."""
    import shutil

    from mimo_pipeline.stages import StageConfig, train_stage1

    init = tiny_student(model_dir)
    teacher = cached_teacher(tmp_path / "teacher", EN + X, np.concatenate([T_Q, T_Q]))
    corpus, config = _corpus(tmp_path, X, EN), StageConfig(cfg(steps=1, batch_size=8))
    dest = Path(train_stage1(init, corpus, teacher, config, tmp_path / "m").checkpoint.path)
    shutil.rmtree(dest)  # as if the write of the folder had been killed
    (dest.parent / f"{dest.name}.training.json").unlink()
    dead = [dest.parent / f".{dest.name}.k2j4.tmp", dest.parent / f".{dest.name}.training.json.x9.tmp"]
    dead[0].mkdir()
    (dead[0] / "model.safetensors").write_bytes(b"half")
    dead[1].write_text("{")
    other = dest.parent / ".0123456789abcdef.k2j4.tmp"  # another fingerprint's: not this training's to remove
    other.mkdir()
    again = train_stage1(init, corpus, teacher, config, tmp_path / "m")
    assert Path(again.checkpoint.path) == dest and (dest / "modules.json").is_file() and not again.reused
    assert not any(p.exists() for p in dead) and other.is_dir()


def test_without_tokenizer_files_to_copy_the_trainers_stay(tmp_path):
    from mimo_pipeline.stages import _keep_initial_tokenizer

    folder, init = tmp_path / "ckpt", tmp_path / "init"
    folder.mkdir()
    init.mkdir()
    (folder / "tokenizer.json").write_text("trainer's")
    (init / "config.json").write_text("{}")
    for source in (init, tmp_path / "not-a-folder"):
        _keep_initial_tokenizer(source, folder)
        assert (folder / "tokenizer.json").read_text() == "trainer's"
    (init / "tokenizer_config.json").write_text("initial")
    _keep_initial_tokenizer(init, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer_config.json"]


def test_stage1_gate_verdicts_and_what_they_tell_the_user_to_change():
    """The blocking gate before Stage 2: finite loss terms, and held-out P@1 within the margin."""
    from mimo_pipeline.stages import TrainedModel, stage1_gate
    from mimo_pipeline.student import ModelCheckpoint

    def trained(terms, p1):
        return TrainedModel(ModelCheckpoint("stage1", "/m", "fp", "base", 32, {}), None, 4, 1.0, 8.0, terms,
                            config={"stage": {"train": {"lr": 3.0}}}, translation_p1={"all": p1} if p1 else {})

    base = {"all": 0.60}
    diverged = stage1_gate(trained({"loss": float("nan"), "distill": 0.1}, 0.9), base, 0.05)
    assert not diverged.passed and "non-finite loss terms" in diverged.message and "lr (now 3.0)" in diverged.message
    inf = stage1_gate(trained({"loss": float("inf")}, None), base, 0.05)
    assert not inf.passed
    fell = stage1_gate(trained({"loss": 0.2}, 0.54), base, 0.05)  # 0.06 below: more than the margin
    assert not fell.passed and "fell below the base student's" in fell.message and "Lower" in fell.message
    assert (fell.p1, fell.base_p1) == (0.54, 0.60)
    assert stage1_gate(trained({"loss": 0.2}, 0.56), base, 0.05).passed  # 0.04 below: within it
    assert stage1_gate(trained({"loss": 0.2}, 0.70), base, 0.05).passed
    assert stage1_gate(trained({"loss": 0.2}, None), base, 0.05).passed  # not measured: finite is all it can say
