"""The trained models of the pipeline: Stage 1, Stage 2 (``mimo``) and the teacher-free baselines.

Each function here is what one training asset calls: it builds the batches from the
corpus or the retrieval pairs, trains with `training.train`, and writes a
sentence-transformers checkpoint to ``models/<model>/<fingerprint>/``. The fingerprint
hashes everything that shapes the weights (initial model, teacher, data, settings), so

- a re-run with the same inputs finds the folder and trains nothing;
- a crash leaves the resumable state in ``models/<model>/.work-<fingerprint>/`` and the
  re-run continues from it (same final weights as an uninterrupted run);
- the training-only projection ``W`` is kept beside the folder
  (``<fingerprint>.projection.safetensors``), never inside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .checkpoint import read_pooling_spec
from .errors import MimoInputError
from .fileio import write_json
from .losses import DISTILL_KINDS, Projection
from .pairs import read_pairs
from .student import ModelCheckpoint
from .teacher import TeacherEmbeddings
from .training import (DistillBatch, LakdaBatch, PairBatch, TrainableEncoder, TrainConfig, infonce_objective,
                       distributed_world, lakda_objective, mimo_objective, stage1_objective, train,
                       xlco_objective)

log = logging.getLogger(__name__)

#: Bumped when the training code changes what a fingerprint's weights would be.
#: 2: Stage 1's least-squares W is fitted on rows the training steps never draw.
TRAINING_CODE_VERSION = "2"
BASELINES = ("infonce", "xlco", "lakda")
PROJECTION_INITS = ("random", "lstsq")


@dataclass(frozen=True)
class StageConfig:
    """One model's training: the loop's settings plus the loss' own."""

    train: TrainConfig
    distill: str = "cosine"  # cosine | mse | l2
    lam: float = 0.2  # Stage 2: weight of the cross-lingual InfoNCE
    alpha: float = 0.5  # LaKDA: weight of the KL term
    projection_init: str = "random"  # Stage 1's W: "random" (the paper) or "lstsq" (fitted to the frozen student)
    projection_fit_rows: int = 512  # "lstsq": rows (x and en sides: twice the vectors) the fit uses
    projection_ridge: float = 10.0  # "lstsq": ridge penalty; measured out of sample (README), 10 beats 1e-3

    def __post_init__(self):
        if self.distill not in DISTILL_KINDS:
            raise MimoInputError(f"{self.distill!r} is not a distillation loss; use one of {DISTILL_KINDS}",
                                 source="distill")
        if not 0.0 <= self.lam <= 1.0:
            raise MimoInputError(f"{self.lam} is outside [0, 1]; set lam (the weight of the cross-lingual "
                                 f"InfoNCE) to a number from 0 to 1, e.g. the paper's 0.2", source="lam")
        if not 0.0 <= self.alpha <= 1.0:
            raise MimoInputError(f"{self.alpha} is outside [0, 1]; set alpha (LaKDA's KL weight) to a number "
                                 f"from 0 to 1, e.g. 0.5", source="alpha")
        if self.projection_init not in PROJECTION_INITS:
            raise MimoInputError(f"{self.projection_init!r}: use one of {PROJECTION_INITS}", source="projection_init")
        if not self.projection_ridge >= 0.0:
            raise MimoInputError(f"{self.projection_ridge!r}: projection_ridge is a penalty, use a number >= 0",
                                 source="projection_ridge")


