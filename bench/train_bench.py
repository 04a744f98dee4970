"""`stage1_train` and `stage2_train`: our training against the official MIMO recipe, side by side.

Both sides train on `SentenceTransformerTrainer`. What differs is the teacher: the
official code (yjoonjang/MIMO, ``src/mimo/trainer/trainer.py``) runs the frozen teacher
on the English side of every batch during training; ours reads the teacher's vectors
from the Parquet cache as the dataset's ``label`` column (`mimo_pipeline.stages`), so a
step costs the student's passes only. The peer here is that recipe as a user would run
it: the same loss module and trainer, with the teacher's vectors of each batch computed
online (``teacher.encode`` of the batch's English texts, no gradient) instead of read.

- ``stage1_train``: Stage 1, `losses.stage1_loss` (EmbedDistillLoss, cosine, projection
  ``W`` 384 → teacher dim) on ``steps × batch`` (verse, English) rows;
- ``stage2_train``: Stage 2, `losses.CachedMimoLoss` (λ = 0.2, gradient-cached with
  mini-batches of ``batch / 2``) on the same number of (verse, English verse) pairs,
  teacher vectors of both sides.

The student is the converted multilingual-e5-small folder, fp32, word embeddings frozen,
max length ``max_length``; same rows, same order, same seed, same optimiser
(`trainer.TrainConfig` defaults: AdamW fused, linear warm-up and decay, clipping 1.0).
Before timing, the two losses are evaluated on the first batch in eval mode and must
agree (``first_batch`` in the details).

Timing: both sides run in this process in two threads that take turns (`interleave.Baton`)
at every optimiser step (ABBA), so background load on the shared cores hits both alike;
each side's time is the sum of its own turns. ``rows_per_s`` is the steady state, rows
per second over steps 2..N-1 (step 1 carries the model load and the trainer's set-up);
``rows_per_s_end_to_end`` counts every turn.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimo_pipeline.catalog import ResolvedModel
from mimo_pipeline.losses import CachedMimoLoss, make_projection, stage1_loss
from mimo_pipeline.teacher import TeacherEmbeddings
from mimo_pipeline.trainer import TrainConfig, fit, load_student

from .common import Row, log
from .interleave import Baton

LANGS = ("de", "fr", "zh", "ru")
SEED = 0


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


class OnlineTeacher:
    """The peer's teacher: the frozen teacher model run on each batch's English texts.

    The trainer's collator tokenises text columns for the student only, so the peer reads
    the English texts of step ``i`` from the row order (batches are sequential) and
    encodes them with the teacher, as the official trainer does with its teacher columns.
    """

    def __init__(self, teacher_path: str, english: list[list[str]], batch: int):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(teacher_path, device="cpu", local_files_only=True)
        self.model.eval()
        self.english, self.batch, self.calls = english, batch, 0

    def labels(self) -> torch.Tensor:
        lo = (self.calls % (len(self.english[0]) // self.batch)) * self.batch
        self.calls += 1
        with torch.no_grad():
            cols = [self.model.encode(col[lo:lo + self.batch], convert_to_tensor=True, batch_size=self.batch,
                                      show_progress_bar=False) for col in self.english]
        return cols[0] if len(cols) == 1 else torch.stack(cols, dim=1)


class OnlineStage1Loss(nn.Module):
    """Stage 1 with the teacher online: ``EmbedDistillLoss`` fed the teacher's vectors of the batch."""

    def __init__(self, inner, teacher: OnlineTeacher):
        super().__init__()
        self.inner, self.teacher = inner, teacher
        self.model = inner.model

    def forward(self, sentence_features, labels=None):
        return self.inner(sentence_features, self.teacher.labels().to(next(self.inner.parameters()).device))


class OnlineMimoLoss(CachedMimoLoss):
    """Stage 2 with the teacher online: `CachedMimoLoss` fed the teacher's vectors of the batch."""

    def attach(self, teacher: OnlineTeacher) -> "OnlineMimoLoss":
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: the teacher is frozen
        return self

    def forward(self, sentence_features, labels=None):
        return super().forward(sentence_features, self._teacher.labels())


def _config(steps: int, batch: int, max_length: int, mini_batch: int | None = None, lr: float = 1e-4) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, mini_batch_size=mini_batch, lr=lr, max_length=max_length,
                       seed=SEED, freeze_word_embeddings=True, checkpoint_every=0, log_every=1, device="cpu")


