"""The trained models of the pipeline: Stage 1, Stage 2 (``mimo``) and the teacher-free baselines.

Orchestration only. Each function here is what one training asset calls: it lays the
training rows out in order as a `datasets.Dataset` (text columns, and the teacher's
cached vectors as the ``label`` column: the teacher never runs during training), builds
the loss module (`losses`), trains with `trainer.fit` (SentenceTransformerTrainer) and
writes a sentence-transformers checkpoint to ``models/<model>/<fingerprint>/``. The
fingerprint hashes everything that shapes the weights (initial model, teacher, data,
settings, ``batch_size`` and ``mini_batch_size`` included), so

- a re-run with the same inputs finds the folder and trains nothing;
- a crash leaves the trainer's checkpoints in ``models/<model>/.work-<fingerprint>/`` and
  the re-run resumes from the last one (same final weights as an uninterrupted run);
- the training-only projection ``W`` is kept beside the folder
  (``<fingerprint>.projection.safetensors``, `EmbedDistillLoss.save_projection`'s format),
  never inside it.

Prompts, one convention for every stage: queries get the student's ``query`` prompt,
passages its ``document`` prompt (e5: ``"query: "`` / ``"passage: "``), as in evaluation;
Stage 1's parallel sentences, the least-squares fit of ``W`` and the held-out P@1 probe
use the ``query`` prompt (e5's advice for symmetric tasks such as bitext mining), so the
``W`` that Stage 2 starts from was fitted and trained on the inputs Stage 2 feeds it for
queries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import losses
from .errors import MimoInputError
from .fileio import atomic_dir, file_lock, sha256_file, write_json
from .losses import (ALPHA, DISTILL_KINDS, LAMBDA, contrastive_loss, fit_least_squares, load_projection,
                     make_projection, save_projection, stage1_loss)
from .pairs import read_pairs
from .student import ModelCheckpoint
from .teacher import TeacherEmbeddings
from .trainer import TrainConfig, distributed_world, fit, load_student

log = logging.getLogger(__name__)

#: Bumped when the training code changes what a fingerprint's weights would be.
#: 2: Stage 1's least-squares W is fitted on rows the training steps never draw.
#: 3: SentenceTransformerTrainer with gradient caching; one prompt convention; English identity
#:    rows as data; LaKDA's passage language drawn independently.
TRAINING_CODE_VERSION = "3"
BASELINES = ("infonce", "xlco", "lakda")
PROJECTION_INITS = ("random", "lstsq")

# The paper's settings (DESIGN §1); the Dagster configs read their defaults from here.
STAGE1_LR = 1e-4
STAGE2_LR = 2e-5
STAGE1_PROMPT = "query"
DEFAULT_SEED = 13
#: The λ ablation (DESIGN §2): Stage 2 from the same Stage-1 checkpoint and W with these λ, beside mimo's 0.2.
ABLATION_LAMBDAS = (0.0, 0.5, 1.0)
#: Stage 1's quality gate: held-out translation P@1 may fall at most this far below the base student's.
P1_MARGIN = 0.05
#: The corpus split of the held-out P@1 probe and the gate it decides: dev (Old Testament books training
#: never draws), so that no choice is made on the New Testament, which stays test only.
P1_SPLIT = "dev"


@dataclass(frozen=True)
class StageConfig:
    """One model's training: the trainer's settings plus the loss' and the data's own."""

    train: TrainConfig
    distill: str = "cosine"  # cosine | mse | l2
    lam: float = LAMBDA  # Stage 2: weight of the cross-lingual InfoNCE
    alpha: float = ALPHA  # LaKDA: weight of the KL term
    projection_init: str = "lstsq"  # Stage 1's W: "lstsq" (fitted to the frozen student) or "random" (the paper)
    projection_fit_rows: int = 512  # "lstsq": rows the fit uses (rows training never draws)
    projection_ridge: float = 10.0  # "lstsq": ridge penalty; measured out of sample (README)
    english_share: float | None = None  # Stage 1: share of English identity rows; None = one per English sentence

    def __post_init__(self):
        if self.distill not in DISTILL_KINDS:
            raise MimoInputError(f"{self.distill!r} is not a distillation loss; use one of {DISTILL_KINDS}",
                                 source="distill")
        if not 0.0 <= self.lam <= 1.0:
            raise MimoInputError(f"{self.lam} is outside [0, 1]; set lam (the weight of the cross-lingual "
                                 f"InfoNCE) to a number from 0 to 1, e.g. the paper's {LAMBDA}", source="lam")
        if not 0.0 <= self.alpha <= 1.0:
            raise MimoInputError(f"{self.alpha} is outside [0, 1]; set alpha (LaKDA's KL weight) to a number "
                                 f"from 0 to 1, e.g. {ALPHA}", source="alpha")
        if self.projection_init not in PROJECTION_INITS:
            raise MimoInputError(f"{self.projection_init!r}: use one of {PROJECTION_INITS}", source="projection_init")
        if not self.projection_ridge >= 0.0:
            raise MimoInputError(f"{self.projection_ridge!r}: projection_ridge is a penalty, use a number >= 0",
                                 source="projection_ridge")
        if self.english_share is not None and not 0.0 <= self.english_share < 1.0:
            raise MimoInputError(f"{self.english_share!r}: english_share is a fraction of the rows in [0, 1), or "
                                 "unset for one identity row per English sentence", source="english_share")


@dataclass(frozen=True)
class TrainedModel:
    """What a training asset hands on and shows."""

    checkpoint: ModelCheckpoint
    projection_path: str | None
    steps: int
    wall_s: float
    rows_per_s: float
    final_terms: dict
    history: list = field(default_factory=list)
    resumed_from_step: int = 0
    reused: bool = False  # the checkpoint existed: nothing was trained
    config: dict = field(default_factory=dict)
    translation_p1: dict = field(default_factory=dict)  # held-out en↔X P@1 of the trained model

    @property
    def seed(self) -> int | None:
        return self.config.get("stage", {}).get("train", {}).get("seed")


def lambda_model_name(lam: float) -> str:
    """``mimo_lambda_0``, ``mimo_lambda_0.5``, ``mimo_lambda_1`` (the contract's names)."""
    return f"mimo_lambda_{lam:g}"


@dataclass(frozen=True)
class TrainedSet:
    """What a training asset hands on: model name -> seed -> `TrainedModel`."""

    models: dict

    def get(self, name: str, seed: int | None = None) -> TrainedModel:
        by_seed = self.models[name]
        return by_seed[seed] if seed is not None else by_seed[min(by_seed)]

    def own_or_first(self, name: str, seed: int) -> TrainedModel:
        """The model of ``seed``, else of the lowest seed: the Stage 1 a Stage-2 model of ``seed`` starts from."""
        by_seed = self.models[name]
        return by_seed.get(seed, by_seed[min(by_seed)])

    def seeds(self, name: str) -> list[int]:
        return sorted(self.models.get(name, {}))

    def names(self) -> list[str]:
        return list(self.models)

    def all(self) -> list[tuple[str, int, TrainedModel]]:
        return [(name, seed, t) for name, by_seed in self.models.items() for seed, t in sorted(by_seed.items())]


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_fingerprint(name: str, init: ModelCheckpoint, data_path: str | Path, cfg: StageConfig,
                           teacher: TeacherEmbeddings | None = None) -> str:
    """A trained checkpoint's folder name: the model, the training code, the initial weights, the teacher's
    vectors (model and precision; none for a teacher-free baseline), the data file's content-addressed folder
    and every setting of ``cfg``, ``batch_size`` and ``mini_batch_size`` among them, precision and
    autocast as they run here (`TrainConfig.resolved`: ``auto`` trains otherwise on another machine)."""
    return _fingerprint(name, TRAINING_CODE_VERSION, init.fingerprint,
                        *([teacher.fingerprint] if teacher is not None else []), Path(data_path).parent.name,
                        asdict(replace(cfg, train=cfg.train.resolved())))


def _order(n_rows: int, n_needed: int, seed: int) -> np.ndarray:
    """Row indices for ``n_needed`` draws: seeded permutations of all rows, epoch after epoch."""
    if n_rows < 1:
        raise MimoInputError("no training rows", source="training data")
    rng = np.random.default_rng(seed)
    epochs = -(-n_needed // n_rows)
    return np.concatenate([rng.permutation(n_rows) for _ in range(epochs)])[:n_needed]


def _prompt(init: ModelCheckpoint, kind: str) -> str:
    return (init.prompts or {}).get(kind, "")


def _folder_hashes(folder: Path) -> dict[str, str]:
    from .fileio import sha256_file

    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_ready(models_dir: str | Path, name: str, fingerprint: str) -> bool:
    """Whether ``models/<name>/<fingerprint>/`` is complete and intact: its summary exists and
    every file matches the SHA-256 written with it. A folder that does not match is moved
    aside (``.corrupt-<UTC>``, a WARNING says so) and False is returned: it is retrained."""
    from .fileio import quarantine

    dest = Path(models_dir) / name / fingerprint
    summary = Path(models_dir) / name / f"{fingerprint}.training.json"
    if not ((dest / "modules.json").exists() and summary.exists()):
        return False
    meta = json.loads(summary.read_text())
    want, want_w = meta.get("content_sha256"), meta.get("projection_sha256")
    if want is None:  # written before checkpoints carried their hashes
        return True
    projection = Path(models_dir) / name / f"{fingerprint}.projection.safetensors"
    intact = _folder_hashes(dest) == want and (
        want_w is None or (projection.exists() and sha256_file(projection) == want_w))
    if intact:
        return True
    quarantine(dest, f"{name} is retrained from its fingerprint {fingerprint}")
    quarantine(summary, "it is rewritten with the retrained checkpoint")
    if projection.exists():
        quarantine(projection, "it is rewritten with the retrained checkpoint")
    return False


def _run(name: str, init: ModelCheckpoint, fingerprint: str, models_dir: str | Path, cfg: StageConfig,
         build_loss: Callable, dataset, prompts: dict[str, str], on_log, *, p1_corpus=None,
         card: dict | None = None) -> TrainedModel:
    dest = Path(models_dir) / name / fingerprint
    proj_path = Path(models_dir) / name / f"{fingerprint}.projection.safetensors"
    summary_path = Path(models_dir) / name / f"{fingerprint}.training.json"
    ckpt = ModelCheckpoint(model=name, path=str(dest), fingerprint=fingerprint, source_ref=init.path,
                           dim=init.dim, prompts=dict(init.prompts))
    if (dest / "modules.json").exists() and summary_path.exists():  # the caller checked it (checkpoint_ready)
        log.info("%s: checkpoint %s exists, nothing to train", name, dest)
        s = json.loads(summary_path.read_text())
        return TrainedModel(ckpt, str(proj_path) if proj_path.exists() else None, s["steps"], s["wall_s"],
                            s["rows_per_s"], s["final_terms"], s["history"], 0, True, s["config"],
                            s.get("translation_p1", {}))
    with _training_lock(Path(models_dir) / name / f".{fingerprint}.lock"):
        if (dest / "modules.json").exists() and summary_path.exists():  # another run trained it meanwhile
            return _run(name, init, fingerprint, models_dir, cfg, build_loss, dataset, prompts, on_log,
                        p1_corpus=p1_corpus, card=card)
        return _train(name, init, fingerprint, models_dir, cfg, build_loss, dataset, prompts, on_log,
                      p1_corpus=p1_corpus, card=card, dest=dest, proj_path=proj_path, summary_path=summary_path,
                      ckpt=ckpt)


@contextlib.contextmanager
def _training_lock(path: Path):
    """One process trains a fingerprint at a time: two runs of the pipeline on one MIMO_HOME
    would otherwise share (and clobber) one work folder. The second waits, then finds the
    checkpoint. Under torch.distributed the launcher's process holds no lock: ranks must not
    wait on each other here."""
    if distributed_world()[1] > 1:
        yield
        return
    with file_lock(path, waiting=f"{path.parent.name}: another process is training this fingerprint; waiting for it"):
        yield


def _train(name, init, fingerprint, models_dir, cfg, build_loss, dataset, prompts, on_log, *, p1_corpus, card,
           dest, proj_path, summary_path, ckpt) -> TrainedModel:
    from .probe import translation_p_at_1

    work = Path(models_dir) / name / f".work-{fingerprint}"
    if dataset is None:
        raise MimoInputError(f"{name}: no training rows were laid out (the checkpoint {dest} vanished while "
                             "this run started); re-run the asset", source=str(dest))
    if distributed_world()[0] == 0:  # the rank that writes
        _remove_dead_writes(dest)
    model = load_student(init.path, cfg.train)
    loss = build_loss(model)
    t = cfg.train
    log.info("%s: training %d steps of %d rows (mini-batches of %d) from %s", name, t.steps, t.batch_size,
             t.chunk, init.path)
    result = fit(model, loss, dataset, t, work, prompts=prompts, on_log=on_log)
    config = {"stage": asdict(cfg), "init": init.path, "fingerprint": fingerprint}
    p1 = {}
    projection = getattr(loss, "projection", None)
    if distributed_world()[0] == 0:  # with torch.distributed, rank 0 writes
        if p1_corpus is not None:  # held-out en↔X P@1 of the model in memory, for the card and the gate
            p1 = translation_p_at_1(model, p1_corpus, split=P1_SPLIT, per_language=(card or {}).get("p1_pairs", 100),
                                    precision=t.precision)
        if projection is not None:
            save_projection(projection, proj_path)
        with atomic_dir(dest) as tmp:
            model.save(str(tmp))
            _keep_initial_tokenizer(init.path, tmp)
            _keep_initial_max_seq_length(init.path, tmp)
            _append_card(tmp / "README.md", name, cfg, init, card or {}, result, p1)
        write_json({"steps": result.steps, "wall_s": result.wall_s, "rows_per_s": result.rows_per_s,
                    "final_terms": result.final_terms, "history": result.history, "config": config,
                    "translation_p1": p1, "content_sha256": _folder_hashes(dest),
                    "projection_sha256": sha256_file(proj_path) if projection is not None else None}, summary_path)
        shutil.rmtree(work, ignore_errors=True)  # the checkpoint is complete: the trainer state is spent
    return TrainedModel(ckpt, str(proj_path) if projection is not None else None, result.steps, result.wall_s,
                        result.rows_per_s, result.final_terms, result.history, result.resumed_from_step, False,
                        config, p1)


def _remove_dead_writes(dest: Path) -> None:
    """Remove the temporary files and folders of this fingerprint (``.<fingerprint>.*.tmp``: the
    checkpoint folder, its projection, its summary) that a killed process left half-written: under
    the training lock no live process writes them, and a checkpoint folder is the model's size."""
    for stale in sorted(dest.parent.glob(f".{dest.name}.*.tmp")):
        log.warning("%s: removing %s, left half-written by a run that was killed", dest.parent.name, stale.name)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _keep_initial_tokenizer(init: str | Path, folder: Path) -> None:
    """Put the initial model's tokenizer files, byte for byte, in place of the ones the trainer saved.

    Training changes no token, but the trainer's save of the tokenizer records its state: the
    training max length as a truncation, padding, the arguments it was loaded with. Left so, the
    checkpoints of one student carry three different tokenizer files (base, trained once, trained
    twice) and `encoder.load_tokenizer` loads the same tokenizer again for each (2.5 s for
    multilingual-e5-small). An initial model without tokenizer files (or not a local folder) keeps
    the trainer's."""
    from .catalog import TOKENIZER_PATTERNS

    init = Path(init)
    source = [f for f in init.iterdir() if f.name in TOKENIZER_PATTERNS and f.is_file()] if init.is_dir() else []
    if not source:
        return
    for f in folder.iterdir():
        if f.name in TOKENIZER_PATTERNS:
            f.unlink()
    for f in source:
        shutil.copyfile(f, folder / f.name)


def _keep_initial_max_seq_length(init: str | Path, folder: Path) -> None:
    """Write the initial model's input limit into the checkpoint's ``sentence_bert_config.json``.

    sentence-transformers no longer saves ``max_seq_length`` there; the limit it then reloads is
    the tokenizer's ``model_max_length``, the initial model's since `_keep_initial_tokenizer`. For
    a student whose own limit is below that (one with ``max_seq_length: 128`` and a tokenizer of
    512), its checkpoints would load, and be evaluated (`checkpoint.read_pooling_spec`), at another
    limit than the student. Training's ``max_length`` is a training setting, not the model's."""
    from .checkpoint import read_pooling_spec

    config = folder / "sentence_bert_config.json"
    if not config.is_file() or not Path(init).is_dir():
        return
    data = json.loads(config.read_text())
    data["max_seq_length"] = read_pooling_spec(init).max_seq_length
    write_json(data, config)


def _append_card(path: Path, name: str, cfg: StageConfig, init: ModelCheckpoint, card: dict, result, p1) -> None:
    """The pipeline's section of the model card: recipe, teacher, data, seed, held-out figures."""
    t = cfg.train
    lines = ["", "## MIMO pipeline", "",
             f"- model: `{name}`; recipe: {card.get('recipe', name)}",
             f"- initial model: `{init.path}`",
             f"- teacher: `{card.get('teacher', 'none (teacher-free)')}`",
             f"- base student: `{card.get('student_base') or init.source_ref}`",
             f"- data: {card.get('data', '')}",
             f"- seed {t.seed}; {t.steps} steps × {t.batch_size} rows (gradient-cache mini-batches of {t.chunk}); "
             f"lr {t.lr}, warmup {t.warmup_ratio}, max length {t.max_length}, "
             f"word embeddings {'frozen' if t.freeze_word_embeddings else 'trained'}",
             "- final loss terms: " + ", ".join(f"{k} {v:.4f}" for k, v in result.final_terms.items()
                                                 if k not in ("lr", "rows_per_s", "grad_norm"))]
    if p1:
        lines.append(f"- held-out en↔X translation P@1 ({P1_SPLIT} split): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in sorted(p1.items())))
    text = path.read_text() if path.exists() else f"# {name}\n"
    path.write_text(text.rstrip() + "\n" + "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- Stage 1


@dataclass(frozen=True)
class Stage1Rows:
    """Stage 1's rows: every (text, English) pair of the training split plus English identity rows."""

    texts: list[str]
    english: list[str]
    n_identity: int


def stage1_rows(corpus_path: str | Path, english_share: float | None, seed: int) -> Stage1Rows:
    """The corpus' training pairs (sentence in X, its English) plus English identity rows
    (English, English), as the official data preparation adds them: by default one per
    distinct English sentence; with ``english_share`` = s, ``s/(1−s)`` of the X rows."""
    table = pq.read_table(corpus_path, columns=["text", "en", "split"])
    table = table.filter(pc.equal(table["split"], "train"))
    texts, english = table["text"].to_pylist(), table["en"].to_pylist()
    distinct = list(dict.fromkeys(english))
    if english_share is None:
        identity = distinct
    else:
        n = int(round(english_share / (1.0 - english_share) * len(texts)))
        rng = np.random.default_rng(seed)
        identity = [distinct[i] for i in _order(len(distinct), n, int(rng.integers(2**31)))] if n else []
    return Stage1Rows(texts + identity, english + identity, len(identity))


def train_stage1(init: ModelCheckpoint, corpus_path: str | Path, teacher: TeacherEmbeddings, cfg: StageConfig,
                 models_dir: str | Path, *, on_log=None, p1_corpus=None, card: dict | None = None) -> TrainedModel:
    """Stage 1: distil ``W·s(text)`` onto ``T(en)`` over the corpus' training pairs and English identity rows."""
    from datasets import Dataset

    t = cfg.train
    rows = stage1_rows(corpus_path, cfg.english_share, t.seed)
    order = _order(len(rows.texts), t.steps * t.batch_size, t.seed)
    fp = checkpoint_fingerprint("stage1", init, corpus_path, cfg, teacher)
    dest_exists = checkpoint_ready(models_dir, "stage1", fp)
    dataset = None
    projection = make_projection(init.dim, teacher.dim, seed=t.seed)
    if not dest_exists:
        english = [rows.english[i] for i in order]
        needed = list(dict.fromkeys(english))
        vec_of = dict(zip(needed, teacher.vectors(needed)))
        dataset = Dataset.from_dict({"text": [rows.texts[i] for i in order],
                                     "label": np.stack([vec_of[e] for e in english]).tolist()})
        if cfg.projection_init == "lstsq":
            fit_projection(projection, init, rows, teacher, _fit_rows(len(rows.texts), order, cfg.projection_fit_rows,
                                                                      t.seed), t.max_length, cfg.projection_ridge,
                           t.precision)
    card = {"recipe": f"Stage 1: EmbedDistillLoss ({cfg.distill}) through W "
                      f"({cfg.projection_init} init), English identity rows {rows.n_identity} of {len(rows.texts)}",
            "data": f"parallel corpus `{corpus_path}` (training split)", **(card or {})}
    return _run("stage1", init, fp, models_dir, cfg, lambda m: stage1_loss(m, projection, cfg.distill), dataset,
                {"text": _prompt(init, STAGE1_PROMPT)}, on_log, p1_corpus=p1_corpus, card=card)


def fit_projection(projection, init: ModelCheckpoint, rows: Stage1Rows, teacher: TeacherEmbeddings,
                   fit_rows: np.ndarray, max_length: int, ridge: float, precision: str = "fp32") -> None:
    """``W`` by least squares from the frozen student's vectors of ``fit_rows`` (Stage 1's
    prompt, encoded in ``precision``) to the teacher's vectors of their English versions."""
    import torch

    from .encoder import SentenceEncoder

    encoder = SentenceEncoder(init.path, max_seq_length=max_length, precision=precision)
    s = encoder.encode([rows.texts[r] for r in fit_rows], prompt=STAGE1_PROMPT)
    t = teacher.vectors([rows.english[r] for r in fit_rows])
    fit_least_squares(projection, torch.from_numpy(np.asarray(s)), torch.from_numpy(np.asarray(t)), ridge=ridge)
    log.info("stage1: projection fitted by least squares (ridge %g) on %d rows", ridge, len(fit_rows))


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


# --------------------------------------------------------------------------- Stage 2 and baselines


def _pairs_order(pairs_path: str | Path, cfg: StageConfig) -> list[dict]:
    rows = read_pairs(pairs_path)
    t = cfg.train
    if t.batch_size > len(rows):
        raise MimoInputError(f"batch size {t.batch_size} exceeds the {len(rows)} retrieval pairs in {pairs_path}; "
                             f"lower batch_size to at most {len(rows)} or build more pairs", source="batch_size")
    return [rows[i] for i in _order(len(rows), t.steps * t.batch_size, t.seed)]


def train_stage2(init: ModelCheckpoint, init_projection: str | None, pairs_path: str | Path,
                 teacher: TeacherEmbeddings, cfg: StageConfig, models_dir: str | Path, *, name: str = "mimo",
                 on_log=None, p1_corpus=None, card: dict | None = None) -> TrainedModel:
    """Stage 2 (``mimo``): λ·cross-lingual InfoNCE + (1−λ)·distillation, from Stage 1 and its ``W``."""
    t = cfg.train
    if init_projection:  # checked before any teacher vector is read or any model loaded
        projection = load_projection(init_projection)
        if projection.out_features != teacher.dim or projection.in_features != init.dim:
            raise MimoInputError(
                f"Stage 1's projection maps {projection.in_features}->{projection.out_features} but the student is "
                f"{init.dim}-d and the teacher {teacher.dim}-d: re-materialise stage1_checkpoint with this teacher",
                source=init_projection)
    else:
        projection = make_projection(init.dim, teacher.dim, seed=t.seed)
    used = _pairs_order(pairs_path, cfg)
    fp = checkpoint_fingerprint(name, init, pairs_path, cfg, teacher)
    dataset = None
    if not checkpoint_ready(models_dir, name, fp):
        from datasets import Dataset

        needed = list(dict.fromkeys([r["q_en"] for r in used] + [r["p_en"] for r in used]))
        vec_of = dict(zip(needed, teacher.vectors(needed)))
        dataset = Dataset.from_dict({
            "anchor": [r["q_a"] for r in used], "positive": [r["p_b"] for r in used],
            "label": np.stack([np.stack([vec_of[r["q_en"]], vec_of[r["p_en"]]]) for r in used]).tolist()})
    card = {"recipe": f"Stage 2: {cfg.lam}·cross-lingual InfoNCE + {1 - cfg.lam:g}·distillation ({cfg.distill}) "
                      f"through Stage 1's W, gradient-cached", "data": f"retrieval pairs `{pairs_path}`",
            **(card or {})}
    return _run(name, init, fp, models_dir, cfg,
                lambda m: losses.CachedMimoLoss(m, projection, lam=cfg.lam, kind=cfg.distill, mini_batch_size=t.chunk),
                dataset, {"anchor": _prompt(init, "query"), "positive": _prompt(init, "document")}, on_log,
                p1_corpus=p1_corpus, card=card)


def train_baseline(name: str, init: ModelCheckpoint, pairs_path: str | Path, cfg: StageConfig,
                   models_dir: str | Path, *, on_log=None, p1_corpus=None, card: dict | None = None) -> TrainedModel:
    """A teacher-free baseline on the Stage-2 pairs: ``infonce``, ``xlco`` or ``lakda``."""
    if name not in BASELINES:
        raise MimoInputError(f"unknown baseline {name!r}; use one of {BASELINES}", source="baseline")
    t = cfg.train
    used = _pairs_order(pairs_path, cfg)
    fp = checkpoint_fingerprint(name, init, pairs_path, cfg)
    columns = {"infonce": {"anchor": "q_a", "positive": "p_a"},  # same-language pairs
               "xlco": {"anchor": "q_a", "positive": "p_b"},
               "lakda": {"anchor": "q_a", "positive": "p_c", "anchor_b": "q_b"}}[name]
    dataset = None
    if not checkpoint_ready(models_dir, name, fp):  # a damaged checkpoint is moved aside and retrained
        from datasets import Dataset

        dataset = Dataset.from_dict({col: [r[key] for r in used] for col, key in columns.items()})
    build = {"infonce": lambda m: contrastive_loss(m, mini_batch_size=t.chunk),
             "xlco": lambda m: contrastive_loss(m, mini_batch_size=t.chunk),
             "lakda": lambda m: losses.CachedLakdaLoss(m, alpha=cfg.alpha, mini_batch_size=t.chunk)}[name]
    recipe = {"infonce": "in-batch InfoNCE on same-language pairs (CachedMultipleNegativesRankingLoss)",
              "xlco": "cross-lingual InfoNCE (CachedMultipleNegativesRankingLoss)",
              "lakda": f"LaKDA: {1 - cfg.alpha:g}·DPR + {cfg.alpha:g}·KL, passage language drawn independently"}
    prompts = {"anchor": _prompt(init, "query"), "positive": _prompt(init, "document"),
               "anchor_b": _prompt(init, "query")}
    return _run(name, init, fp, models_dir, cfg, build, dataset, {c: prompts[c] for c in columns}, on_log,
                p1_corpus=p1_corpus,
                card={"recipe": recipe[name], "data": f"retrieval pairs `{pairs_path}`", **(card or {})})


# --------------------------------------------------------------------------- quality gate


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    message: str
    p1: float | None
    base_p1: float | None


def stage1_gate(trained: TrainedModel, base_p1: dict, margin: float = P1_MARGIN) -> GateVerdict:
    """Whether Stage 1 may feed Stage 2: its loss terms are finite and its held-out en↔X
    translation P@1 (``all``) is not below the base student's by more than ``margin``."""
    import math

    bad = {k: v for k, v in trained.final_terms.items() if not math.isfinite(v)}
    if bad:
        return GateVerdict(False, f"Stage 1 diverged: non-finite loss terms {bad}. Lower stage1_checkpoint's lr "
                                  f"(now {trained.config.get('stage', {}).get('train', {}).get('lr')}) and re-run.",
                           None, None)
    p1, base = trained.translation_p1.get("all"), base_p1.get("all")
    if p1 is None or base is None:
        return GateVerdict(True, "finite; translation P@1 not measured (translation_p1 off)", p1, base)
    if p1 < base - margin:
        return GateVerdict(False, f"Stage 1's held-out translation P@1 {p1:.3f} fell below the base student's "
                                  f"{base:.3f} by more than {margin}: Stage 1 damaged the student. Lower "
                                  "stage1_checkpoint's lr, use more steps or projection_init 'lstsq', and re-run; "
                                  "Stage 2 and everything downstream wait for a passing gate.", p1, base)
    return GateVerdict(True, f"finite; P@1 {p1:.3f} vs base {base:.3f} (margin {margin})", p1, base)