@dataclass(frozen=True)
class TrainedModel:
    """What a training asset hands on and shows."""

    checkpoint: ModelCheckpoint
    projection_path: str | None
    steps: int
    wall_s: float
    pairs_per_s: float
    final_terms: dict
    history: list = field(default_factory=list)
    resumed_from_step: int = 0
    reused: bool = False  # the checkpoint existed: nothing was trained
    config: dict = field(default_factory=dict)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _order(n_rows: int, n_needed: int, seed: int) -> np.ndarray:
    """Row indices for ``n_needed`` draws: seeded permutations of all rows, epoch after epoch."""
    if n_rows < 1:
        raise MimoInputError("no training rows", source="training data")
    rng = np.random.default_rng(seed)
    epochs = -(-n_needed // n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(epochs)])[:n_needed]


def _run(name: str, init: ModelCheckpoint, fingerprint: str, models_dir: str | Path, cfg: StageConfig,
         objective, batch_at: Callable[[int], object], projection: Projection | None,
         on_log: Callable[[dict], None] | None) -> TrainedModel:
    dest = Path(models_dir) / name / fingerprint
    proj_path = Path(models_dir) / name / f"{fingerprint}.projection.safetensors"
    summary_path = Path(models_dir) / name / f"{fingerprint}.training.json"
    ckpt = ModelCheckpoint(model=name, path=str(dest), fingerprint=fingerprint, source_ref=init.path,
                           dim=init.dim, prompts=dict(init.prompts))
    if (dest / "modules.json").exists() and summary_path.exists():
        log.info("%s: checkpoint %s exists, nothing to train", name, dest)
        s = json.loads(summary_path.read_text())
        return TrainedModel(ckpt, str(proj_path) if proj_path.exists() else None, s["steps"], s["wall_s"],
                            s["pairs_per_s"], s["final_terms"], s["history"], 0, True, s["config"])
    work = Path(models_dir) / name / f".work-{fingerprint}"
    model = TrainableEncoder(init.path, max_length=cfg.train.max_length)
    log.info("%s: training %d steps of %d rows from %s", name, cfg.train.steps, cfg.train.batch_size, init.path)
    result = train(model, objective, batch_at, cfg.train, work,
                   extra_params=[projection] if projection is not None else [], on_log=on_log)
    config = {"stage": asdict(cfg), "init": init.path, "fingerprint": fingerprint}
    if distributed_world()[0] == 0:  # with torch.distributed, rank 0 writes
        if projection is not None:
            projection.save(proj_path)
        model.save(dest)
        write_json({"steps": result.steps, "wall_s": result.wall_s, "pairs_per_s": result.pairs_per_s,
                    "final_terms": result.final_terms, "history": result.history, "config": config}, summary_path)
        shutil.rmtree(work, ignore_errors=True)  # the checkpoint is complete: the resumable state is spent
    return TrainedModel(ckpt, str(proj_path) if projection is not None else None, result.steps, result.wall_s,
                        result.pairs_per_s, result.final_terms, result.history, result.resumed_from_step, False,
                        config)


def train_stage1(init: ModelCheckpoint, corpus_path: str | Path, teacher: TeacherEmbeddings, cfg: StageConfig,
                 models_dir: str | Path, *, on_log=None) -> TrainedModel:
    """Stage 1: distil ``W·s(x)`` and ``W·s(en)`` onto ``T(en)`` over the corpus' training pairs."""
    table = pq.read_table(corpus_path, columns=["text", "en", "split"])
    table = table.filter(pc.equal(table["split"], "train"))
    texts, english = table["text"].to_pylist(), table["en"].to_pylist()
    t = cfg.train
    order = _order(len(texts), t.steps * t.grad_accum * t.batch_size, t.seed)
    needed = list(dict.fromkeys(english[i] for i in order))
    vec_of = dict(zip(needed, teacher.vectors(needed)))
    fp = _fingerprint("stage1", TRAINING_CODE_VERSION, init.fingerprint, teacher.fingerprint,
                      Path(corpus_path).parent.name, asdict(cfg))

    def batch_at(i: int) -> DistillBatch:
        rows = order[i * t.batch_size:(i + 1) * t.batch_size]
        en = [english[r] for r in rows]
        return DistillBatch([texts[r] for r in rows], en, np.stack([vec_of[e] for e in en]))

    projection = Projection(init.dim, teacher.dim, seed=t.seed)
    dest_exists = (Path(models_dir) / "stage1" / fp / "modules.json").exists()
    if cfg.projection_init == "lstsq" and not dest_exists:
        _fit_projection(projection, init, texts, english, teacher,
                        _fit_rows(len(texts), order, cfg.projection_fit_rows, t.seed), t.max_length,
                        cfg.projection_ridge)
    return _run("stage1", init, fp, models_dir, cfg, stage1_objective(projection, kind=cfg.distill), batch_at,
                projection, on_log)


def _fit_projection(projection: Projection, init: ModelCheckpoint, texts, english, teacher: TeacherEmbeddings,
                    rows: np.ndarray, max_length: int, ridge: float) -> None:
    """``W`` by least squares from the frozen student's vectors of both sides to the teacher's."""
    import torch

    from .encoder import SentenceEncoder

    encoder = SentenceEncoder(init.path, max_seq_length=max_length)
    en = [english[r] for r in rows]
    s = np.concatenate([encoder.encode([texts[r] for r in rows]), encoder.encode(en)])
    t = np.concatenate([teacher.vectors(en)] * 2)
    projection.fit_least_squares(torch.from_numpy(s), torch.from_numpy(t), ridge=ridge)
    log.info("stage1: projection fitted by least squares (ridge %g) on %d vectors", ridge, len(s))


def _fit_rows(n_rows: int, drawn: np.ndarray, n_fit: int, seed: int) -> np.ndarray:
    """Rows for Stage 1's least-squares ``W``: a seeded sample of the rows the training
    steps never draw, so that the loss curve starts from ``W``'s out-of-sample loss
    (fitted on the drawn rows, ``W`` fits the first batches in-sample and the curve
    rises when training reaches unseen rows). Tops up from drawn rows when too few are left."""
    rng = np.random.default_rng(seed + 1)
    unseen = np.setdiff1d(np.arange(n_rows), drawn)
    rows = rng.permutation(unseen)[:n_fit]
    if len(rows) < n_fit:
        rows = np.concatenate([rows, rng.permutation(np.unique(drawn))[:n_fit - len(rows)]])
    return rows


def _pairs_order(pairs_path: str | Path, cfg: StageConfig) -> tuple[list[dict], np.ndarray]:
    rows = read_pairs(pairs_path)
    t = cfg.train
    if t.batch_size > len(rows):
        raise MimoInputError(f"batch size {t.batch_size} exceeds the {len(rows)} retrieval pairs in {pairs_path}; "
                             f"lower batch_size to at most {len(rows)} or build more pairs", source="batch_size")
    return rows, _order(len(rows), t.steps * t.grad_accum * t.batch_size, t.seed)


def train_stage2(init: ModelCheckpoint, init_projection: str | None, pairs_path: str | Path,
                 teacher: TeacherEmbeddings, cfg: StageConfig, models_dir: str | Path, *, on_log=None) -> TrainedModel:
    """Stage 2 (``mimo``): λ·cross-lingual InfoNCE + (1−λ)·distillation, from Stage 1 and its ``W``."""
    rows, order = _pairs_order(pairs_path, cfg)
    t = cfg.train
    if init_projection:  # checked before any teacher vector is read or any model loaded
        projection = Projection.load(init_projection)
        if projection.teacher_dim != teacher.dim or projection.student_dim != init.dim:
            raise MimoInputError(
                f"Stage 1's projection maps {projection.student_dim}->{projection.teacher_dim} but the student is "
                f"{init.dim}-d and the teacher {teacher.dim}-d: re-materialise stage1_checkpoint with this teacher",
                source=init_projection)
    else:
        projection = Projection(init.dim, teacher.dim, seed=t.seed)
    used = [rows[i] for i in order]
    needed = list(dict.fromkeys([r["q_en"] for r in used] + [r["p_en"] for r in used]))
    vec_of = dict(zip(needed, teacher.vectors(needed)))
    fp = _fingerprint("mimo", TRAINING_CODE_VERSION, init.fingerprint, teacher.fingerprint,
                      Path(pairs_path).parent.name, asdict(cfg))

    def batch_at(i: int) -> PairBatch:
        b = used[i * t.batch_size:(i + 1) * t.batch_size]
        return PairBatch([r["q_a"] for r in b], [r["p_b"] for r in b],
                         np.stack([vec_of[r["q_en"]] for r in b]), np.stack([vec_of[r["p_en"]] for r in b]))

    objective = mimo_objective(projection, lam=cfg.lam, kind=cfg.distill)
    return _run("mimo", init, fp, models_dir, cfg, objective, batch_at, projection, on_log)


def train_baseline(name: str, init: ModelCheckpoint, pairs_path: str | Path, cfg: StageConfig,
                   models_dir: str | Path, *, on_log=None) -> TrainedModel:
    """A teacher-free baseline on the Stage-2 pairs and schedule: ``infonce``, ``xlco`` or ``lakda``."""
    if name not in BASELINES:
        raise MimoInputError(f"unknown baseline {name!r}; use one of {BASELINES}", source="baseline")
    rows, order = _pairs_order(pairs_path, cfg)
    t = cfg.train
    used = [rows[i] for i in order]
    fp = _fingerprint(name, TRAINING_CODE_VERSION, init.fingerprint, Path(pairs_path).parent.name, asdict(cfg))

    def batch_at(i: int):
        b = used[i * t.batch_size:(i + 1) * t.batch_size]
        if name == "infonce":  # same-language pairs: query and passage both in language a
            return PairBatch([r["q_a"] for r in b], [r["p_a"] for r in b])
        if name == "xlco":
            return PairBatch([r["q_a"] for r in b], [r["p_b"] for r in b])
        return LakdaBatch([r["q_a"] for r in b], [r["q_b"] for r in b], [r["p_b"] for r in b])

    objective = {"infonce": infonce_objective, "xlco": xlco_objective,
                 "lakda": lambda: lakda_objective(alpha=cfg.alpha)}[name]()
    return _run(name, init, fp, models_dir, cfg, objective, batch_at, None, on_log)


def translation_p_at_1(encoder, corpus_path: str | Path, *, split: str = "eval", per_language: int = 200,
                       seed: int = 13, batch_size: int = 64) -> dict[str, float]:
    """Held-out en↔X translation retrieval P@1 of a model's own vectors (mean of both directions).

    ``encoder`` is a `encoder.SentenceEncoder`. For each language, ``per_language`` seeded
    pairs of the split: each English sentence retrieves among the X sentences and vice
    versa. Returns ``{lang: P@1, "all": mean}``.
    """
    table = pq.read_table(corpus_path, columns=["text", "en", "lang", "split"])
    table = table.filter(pc.equal(table["split"], split))
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    langs = table["lang"].to_pylist()
    texts, english = table["text"].to_pylist(), table["en"].to_pylist()
    for lang in sorted(set(langs)):
        idx = [i for i, g in enumerate(langs) if g == lang]
        idx = sorted(rng.choice(idx, size=min(per_language, len(idx)), replace=False).tolist())
        en = encoder.encode([english[i] for i in idx], prompt="query", batch_size=batch_size, normalize=True)
        x = encoder.encode([texts[i] for i in idx], prompt="query", batch_size=batch_size, normalize=True)
        sim = en @ x.T
        gold = np.arange(len(idx))
        out[lang] = float(((sim.argmax(1) == gold).mean() + (sim.argmax(0) == gold).mean()) / 2)
    out["all"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


@dataclass(frozen=True)
class CheckpointReport:
    """A checkpoint reloaded from disk: does it embed to its dimension, finitely; its P@1."""

    ok: bool
    dim: int
    translation_p1: dict


def inspect_checkpoint(ckpt: ModelCheckpoint, corpus_path: str | Path | None, *, per_language: int = 200) -> CheckpointReport:
    """Reload ``ckpt`` once: probe two sentences and (with a corpus) measure held-out P@1.

    The figures are cached beside the checkpoint (``<folder>.report-<key>.json``), so a
    reused checkpoint is not re-measured.
    """
    from .encoder import SentenceEncoder

    key = _fingerprint(str(corpus_path), per_language)[:8]
    cache = Path(ckpt.path).parent / f"{Path(ckpt.path).name}.report-{key}.json"
    if cache.exists():
        d = json.loads(cache.read_text())
        return CheckpointReport(d["ok"], d["dim"], d["translation_p1"])
    encoder = SentenceEncoder(ckpt.path)
    vecs = encoder.encode(["In the beginning.", "Am Anfang."], prompt="query")
    dim = int(vecs.shape[1])
    ok = bool(np.isfinite(vecs).all()) and dim == read_pooling_spec(ckpt.path).dim
    p1 = translation_p_at_1(encoder, corpus_path, per_language=per_language) if corpus_path else {}
    write_json({"ok": ok, "dim": dim, "translation_p1": p1}, cache)
    return CheckpointReport(ok, dim, p1)


def loss_curve_plot(history: Sequence[dict], path: str | Path, title: str) -> Path | None:
    """The loss terms over steps as a PNG (None when nothing was logged)."""
    from .analysis import _new_figure, _save_png

    if not history:
        return None
    fig = _new_figure((6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    steps = [h["step"] for h in history]
    for key in sorted({k for h in history for k in h} - {"step", "lr", "pairs_per_s"}):
        ax.plot(steps, [h.get(key, np.nan) for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_png(fig, path)