def _switcher(baton: Baton):
    from transformers import TrainerCallback

    class Switch(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1
            baton.switch()

    return Switch()


def _datasets(xs, ens, tvecs, batch):
    from datasets import Dataset

    n = len(xs)
    nxt = [(i + 1) % n for i in range(n)]
    s1 = Dataset.from_dict({"text": xs, "label": tvecs.tolist()})
    s2 = Dataset.from_dict({"anchor": xs, "positive": [ens[j] for j in nxt],
                            "label": np.stack([tvecs, tvecs[nxt]], axis=1).tolist()})
    return s1, s2, [ens[j] for j in nxt]


def run_train(student: ResolvedModel, teacher: TeacherEmbeddings, english: list[str], *, steps: int = 10,
              batch: int = 16, max_length: int = 64, count_flops: bool = False,
              seed: int = 0) -> tuple[list[Row], dict]:
    """Stage 1 and Stage 2 training throughput, ours (cached teacher) against the official recipe
    (teacher online); see the module docstring. ``count_flops`` is accepted for the CLI and unused."""
    if steps < 3:
        raise ValueError("the training benches need steps >= 3 (the steady state is steps 2..N-1)")
    xs, ens = distill_rows(english, steps * batch, seed=seed)
    tvecs = np.asarray(teacher.vectors(ens), dtype=np.float32)
    s1, s2, p_en = _datasets(xs, ens, tvecs, batch)
    dim = teacher.dim
    prompts1 = {"text": "query: "}
    prompts2 = {"anchor": "query: ", "positive": "passage: "}
    mini = max(1, batch // 2)
    rows: list[Row] = []
    details: dict = {}
    for bench, data, prompts in (("stage1_train", s1, prompts1), ("stage2_train", s2, prompts2)):
        english_cols = [ens] if bench == "stage1_train" else [ens, p_en]
        cfg = _config(steps, batch, max_length, mini if bench == "stage2_train" else None,
                      lr=1e-4 if bench == "stage1_train" else 2e-5)

        def make_loss(model, online: bool):
            proj = make_projection(model.get_embedding_dimension(), dim, seed=SEED)
            if bench == "stage1_train":
                inner = stage1_loss(model, proj)
                return OnlineStage1Loss(inner, OnlineTeacher(teacher.teacher_path, english_cols, batch)) \
                    if online else inner
            if online:
                return OnlineMimoLoss(model, proj, mini_batch_size=mini).attach(
                    OnlineTeacher(teacher.teacher_path, english_cols, batch))
            return CachedMimoLoss(model, proj, mini_batch_size=mini)

        check = _first_batch(student, data, make_loss, cfg, prompts, batch)
        if abs(check["ours"] - check["peer"]) > 1e-3 * max(1.0, abs(check["peer"])):
            raise AssertionError(f"{bench}: the two losses disagree on the first batch: {check}")
        log(f"{bench}: {steps} steps x {batch} rows; first-batch loss ours {check['ours']:.5f}, "
            f"official recipe {check['peer']:.5f}")
        baton = Baton(["ours", "peer"], alternate=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{bench}-"))

        def side(online: bool, work: Path):
            model = load_student(student.path, cfg)
            switch = _switcher(baton)
            fit(model, make_loss(model, online), data, cfg, work, prompts=prompts, callbacks=[switch])
            return {"steps": switch.steps}

        try:
            out = baton.run({"ours": lambda: side(False, tmp / "ours"), "peer": lambda: side(True, tmp / "peer")})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        runs = {}
        for who in ("ours", "peer"):
            seg = baton.segments[who]  # [load + set-up + step 1, step 2, ..., step N, tail]
            if out[who]["steps"] != steps or len(seg) != steps + 1:
                raise AssertionError(f"{bench} {who}: {out[who]['steps']} steps, {len(seg)} segments")
            steady = seg[1:steps - 1]
            runs[who] = {"steady": len(steady) * batch / sum(steady), "end_to_end": steps * batch / sum(seg),
                         "step_s": [round(x, 2) for x in seg]}
            log(f"{bench} {who}: steady {runs[who]['steady']:.2f} rows/s, end-to-end {runs[who]['end_to_end']:.2f}")
        rows.append(Row(bench, "rows_per_s", runs["ours"]["steady"], runs["peer"]["steady"],
                        "SentenceTransformerTrainer; peer: teacher online every batch (official recipe)"))
        rows.append(Row(bench, "rows_per_s_end_to_end", runs["ours"]["end_to_end"], runs["peer"]["end_to_end"],
                        "incl. model loads and trainer set-up"))
        details[bench] = {"first_batch": check, "runs": runs}
    return rows, details


def _first_batch(student: ResolvedModel, data, make_loss, cfg: TrainConfig, prompts: dict, batch: int) -> dict:
    """Both losses on the first batch in eval mode: the same math on the same rows."""
    model = load_student(student.path, cfg)
    model.eval()
    first = data.select(range(batch))
    features = []
    for col in [c for c in first.column_names if c != "label"]:
        features.append(model.preprocess([prompts.get(col, "") + t for t in first[col]]))
    labels = torch.tensor(first["label"], dtype=torch.float32)
    with torch.no_grad():
        ours = float(make_loss(model, False)(features, labels))
        peer = float(make_loss(model, True)(features, None))
    return {"ours": ours, "peer": peer}
