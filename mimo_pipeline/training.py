"""Training: a trainable encoder, the objectives of MIMO and its baselines, and one loop.

- `TrainableEncoder` wraps a model folder (HF weights + tokenizer + the pooling and
  prompts of a sentence-transformers folder) and embeds texts *with* gradients; `save`
  writes a sentence-transformers checkpoint folder atomically.
- Objectives turn a batch into a `losses.LossOutput`: `stage1_objective` (distillation
  warm-up), `mimo_objective` (Stage 2), and the teacher-free baselines
  `infonce_objective`, `xlco_objective`, `lakda_objective`.
- `train` is one generic loop (AdamW, linear warm-up and decay, gradient accumulation,
  clipping, optional bf16 autocast on CUDA) with periodic, atomic, resumable state:
  a run killed at any point and started again with the same arguments ends with the
  same weights as a run never interrupted (bitwise on CPU).

Choices that follow the official MIMO code (GitHub yjoonjang/MIMO):

- Stage 1 embeds the student side *without* prompts (``train.py`` passes the student
  query/document prompts to the collator only when ``stage == 2``), so
  `stage1_objective` defaults to ``prompt=None``. Stage 2 and the baselines prompt
  queries with the model's ``"query"`` prompt and passages with its ``"document"``
  prompt (``student_query_prompt`` / ``student_doc_prompt``; e5: ``"query: "`` /
  ``"passage: "``); a model without prompts gets none.
- The English identity term of Stage 1: MIMO adds English–English rows
  (``anchor = positive = text_en``) to the parallel data
  (``scripts/prepare_data/prepare_stage1_parallel.py``) and averages ``1 − cos`` over
  all rows. Here every batch row carries both sides and the loss is
  ``½ (distill(W·s(x), T(en)) + distill(W·s(en), T(en)))`` (DESIGN §1), which weights the
  identity pairs one half instead of MIMO's share of identity rows; set
  ``english_identity=False`` to drop the term (then feed identity rows as data).
- The projection is an ``nn.Linear`` with bias, trained with the student and saved
  beside the checkpoint (``projection.safetensors``) so Stage 2 can start from Stage 1's
  ``W`` (MIMO: ``projection.pt`` + ``--projection_path``).
- In-batch negatives are those of one micro-batch: with ``grad_accum > 1`` the
  effective batch grows but the negatives do not (MIMO uses gradient caching for
  2048-row batches; that is not reproduced here).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import PoolingSpec, read_pooling_spec, write_sentence_transformers_files
from .encoder import pool
from .errors import MimoError, MimoInputError
from .fileio import atomic_dir, atomic_path
from .losses import LossOutput, Projection, distill_loss, info_nce, lakda_loss, mimo_loss

log = logging.getLogger(__name__)

STATE_DIR = "state"
STATE_FILE = "trainer_state.pt"
PROJECTION_FILE = "projection.safetensors"
_STATE_FORMAT = 1


# --------------------------------------------------------------------------- config


def _bad(name: str, value: Any, allowed: str) -> MimoInputError:
    return MimoInputError(f"{value!r} is not allowed: use {allowed}", source=f"TrainConfig.{name}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (all validated on construction).

    ``steps`` counts optimizer steps; each consumes ``grad_accum`` micro-batches of
    ``batch_size`` rows. ``checkpoint_every`` = 0 writes the resumable state only at
    the end. ``device`` None picks CUDA when available. ``bf16`` autocasts the encoder
    to bfloat16 on CUDA only (ignored on CPU). ``max_grad_norm`` None turns clipping off.
    """

    steps: int
    batch_size: int
    lr: float
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_accum: int = 1
    max_length: int = 128
    seed: int = 0
    freeze_word_embeddings: bool = True
    checkpoint_every: int = 100
    log_every: int = 10
    device: str | None = None
    bf16: bool = False
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "max_length", "log_every"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise _bad(name, v, "an integer >= 1")
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise _bad("checkpoint_every", self.checkpoint_every, "an integer >= 0 (0 = only at the end)")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise _bad("seed", self.seed, "an integer in [0, 2**32)")
        if not _is_num(self.lr) or self.lr <= 0:
            raise _bad("lr", self.lr, "a finite number > 0, e.g. 2e-5")
        if not _is_num(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise _bad("warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            raise _bad("weight_decay", self.weight_decay, "a finite number >= 0")
        if self.max_grad_norm is not None and (not _is_num(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise _bad("max_grad_norm", self.max_grad_norm, "a finite number > 0, or None for no clipping")
        for name in ("freeze_word_embeddings", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "True or False")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise _bad("device", self.device, "None (auto), 'cpu', 'cuda' or 'cuda:N'") from None

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def result_settings(self) -> dict[str, Any]:
        """The settings that shape the trained weights (a resumed state must match them)."""
        skip = {"checkpoint_every", "log_every", "device"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


# --------------------------------------------------------------------------- encoder


class TrainableEncoder(nn.Module):
    """A student encoder that embeds with gradients and saves sentence-transformers folders.

    Pooling, normalisation, maximum length and prompts come from the folder
    (`checkpoint.read_pooling_spec`). `embed` returns what `SentenceTransformer.encode`
    would (including the ``Normalize`` module when the folder has one), as a float
    tensor that carries gradients.
    """

    def __init__(self, path: str | os.PathLike, *, max_length: int | None = None,
                 device: str | torch.device | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        self.spec: PoolingSpec = read_pooling_spec(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32)
        self.max_length = self.spec.max_seq_length
        if max_length is not None:
            self.set_max_length(max_length)
        if device is not None:
            self.to(device)

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_max_length(self, max_length: int) -> None:
        """Truncate training inputs to ``max_length`` tokens (never above the model's limit)."""
        self.max_length = min(int(max_length), self.spec.max_seq_length)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def freeze_word_embeddings(self) -> None:
        """Stop training the word-embedding matrix (most of a multilingual model's parameters)."""
        self.get_input_embeddings().requires_grad_(False)

    def embed(self, texts: Sequence[str], prompt: str | None = None) -> Tensor:
        """Pooled sentence vectors ``[len(texts), dim]`` with gradients.

        ``prompt`` names one of the model's prompts (``"query"``, ``"document"``); the
        prompt text is prepended before tokenising. Batches pad to their longest text
        (dynamic padding) and truncate to ``max_length``.
        """
        prefix = self.spec.prompt(prompt)
        enc = self.tokenizer([prefix + t for t in texts], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state
        vecs = pool(hidden, enc["attention_mask"], self.spec.mode).float()
        if self.spec.normalize:
            vecs = nn.functional.normalize(vecs, dim=-1)
        return vecs

    forward = embed

    def save(self, dest_dir: str | os.PathLike, *, projection: Projection | None = None) -> Path:
        """Write a sentence-transformers folder at ``dest_dir`` atomically; return its path.

        HF weights (safetensors), config and tokenizer at the root, the module files with
        the same pooling and prompts as the source folder, and ``projection.safetensors``
        when a projection is given. Nothing is written if ``dest_dir`` already exists
        (checkpoint folders are content-addressed: callers put a fingerprint in the path).
        """
        dest = Path(dest_dir)
        with atomic_dir(dest) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_sentence_transformers_files(tmp, PoolingSpec(
                dim=self.spec.dim, mode=self.spec.mode, normalize=self.spec.normalize,
                max_seq_length=self.spec.max_seq_length, prompts=dict(self.spec.prompts)))
            if projection is not None:
                projection.save(tmp / PROJECTION_FILE)
        return dest


# --------------------------------------------------------------------------- batches


def _same_len(name: str, *cols: Sequence) -> None:
    n = {len(c) for c in cols}
    if len(n) != 1:
        raise ValueError(f"{name}: columns have different lengths {[len(c) for c in cols]}")
    if 0 in n:
        raise ValueError(f"{name}: empty batch")


@dataclass(frozen=True)
class DistillBatch:
    """Stage 1 rows: a sentence in language X, its English version, the teacher's vector of it."""

    x_texts: Sequence[str]
    en_texts: Sequence[str]
    teacher: Tensor | np.ndarray  # [B, teacher_dim], T(en)

    def __post_init__(self):
        _same_len("DistillBatch", self.x_texts, self.en_texts, self.teacher)

    def __len__(self) -> int:
        return len(self.x_texts)


@dataclass(frozen=True)
class PairBatch:
    """Query–positive rows; ``t_q``/``t_p`` are the teacher's vectors of their English
    versions (MIMO only; the baselines leave them None)."""

    q_texts: Sequence[str]
    p_texts: Sequence[str]
    t_q: Tensor | np.ndarray | None = None
    t_p: Tensor | np.ndarray | None = None

    def __post_init__(self):
        _same_len("PairBatch", self.q_texts, self.p_texts,
                  *[t for t in (self.t_q, self.t_p) if t is not None])

    def __len__(self) -> int:
        return len(self.q_texts)


@dataclass(frozen=True)
class LakdaBatch:
    """LaKDA rows: a query in language a, the same query in language b, its positive."""

    q_a_texts: Sequence[str]
    q_b_texts: Sequence[str]
    p_texts: Sequence[str]

    def __post_init__(self):
        _same_len("LakdaBatch", self.q_a_texts, self.q_b_texts, self.p_texts)

    def __len__(self) -> int:
        return len(self.q_a_texts)


# --------------------------------------------------------------------------- objectives


class Embedder(Protocol):
    def embed(self, texts: Sequence[str], prompt: str | None = None) -> Tensor: ...


def _as_target(t: Tensor | np.ndarray, like: Tensor) -> Tensor:
    return torch.as_tensor(t).to(device=like.device, dtype=torch.float32)


@dataclass
class Stage1Objective:
    """``½ (distill(W·s(x), T(en)) + distill(W·s(en), T(en)))`` (second term: English identity)."""

    projection: Projection
    kind: str = "cosine"
    prompt: str | None = None
    english_identity: bool = True
    name: str = "stage1"

    def __call__(self, model: Embedder, batch: DistillBatch) -> LossOutput:
        n = len(batch)
        texts = list(batch.x_texts) + (list(batch.en_texts) if self.english_identity else [])
        vecs = model.embed(texts, self.prompt)  # one forward pass for both sides
        teacher = _as_target(batch.teacher, vecs)
        d_x = distill_loss(self.projection(vecs[:n]), teacher, self.kind)
        if not self.english_identity:
            return LossOutput(d_x, {"loss": float(d_x.detach()), "distill_x": float(d_x.detach())})
        d_en = distill_loss(self.projection(vecs[n:]), teacher, self.kind)
        total = 0.5 * (d_x + d_en)
        return LossOutput(total, {"loss": float(total.detach()), "distill_x": float(d_x.detach()),
                                  "distill_en": float(d_en.detach())})


@dataclass
class MimoObjective:
    """Stage 2: ``λ·InfoNCE(s(q_a), s(p_b)) + (1−λ)·½(distill(W·s(q), T(q_en)) + distill(W·s(p), T(p_en)))``."""

    projection: Projection
    lam: float = 0.2
    kind: str = "cosine"
    scale: float = 20.0
    query_prompt: str | None = "query"
    doc_prompt: str | None = "document"
    name: str = "mimo"

    def __call__(self, model: Embedder, batch: PairBatch) -> LossOutput:
        if batch.t_q is None or batch.t_p is None:
            raise MimoInputError("MIMO batches need the teacher's vectors t_q and t_p", source="PairBatch")
        q = model.embed(batch.q_texts, self.query_prompt)
        p = model.embed(batch.p_texts, self.doc_prompt)
        return mimo_loss(q, p, self.projection(q), self.projection(p),
                         _as_target(batch.t_q, q), _as_target(batch.t_p, q),
                         lam=self.lam, kind=self.kind, scale=self.scale)


@dataclass
class ContrastiveObjective:
    """In-batch InfoNCE between queries and their positives (``infonce`` or ``xlco``:
    same formula, the data decides whether the pairs share a language)."""

    scale: float = 20.0
    query_prompt: str | None = "query"
    doc_prompt: str | None = "document"
    name: str = "infonce"

    def __call__(self, model: Embedder, batch: PairBatch) -> LossOutput:
        q = model.embed(batch.q_texts, self.query_prompt)
        p = model.embed(batch.p_texts, self.doc_prompt)
        loss = info_nce(q, p, self.scale)
        return LossOutput(loss, {"loss": float(loss.detach()), self.name: float(loss.detach())})


@dataclass
class LakdaObjective:
    """LaKDA: ``(1−α)·InfoNCE(s(q_a), s(p)) + α·KL(p_b ‖ p_a)`` (see `losses.lakda_loss`)."""

    alpha: float = 0.5
    scale: float = 20.0
    kl_scale: float = 1.0
    detach_target: bool = False
    query_prompt: str | None = "query"
    doc_prompt: str | None = "document"
    name: str = "lakda"

    def __call__(self, model: Embedder, batch: LakdaBatch) -> LossOutput:
        q_a = model.embed(batch.q_a_texts, self.query_prompt)
        q_b = model.embed(batch.q_b_texts, self.query_prompt)
        p = model.embed(batch.p_texts, self.doc_prompt)
        return lakda_loss(q_a, q_b, p, alpha=self.alpha, scale=self.scale,
                          kl_scale=self.kl_scale, detach_target=self.detach_target)


def stage1_objective(projection: Projection, *, kind: str = "cosine", prompt: str | None = None,
                     english_identity: bool = True) -> Stage1Objective:
    """Stage 1 distillation warm-up on `DistillBatch` rows (no prompt by default, as MIMO)."""
    return Stage1Objective(projection, kind=kind, prompt=prompt, english_identity=english_identity)


def mimo_objective(projection: Projection, *, lam: float = 0.2, kind: str = "cosine", scale: float = 20.0,
                   query_prompt: str | None = "query", doc_prompt: str | None = "document") -> MimoObjective:
    """MIMO Stage 2 on `PairBatch` rows with teacher vectors (λ = 0.2 as the paper)."""
    return MimoObjective(projection, lam=lam, kind=kind, scale=scale,
                         query_prompt=query_prompt, doc_prompt=doc_prompt)


def infonce_objective(*, scale: float = 20.0, query_prompt: str | None = "query",
                      doc_prompt: str | None = "document") -> ContrastiveObjective:
    """The ``infonce`` baseline: same-language `PairBatch` rows."""
    return ContrastiveObjective(scale=scale, query_prompt=query_prompt, doc_prompt=doc_prompt, name="infonce")


def xlco_objective(*, scale: float = 20.0, query_prompt: str | None = "query",
                   doc_prompt: str | None = "document") -> ContrastiveObjective:
    """The ``xlco`` baseline: cross-lingual `PairBatch` rows (query in a, passage in b ≠ a)."""
    return ContrastiveObjective(scale=scale, query_prompt=query_prompt, doc_prompt=doc_prompt, name="xlco")


def lakda_objective(*, alpha: float = 0.5, scale: float = 20.0, kl_scale: float = 1.0,
                    detach_target: bool = False, query_prompt: str | None = "query",
                    doc_prompt: str | None = "document") -> LakdaObjective:
    """The ``lakda`` baseline on `LakdaBatch` rows (α = 0.5; defaults as MIMO's baseline code)."""
    return LakdaObjective(alpha=alpha, scale=scale, kl_scale=kl_scale, detach_target=detach_target,
                          query_prompt=query_prompt, doc_prompt=doc_prompt)


# --------------------------------------------------------------------------- loop


@dataclass(frozen=True)
class TrainResult:
    """What a `train` call did. ``wall_s`` and ``pairs_per_s`` cover this call only;
    ``history`` covers the whole run (restored on resume); ``final_terms`` are the loss
    terms of the last step; ``resumed_from_step`` is 0 for a fresh start."""

    steps: int
    wall_s: float
    pairs_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    final_terms: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int = 0


Objective = Callable[[Any, Any], LossOutput]
Batches = Union[Callable[[int], Any], Sequence[Any]]
Extra = Union[nn.Module, nn.Parameter]


def _batch_source(batches: Batches) -> Callable[[int], Any]:
    if callable(batches):
        return batches
    if isinstance(batches, Sequence) and len(batches) > 0:
        return lambda i: batches[i % len(batches)]
    raise MimoInputError("batches must be a function batch_at(index) or a non-empty sequence",
                         source="batches")


def _prepare_model(model: nn.Module, config: TrainConfig) -> None:
    if hasattr(model, "set_max_length"):
        model.set_max_length(config.max_length)
    if config.freeze_word_embeddings:
        get = getattr(model, "get_input_embeddings", None)
        if get is None:
            raise MimoInputError(f"{type(model).__name__} has no get_input_embeddings(): set "
                                 "freeze_word_embeddings=False", source="TrainConfig.freeze_word_embeddings")
        get().requires_grad_(False)


def _extra_params(extra: Extra) -> list[tuple[str, nn.Parameter]]:
    if isinstance(extra, nn.Parameter):
        return [("", extra)] if extra.requires_grad else []
    return [(n, p) for n, p in extra.named_parameters() if p.requires_grad]


def _move(extra: Extra, device: torch.device) -> None:
    if isinstance(extra, nn.Parameter):
        extra.data = extra.data.to(device)
    else:
        extra.to(device)


def _extra_state(extra: Extra) -> dict[str, Tensor]:
    if isinstance(extra, nn.Parameter):
        return {"": extra.detach().cpu().clone()}
    return {k: v.detach().cpu().clone() for k, v in extra.state_dict().items()}


def _load_extra_state(extra: Extra, state: dict[str, Tensor]) -> None:
    if isinstance(extra, nn.Parameter):
        with torch.no_grad():
            extra.copy_(state[""])
    else:
        extra.load_state_dict(state)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    version, internal, gauss_next = s["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically: temp file in the same folder, fsync, os.replace."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def _lr_of(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share of a batch dataclass (every per-row field sliced).

    With equal shares, the mean over ranks of each shard's mean loss is the global
    batch's mean loss, so all-reduced gradients equal the one-process gradients for
    per-row losses (distillation). In-batch negatives (InfoNCE) are the shard's own.
    """
    import dataclasses

    n = len(batch)
    if n % world:
        raise MimoInputError(f"batch of {n} rows does not split evenly over {world} processes: use a multiple of "
                             f"{world}", source="TrainConfig.batch_size")
    lo, hi = rank * n // world, (rank + 1) * n // world
    changes = {f.name: getattr(batch, f.name)[lo:hi] for f in dataclasses.fields(batch)
               if getattr(batch, f.name) is not None and hasattr(getattr(batch, f.name), "__len__")
               and len(getattr(batch, f.name)) == n}
    return dataclasses.replace(batch, **changes)


def train(
    model: nn.Module,
    objective: Objective,
    batches: Batches,
    config: TrainConfig,
    work_dir: str | os.PathLike,
    *,
    extra_params: Iterable[Extra] = (),
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (and ``extra_params``, e.g. the projection) for ``config.steps`` steps.

    ``objective(model, batch) -> LossOutput``. ``batches`` is ``batch_at(i)`` (a
    deterministic function of the micro-batch index ``i = step * grad_accum + k``) or a
    sequence, cycled. Every ``checkpoint_every`` steps and at the end the full state
    (trainable weights, extra params, optimizer, scheduler, RNG states, step, history)
    is written atomically to ``work_dir/state/trainer_state.pt``, replacing the previous
    one; a call that finds such a state resumes from it, so an interrupted run started
    again reaches the same weights as an uninterrupted one, and a finished run started
    again does no work. Every ``log_every`` steps a record (step, lr, pairs/s and the
    loss terms averaged over the window) is logged, appended to the history and passed
    to ``on_log``. The model is left in eval mode on ``config.device``.
    """
    from transformers import get_linear_schedule_with_warmup

    device = config.resolved_device()
    rank, world = distributed_world()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
    state_path = Path(work_dir) / STATE_DIR / STATE_FILE
    get_batch = _batch_source(batches)
    extras = list(extra_params)

    _prepare_model(model, config)
    model.to(device)
    for e in extras:
        _move(e, device)

    model_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    extra_named = [_extra_params(e) for e in extras]
    all_params = [p for _, p in model_params] + [p for named in extra_named for _, p in named]
    if not all_params:
        raise MimoInputError("nothing to train: every parameter is frozen", source="model")
    # The usual transformer recipe: no weight decay on biases and layer-norm weights.
    decay = [p for p in all_params if p.ndim >= 2]
    no_decay = [p for p in all_params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr)
    warmup = math.ceil(config.warmup_ratio * config.steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, config.steps)

    start, history, last_terms = 0, [], {}
    window: dict[str, float] = {}
    window_n = 0
    for stale in state_path.parent.glob(f".{STATE_FILE}.*.tmp"):  # a state write cut short by a kill
        stale.unlink(missing_ok=True)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        _check_state(state, config, model_params, len(extras), state_path)
        with torch.no_grad():
            for name, p in model_params:
                p.copy_(state["model"][name])
        for e, s in zip(extras, state["extras"], strict=True):
            _load_extra_state(e, s)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, history, last_terms = state["step"], list(state["history"]), dict(state["last_terms"])
        window, window_n = dict(state["window"]), state["window_n"]
        log.info("resuming training from step %d/%d (%s)", start, config.steps, state_path)
    else:
        _seed_everything(config.seed)

    use_bf16 = config.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    def snapshot(step: int) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "step": step,
            "config": config.result_settings(),
            "model": {n: p.detach().cpu().clone() for n, p in model_params},
            "extras": [_extra_state(e) for e in extras],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "history": history,
            "last_terms": last_terms,
            "window": window,
            "window_n": window_n,
        }

    model.train()
    for e in extras:
        if isinstance(e, nn.Module):
            e.train()
    t0 = time.perf_counter()
    t_window, pairs_window, pairs_total = t0, 0, 0
    for step in range(start, config.steps):
        optimizer.zero_grad(set_to_none=True)
        terms: dict[str, float] = {}
        for k in range(config.grad_accum):
            batch = get_batch(step * config.grad_accum + k)
            if world > 1:
                batch = shard_batch(batch, rank, world)
            with autocast():
                out = objective(model, batch)
            if not torch.isfinite(out.total.detach()).item():
                raise MimoError(f"non-finite loss at step {step + 1}: {out.terms}; lower TrainConfig.lr "
                                "or check the batch")
            (out.total / config.grad_accum).backward()
            for key, v in out.terms.items():
                terms[key] = terms.get(key, 0.0) + v / config.grad_accum
            n = (len(batch) if hasattr(batch, "__len__") else config.batch_size) * world
            pairs_window += n
            pairs_total += n
        if world > 1:
            terms = _all_reduce_mean(all_params, terms, world)
        if config.max_grad_norm is not None:
            terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(all_params, config.max_grad_norm))
        lr = _lr_of(optimizer)
        optimizer.step()
        scheduler.step()
        done = step + 1
        last_terms = terms
        for key, v in terms.items():
            window[key] = window.get(key, 0.0) + v
        window_n += 1

        record = None
        if done % config.log_every == 0 or done == config.steps:
            now = time.perf_counter()
            record = {"step": done, "lr": lr, "pairs_per_s": pairs_window / max(now - t_window, 1e-9),
                      **{key: v / window_n for key, v in window.items()}}
            history.append(record)
            window, window_n, t_window, pairs_window = {}, 0, now, 0
        if rank == 0 and ((config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.steps):
            _save_state(state_path, snapshot(done))
        if record is not None:
            log.info("step %d/%d %s lr=%.3g pairs/s=%.1f", done, config.steps,
                     " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("step", "lr", "pairs_per_s")),
                     lr, record["pairs_per_s"])
            if on_log is not None:
                on_log(dict(record))

    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0's final state is on disk before anyone moves on
    model.eval()
    for e in extras:
        if isinstance(e, nn.Module):
            e.eval()
    wall = time.perf_counter() - t0
    return TrainResult(steps=config.steps, wall_s=wall, pairs_per_s=pairs_total / max(wall, 1e-9),
                       history=history, final_terms=last_terms, resumed_from_step=start)


def _all_reduce_mean(params: list[nn.Parameter], terms: dict[str, float], world: int) -> dict[str, float]:
    """Average gradients and logged loss terms over the processes (what DDP's reducer does)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world
    keys = sorted(terms)
    t = torch.tensor([terms[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t)}


def _check_state(state: dict[str, Any], config: TrainConfig, model_params, n_extras: int, path: Path) -> None:
    what = f"training state {path}"
    if state.get("format") != _STATE_FORMAT:
        raise MimoInputError(f"unknown state format {state.get('format')!r}: delete the folder to start over",
                             source=what)
    saved = state["config"]
    now = config.result_settings()
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        raise MimoInputError(
            f"was written with other settings {({k: a for k, (a, _) in diff.items()})}, now "
            f"{({k: b for k, (_, b) in diff.items()})}: use another work_dir or delete {path.parent} "
            "to start over", source=what)
    if len(state["extras"]) != n_extras:
        raise MimoInputError(f"holds {len(state['extras'])} extra parameter sets, the call passes {n_extras}: "
                             f"use another work_dir or delete {path.parent}", source=what)
    names = {n for n, _ in model_params}
    if set(state["model"]) != names:
        raise MimoInputError(
            f"holds other trainable parameters than the model ({len(state['model'])} saved, {len(names)} now): "
            f"use another work_dir or delete {path.parent}", source=what)
    for n, p in model_params:
        if tuple(state["model"][n].shape) != tuple(p.shape):
            raise MimoInputError(f"parameter {n} has shape {tuple(state['model'][n].shape)} there, "
                                 f"{tuple(p.shape)} now: delete {path.parent}", source=what)
