"""`stage1_train`: our Stage-1 loop against the sentence-transformers distillation recipe.

The apples-to-apples setup (both sides in this process, same threads):

- student: the converted multilingual-e5-small folder, fp32, word embeddings frozen
  (``TrainConfig.freeze_word_embeddings`` / ``get_input_embeddings().requires_grad_(False)``),
  dropout on (train mode), max length ``max_length``, no prompt (MIMO's Stage 1);
- data: the same ``steps × batch`` rows in the same order (ours: a list of
  `DistillBatch`; theirs: a ``datasets.Dataset`` with columns ``x``, ``en``, ``label``
  read by a sequential batch sampler instead of the default random one), where ``x``
  is a verse in German/French/Chinese/Russian, ``en`` its English version and
  ``label`` the teacher's (all-MiniLM-L6-v2) vector of ``en`` from our teacher cache:
  the ``make_multilingual`` pattern (precomputed teacher vectors in a label column);
- objective: ``½ (mse(W·s(x), T(en)) + mse(W·s(en), T(en)))`` on both sides, with a
  trainable ``W`` = Linear(384 → 384, bias) that starts from the same weights. Ours is
  `stage1_objective(projection, kind="mse")` (its English identity term is the second
  half; both sides go through one forward pass of the 2B texts, padded to the
  longest); theirs ``losses.MSELoss(model, projection_dim=384)``, which projects each
  text column through its Linear and averages the per-column MSE: the same formula
  (sentence-transformers 6 embeds the first column in its own forward pass and the
  others merged, so here two passes of B texts, each padded to its own column's
  longest: 1.7% fewer padded tokens than ours on the default rows). MIMO's default
  distance is cosine (``1 − cos``); MSE is used here because it is the recipe's loss
  (the ``make_multilingual`` example) and the two distances cost the same.
  Before timing, both losses are evaluated on the first batch in eval mode and must
  agree (``first_batch`` in the details);
- optimiser: AdamW lr 1e-4, weight decay 0.01 (none on biases and norms), linear
  warm-up over ceil(0.1·steps) steps then linear decay, gradient clipping at 1.0.
  Ours writes its resumable state once, at the end; theirs saves nothing.

Timing: both sides run in this process in two threads that take turns (`interleave.Baton`):
a step of ours, one of theirs, a matmul window, a step of theirs, one of ours, a
window, ... (ABBA), so background load on the shared cores hits both alike, and each
side's time is the sum of its own turns. ``pairs_per_s`` is
the steady state, rows per second over steps 2..N-1 (one step = batch, tokenise,
forward, backward, clip, optimiser and scheduler step; step 1 carries the model load
and one-off allocations, step N ours' state write); ``pairs_per_s_end_to_end`` is rows
over all of a side's turns (model load, set-up, every step, ours' state write, theirs'
Trainer/accelerate set-up). ``achieved_gflops`` is 6 × trainable non-embedding
parameters × real (non-padding) tokens per second in the steady state (the same FLOPs
for both: same rows), and ``fraction_of_peak`` that over the fp32 matmul ceiling
measured *during* the run: a third worker takes a turn after every step pair and runs
``torch.mm`` 1024×1024 for half a second (`flops.MatmulProbe`); the ceiling is the
median of those windows, so it sees the same background load as the steps. A turn
ends at a step's end, so whatever a loop does between two steps (logging, fetching and
collating the next batch) counts for the next.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mimo_pipeline.catalog import ResolvedModel
from mimo_pipeline.checkpoint import read_pooling_spec
from mimo_pipeline.losses import Projection
from mimo_pipeline.teacher import TeacherEmbeddings
from mimo_pipeline.training import DistillBatch, TrainableEncoder, TrainConfig, stage1_objective, train

from .common import Row, log, median
from .flops import MatmulProbe
from .interleave import Baton

LANGS = ("de", "fr", "zh", "ru")
LR, WARMUP, WEIGHT_DECAY, CLIP, SEED = 1e-4, 0.1, 0.01, 1.0, 0


def distill_rows(english: list[str], n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` (x, en) verse pairs whose English text is in ``english``, languages cycled."""
    from mimo_pipeline.bible import read_language

    en_by_id = read_language("en")
    wanted = set(english)
    others = {lang: read_language(lang) for lang in LANGS}
    ids = [v for v, t in en_by_id.items() if t in wanted and all(others[g].get(v, "").strip() for g in LANGS)]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=n, replace=len(ids) < n)
    xs = [others[LANGS[i % len(LANGS)]][ids[j]] for i, j in enumerate(pick)]
    ens = [en_by_id[ids[j]] for j in pick]
    return xs, ens


def _nonembedding_params(model: torch.nn.Module) -> int:
    emb = {id(p) for name, m in model.named_modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in emb)


def _real_tokens(tokenizer, xs: list[str], ens: list[str], max_length: int) -> int:
    enc = tokenizer(list(xs) + list(ens), truncation=True, max_length=max_length)
    return sum(len(ids) for ids in enc["input_ids"])


def _config(steps: int, batch: int, max_length: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=LR, warmup_ratio=WARMUP, weight_decay=WEIGHT_DECAY,
                       max_length=max_length, seed=SEED, freeze_word_embeddings=True, checkpoint_every=0,
                       log_every=1, device="cpu", max_grad_norm=CLIP)


def run_ours(student: ResolvedModel, batches: list[DistillBatch], teacher_dim: int, steps: int, batch: int,
             max_length: int, work: Path, on_step_end: Callable[[], None]) -> dict:
    """Our loop: `training.train` with `stage1_objective(kind="mse")`; ``on_step_end`` after every step."""
    enc = TrainableEncoder(student.path, max_length=max_length, device="cpu")
    proj = Projection(enc.dim, teacher_dim, seed=SEED)
    res = train(enc, stage1_objective(proj, kind="mse"), batches, _config(steps, batch, max_length), work,
                extra_params=[proj], on_log=lambda rec: on_step_end())
    return {"final_loss": res.final_terms.get("loss"), "steps": len(res.history)}


def run_peer(student: ResolvedModel, xs: list[str], ens: list[str], teacher: np.ndarray, proj_init: Projection,
             steps: int, batch: int, max_length: int, work: Path, on_step_end: Callable[[], None]) -> dict:
    """The sentence-transformers recipe; ``on_step_end`` after every optimiser step."""
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    class StepEnds(TrainerCallback):
        loss = None
        steps = 0

        def on_step_end(self, args, state, control, **kw):
            self.steps += 1
            on_step_end()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    def sequential(dataset, **kw):  # the rows in the order ours sees them
        return DefaultBatchSampler(SequentialSampler(dataset), **kw)

    model = SentenceTransformer(str(student.path), device="cpu")
    model.max_seq_length = max_length
    model[0].auto_model.get_input_embeddings().requires_grad_(False)
    loss = losses.MSELoss(model, projection_dim=teacher.shape[1])
    loss.projection.load_state_dict(proj_init.linear.state_dict())
    data = Dataset.from_dict({"x": list(xs), "en": list(ens), "label": teacher.tolist()})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work), max_steps=steps, per_device_train_batch_size=batch, learning_rate=LR,
        warmup_steps=math.ceil(WARMUP * steps), lr_scheduler_type="linear", weight_decay=WEIGHT_DECAY,
        max_grad_norm=CLIP, seed=SEED, report_to="none", save_strategy="no", logging_strategy="steps",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        use_cpu=True, batch_sampler=sequential)
    timer = StepEnds()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # no per-step dicts on stdout
    trainer.train()
    return {"final_loss": timer.loss, "steps": timer.steps}


def first_batch_losses(student: ResolvedModel, batch: DistillBatch, proj_init: Projection, max_length: int,
                       count_flops: bool = False) -> dict:
    """Both objectives on one batch in eval mode (no dropout): the same math gives the same loss.

    With ``count_flops``, one training forward + backward of ours also runs under
    ``torch.utils.flop_counter.FlopCounterMode`` (what the FLOP formula leaves out:
    padding and attention).
    """
    from sentence_transformers import SentenceTransformer, losses
    from torch.utils.flop_counter import FlopCounterMode

    enc = TrainableEncoder(student.path, max_length=max_length, device="cpu")
    enc.freeze_word_embeddings()
    proj = Projection(enc.dim, proj_init.teacher_dim, seed=None)
    proj.load_state_dict(proj_init.state_dict())
    objective = stage1_objective(proj, kind="mse")
    enc.eval()
    with torch.no_grad():
        ours = float(objective(enc, batch).total)
    counted = None
    if count_flops:
        enc.train()
        with FlopCounterMode(display=False) as counter:
            objective(enc, batch).total.backward()
        counted = counter.get_total_flops()
    n_params = _nonembedding_params(enc) + sum(p.numel() for p in proj.parameters())
    tokens = _real_tokens(enc.tokenizer, batch.x_texts, batch.en_texts, max_length)
    del enc

    model = SentenceTransformer(str(student.path), device="cpu")
    model.max_seq_length = max_length
    loss = losses.MSELoss(model, projection_dim=proj_init.teacher_dim)
    loss.projection.load_state_dict(proj_init.linear.state_dict())
    model.eval()
    with torch.no_grad():
        ex = model.encode(list(batch.x_texts), convert_to_tensor=True, batch_size=len(batch))
        een = model.encode(list(batch.en_texts), convert_to_tensor=True, batch_size=len(batch))
        t = torch.as_tensor(batch.teacher, dtype=torch.float32)
        peer = float(loss.compute_loss_from_embeddings([ex, een], [t, t]))
    return {"ours": ours, "peer": peer, "flop_counter_step": counted, "n_params": n_params, "tokens": tokens}


def run_train(student: ResolvedModel, teacher: TeacherEmbeddings, english: list[str], *, steps: int = 10,
              batch: int = 16, max_length: int = 64, count_flops: bool = False,
              seed: int = 0) -> tuple[list[Row], dict]:
    """Stage-1 training throughput, ours against sentence-transformers; see the module docstring."""
    xs, ens = distill_rows(english, steps * batch, seed=seed)
    tvecs = teacher.vectors(ens)
    batches = [DistillBatch(xs[i:i + batch], ens[i:i + batch], tvecs[i:i + batch])
               for i in range(0, steps * batch, batch)]
    proj_init = Projection(read_pooling_spec(student.path).dim, teacher.dim, seed=SEED)
    if steps < 3:
        raise ValueError("stage1_train needs steps >= 3 (the steady state is steps 2..N-1)")
    log(f"stage1_train: {steps} steps x {batch} rows, max_length {max_length}, ours and theirs taking turns")
    check = first_batch_losses(student, batches[0], proj_init, max_length, count_flops)
    if abs(check["ours"] - check["peer"]) > 1e-4 * max(1.0, abs(check["peer"])):
        raise AssertionError(f"the two objectives disagree on the first batch: {check}")
    log(f"stage1_train: first-batch loss ours {check['ours']:.6f}, sentence-transformers {check['peer']:.6f}")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student.path)
    tokens = [_real_tokens(tok, b.x_texts, b.en_texts, max_length) for b in batches]
    baton = Baton(["ours", "peer", "probe"], alternate=True)
    probe = MatmulProbe()

    def probe_windows() -> list[float]:
        rates = []
        for _ in range(steps):
            rates.append(probe.window(0.5))
            baton.switch()
        return rates

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        out = baton.run({
            "ours": lambda: run_ours(student, batches, teacher.dim, steps, batch, max_length, tmp / "ours",
                                     baton.switch),
            "peer": lambda: run_peer(student, xs, ens, tvecs, proj_init, steps, batch, max_length, tmp / "peer",
                                     baton.switch),
            "probe": probe_windows,
        })
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs = {}
    for who in ("ours", "peer"):
        seg = baton.segments[who]  # [load + set-up + step 1, step 2, ..., step N (+ ours' state write), tail]
        if out[who]["steps"] != steps or len(seg) != steps + 1:
            raise AssertionError(f"{who}: {out[who]['steps']} steps, {len(seg)} segments; expected {steps}")
        steady = seg[1:steps - 1]  # steps 2..N-1
        runs[who] = {"steady": len(steady) * batch / sum(steady), "end_to_end": steps * batch / sum(seg),
                     "step_s": [round(x, 2) for x in seg], "final_loss": out[who]["final_loss"]}
        log(f"stage1_train {who}: steady {runs[who]['steady']:.2f} pairs/s, end-to-end "
            f"{runs[who]['end_to_end']:.2f} pairs/s, segments {runs[who]['step_s']}")
    steady_tokens_per_row = sum(tokens[1:steps - 1]) / ((steps - 2) * batch)
    o, p = runs["ours"]["steady"], runs["peer"]["steady"]
    rows = [
        Row("stage1_train", "pairs_per_s", o, p, "SentenceTransformerTrainer + MSELoss(projection_dim)"),
        Row("stage1_train", "pairs_per_s_end_to_end", runs["ours"]["end_to_end"], runs["peer"]["end_to_end"],
            "incl. load, set-up, ours' state write"),
    ]
    flops_per_row = 6 * check["n_params"] * steady_tokens_per_row
    g_o, g_p = o * flops_per_row / 1e9, p * flops_per_row / 1e9
    rows.append(Row("stage1_train", "achieved_gflops", g_o, g_p, "6 x non-embedding params x real tokens"))
    peak = median(out["probe"])
    rows.append(Row("stage1_train", "fraction_of_peak", g_o / peak, g_p / peak,
                    f"of {peak:.0f} GFLOP/s, fp32 matmul between the steps"))
    log(f"stage1_train: matmul ceiling between steps {[round(r) for r in out['probe']]} GFLOP/s")
    details = {"first_batch": check, "tokens_per_step": tokens, "runs": runs, "matmul_gflops_windows": out["probe"]}
    if check["flop_counter_step"]:
        details["flop_counter_vs_formula"] = check["flop_counter_step"] / (6 * check["n_params"] * tokens[0])
    return rows, details
