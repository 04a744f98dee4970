"""Training on sentence-transformers' engine: `SentenceTransformerTrainer` with our loss modules.

`fit` is the one entry point: a model (`load_student`), a loss module from `losses`, a
`datasets.Dataset` whose rows are already in training order (text columns, and the
teacher's precomputed vectors as the ``label`` column where the loss needs them) and a
frozen `TrainConfig`. What it adds to the plain trainer, each in a few lines:

- rows per optimizer step = ``batch_size``, all of them in-batch negatives: the
  contrastive losses are gradient-cached (`losses`), ``mini_batch_size`` only bounds the
  memory of a forward/backward chunk and leaves the weights unchanged (exactly so for a
  model without dropout; with dropout the masks are drawn per chunk);
- rows are consumed in dataset order (a sequential batch sampler), so the caller decides
  which rows a run draws (``steps × batch_size`` of them) and resume skips exactly the
  consumed ones;
- parameters owned by the loss (MIMO's projection ``W``) are saved in every trainer
  checkpoint and restored on resume (the stock trainer saves only the model), and under
  torch.distributed their gradients are averaged like the model's;
- a run that finds a complete trainer checkpoint in its work folder resumes from it
  (an incomplete one, cut short by a kill, is deleted first), ending with the weights of
  an uninterrupted run;
- a non-finite loss stops training with an error naming the step;
- the per-step loss terms of our losses, lr, grad norm and rows/s go to the trainer's
  log history and to an ``on_log`` callback (MLflow).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import MimoError, MimoInputError

log = logging.getLogger(__name__)

LOSS_PARAMS_FILE = "loss_params.safetensors"

#: Optimizers `TrainConfig.optim` accepts (transformers' names).
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


def _bad(name: str, value: Any, allowed: str) -> MimoInputError:
    return MimoInputError(f"{value!r} is not allowed: use {allowed}", source=f"TrainConfig.{name}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (validated on construction).

    ``steps`` optimizer steps of ``batch_size`` rows each (every row of a step is an
    in-batch negative of every other). ``mini_batch_size`` (None = ``batch_size``) is the
    chunk of gradient caching: it bounds memory and leaves the weights unchanged.
    ``checkpoint_every`` = 0 saves no resumable trainer state (a crash restarts the model's
    training; the finished model is written by the caller either way).
    ``device`` None picks CUDA when available. ``max_grad_norm`` None = no clipping.
    ``precision`` is that of gradient caching's no-gradient pass (``auto`` = bf16 where the
    hardware has it); it changes the weights slightly, so it is part of the fingerprint.
    ``bf16`` runs the whole step under bf16 autocast, as the official recipe's ``--bf16``:
    the forward passes (gradient caching's two included) and their backward; the weights, the
    optimizer and the loss stay float32. None = on where ``precision`` resolves to bf16. On
    the AMD host with bf16 it measured 1.3× faster per Stage 2 step than bf16 for the
    no-gradient pass only (`python -m bench.train_levers`). `resolved` gives both as run.
    """

    steps: int
    batch_size: int
    lr: float
    mini_batch_size: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 0
    freeze_word_embeddings: bool = True
    checkpoint_every: int = 100
    log_every: int = 10
    device: str | None = None
    bf16: bool | None = None
    max_grad_norm: float | None = 1.0
    optim: str = "adamw_torch_fused"
    precision: str = "fp32"  # gradient caching's no-gradient pass: auto | fp32 | bf16 (`precision`)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "log_every"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise _bad(name, v, "an integer >= 1")
        if self.mini_batch_size is not None and (not _is_int(self.mini_batch_size) or self.mini_batch_size <= 0):
            raise _bad("mini_batch_size", self.mini_batch_size, "an integer >= 1, or None for the whole batch")
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise _bad("checkpoint_every", self.checkpoint_every, "an integer >= 0 (0 = no resumable state)")
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
        if not isinstance(self.freeze_word_embeddings, bool):
            raise _bad("freeze_word_embeddings", self.freeze_word_embeddings, "True or False")
        if self.bf16 is not None and not isinstance(self.bf16, bool):
            raise _bad("bf16", self.bf16, "True, False or None (on where precision resolves to bf16)")
        if self.optim not in OPTIMIZERS:
            raise _bad("optim", self.optim, f"one of {OPTIMIZERS}")
        from .precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise _bad("precision", self.precision, f"one of {PRECISIONS}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise _bad("device", self.device, "None (auto), 'cpu', 'cuda' or 'cuda:N'") from None

    @property
    def chunk(self) -> int:
        """Rows per forward/backward chunk of gradient caching."""
        return min(self.mini_batch_size or self.batch_size, self.batch_size)

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved(self) -> TrainConfig:
        """This config as it runs on its device: ``precision`` resolved to ``fp32`` or ``bf16``
        (``auto`` differs between machines) and ``bf16`` to True or False. Fingerprints use it."""
        from .precision import resolve_precision

        precision = resolve_precision(self.precision, self.resolved_device())
        return replace(self, precision=precision, bf16=precision == "bf16" if self.bf16 is None else self.bf16)

    def result_settings(self) -> dict[str, Any]:
        """The settings that name a run's weights (its fingerprint; MLflow params).
        ``mini_batch_size`` is among them by contract, though the weights do not depend on it."""
        skip = {"checkpoint_every", "log_every", "device"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


@dataclass(frozen=True)
class TrainResult:
    """What a `fit` call did. ``wall_s`` and ``rows_per_s`` cover this call's steps;
    ``history`` the whole run (kept in the trainer state across a resume);
    ``final_terms`` the last logged record; ``resumed_from_step`` 0 for a fresh start."""

    steps: int
    wall_s: float
    rows_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    final_terms: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int = 0


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of this process under torchrun (or an initialised group), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


#: What sentence-transformers passes to ``AutoProcessor.from_pretrained`` besides the folder, and the
#: values with which a local folder's tokenizer is the one `encoder.load_tokenizer` gives (None: any
#: value): the hub's arguments do nothing for a local folder, ``model_max_length`` is applied to the
#: copy; a subfolder, a revision or remote code would change the tokenizer.
_LOCAL_TOKENIZER_KWARGS = {"token": None, "cache_dir": None, "local_files_only": None, "model_max_length": None,
                           "subfolder": ("", None), "revision": (None,), "trust_remote_code": (False, None)}
#: Files beside a tokenizer that make ``AutoProcessor`` build a processor (images, audio) instead.
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _plain_local_tokenizer(folder: Path, kwargs: dict) -> bool:
    """Whether ``AutoProcessor.from_pretrained(folder, **kwargs)`` would give the tokenizer
    ``load_tokenizer(folder, model_max_length=...)`` gives: a fast tokenizer's file in a local
    folder, no processor, and only arguments that leave a local tokenizer as it is."""
    if not (folder / "tokenizer.json").is_file() or any((folder / f).exists() for f in _PROCESSOR_FILES):
        return False
    for k, v in kwargs.items():
        allowed = _LOCAL_TOKENIZER_KWARGS.get(k, ())  # an argument not named here: AutoProcessor's
        if allowed is not None and v not in allowed:
            return False
    return True


@contextlib.contextmanager
def _tokenizers_parsed_once():
    """Inside the block, sentence-transformers' `Transformer` module gets a local checkpoint's
    tokenizer from `encoder.load_tokenizer` (parsed once per process; 1.7 s for the default
    student's, at each of a run's eight trainings) instead of ``AutoProcessor.from_pretrained``.
    A hub id, a processor, or arguments that could change the tokenizer go to AutoProcessor."""
    from sentence_transformers.base.modules import transformer as st_transformer

    from .encoder import load_tokenizer

    auto = getattr(st_transformer, "AutoProcessor", None)
    if auto is None:  # another sentence-transformers layout: load as it does
        yield
        return

    class ParsedOnce:
        @staticmethod
        def from_pretrained(name, **kwargs):
            if _plain_local_tokenizer(Path(name), kwargs):
                return load_tokenizer(name, model_max_length=kwargs.get("model_max_length"))
            return auto.from_pretrained(name, **kwargs)

    st_transformer.AutoProcessor = ParsedOnce
    try:
        yield
    finally:
        st_transformer.AutoProcessor = auto


def load_student(path: str | os.PathLike, config: TrainConfig):
    """A `SentenceTransformer` from a checkpoint folder, ready to train under ``config``:
    inputs truncated to ``max_length``, the word embeddings frozen when asked (most of a
    multilingual model's parameters; freezing them halves a CPU step's time). Its tokenizer is
    parsed once per process (`_tokenizers_parsed_once`)."""
    from sentence_transformers import SentenceTransformer

    with _tokenizers_parsed_once():
        model = SentenceTransformer(str(path), device=str(config.resolved_device()), local_files_only=True)
    model.max_seq_length = min(config.max_length, model.max_seq_length or config.max_length)
    if config.freeze_word_embeddings:
        backbone = getattr(model[0], "model", None) or getattr(model[0], "auto_model", None)
        if backbone is None or not hasattr(backbone, "get_input_embeddings"):
            raise MimoInputError(f"{type(model[0]).__name__} has no word embeddings to freeze: set "
                                 "freeze_word_embeddings=False", source="TrainConfig.freeze_word_embeddings")
        backbone.get_input_embeddings().requires_grad_(False)
    return model


def loss_owned_parameters(loss: nn.Module, model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``loss`` that are not the model's (e.g. the projection ``W``)."""
    own = {id(p) for p in model.parameters()}
    return {n: p for n, p in loss.named_parameters() if id(p) not in own}


def _trainer_class():
    from sentence_transformers import SentenceTransformerTrainer

    class MimoTrainer(SentenceTransformerTrainer):
        """`SentenceTransformerTrainer` + loss-owned parameters in checkpoints, a finite-loss
        guard and our loss terms and throughput in the log history."""

        def _save_checkpoint(self, model, trial):
            from safetensors.torch import save_file
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            extras = loss_owned_parameters(self.loss, self.model)
            if extras and self.args.should_save:
                folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                folder.mkdir(parents=True, exist_ok=True)
                save_file({n: p.detach().cpu().contiguous() for n, p in extras.items()}, str(folder / LOSS_PARAMS_FILE))
            super()._save_checkpoint(model, trial)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from safetensors.torch import load_file

            super()._load_from_checkpoint(resume_from_checkpoint)
            extras = loss_owned_parameters(self.loss, self.model)
            path = Path(resume_from_checkpoint) / LOSS_PARAMS_FILE
            if extras:
                if not path.exists():
                    raise MimoError(f"{resume_from_checkpoint} lacks {LOSS_PARAMS_FILE} (the loss' own parameters): "
                                    "delete the folder to train from the start")
                state = load_file(str(path))
                with torch.no_grad():
                    for n, p in extras.items():
                        p.copy_(state[n].to(p.device))

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss.detach()).all():
                terms = getattr(self.loss, "last_terms", {})
                raise MimoError(f"non-finite loss at step {self.state.global_step + 1}: {terms or float(loss)}; "
                                "lower the learning rate or check the batch")
            terms = getattr(self.loss, "last_terms", None)
            if terms:
                for k, v in terms.items():
                    if k != "loss":
                        self._window[k] = self._window.get(k, 0.0) + v
                self._window_n += 1
            return loss

        def log(self, logs, start_time=None):
            if "loss" in logs and "eval_loss" not in logs:  # a training log record
                now = time.perf_counter()
                steps = self.state.global_step - self._last_log_step
                if steps > 0:
                    logs["rows_per_s"] = steps * self.rows_per_step / max(now - self._last_log_time, 1e-9)
                if self._window_n:
                    logs.update({k: v / self._window_n for k, v in self._window.items()})
                self._window, self._window_n = {}, 0
                self._last_log_step, self._last_log_time = self.state.global_step, now
            super().log(logs, start_time)

    return MimoTrainer


def _sequential_batches(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    """Batches in dataset order: the caller's row order is the training order."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last,
                               valid_label_columns=valid_label_columns, generator=generator, seed=seed)


def _callbacks(loss: nn.Module, model: nn.Module, on_log: Callable[[dict], None] | None):
    from transformers import TrainerCallback

    class _Callbacks(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            # DDP averages the model's gradients; the loss' own parameters (W) need the same.
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                for p in loss_owned_parameters(loss, model).values():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()

        def on_step_end(self, args, state, control, **kwargs):
            # The trainer also saves at the last step; that state is never resumed from (the caller
            # writes the finished model and deletes the work folder), so skip writing the model twice.
            if state.global_step >= state.max_steps:
                control.should_save = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            record = _record(state.global_step, logs)
            log.info("step %d/%d %s", state.global_step, state.max_steps,
                     " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))
            if on_log is not None:
                on_log(record)

    return [_Callbacks()]


def _record(step: int, logs: dict) -> dict[str, float]:
    out = {"step": step}
    for k, v in logs.items():
        if isinstance(v, (int, float)) and k not in ("epoch", "step"):
            out["lr" if k == "learning_rate" else k] = float(v)
    return out


def latest_complete_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-<step>`` folder whose trainer state was written (the trainer
    writes ``trainer_state.json`` last); incomplete ones, cut short by a kill, are deleted."""
    folders = sorted((p for p in Path(work_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                     key=lambda p: int(p.name.split("-")[-1]))
    complete = [p for p in folders if (p / "trainer_state.json").exists()]
    if distributed_world()[0] == 0:
        for p in folders:
            if p not in complete:
                log.warning("removing the incomplete trainer checkpoint %s (a run was cut short while saving)", p)
                shutil.rmtree(p, ignore_errors=True)
    return complete[-1] if complete else None


def training_arguments(config: TrainConfig, output_dir: str | os.PathLike, prompts: dict[str, str] | None = None):
    """`SentenceTransformerTrainingArguments` for ``config`` (rows per step = ``batch_size``
    over all processes)."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    _, world = distributed_world()
    if config.batch_size % world:
        raise MimoInputError(f"batch of {config.batch_size} rows does not split evenly over {world} processes: use a "
                             f"multiple of {world}", source="TrainConfig.batch_size")
    device = config.resolved_device()
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size // world,
        gradient_accumulation_steps=1,  # the batch is grown by gradient caching, never by accumulation
        learning_rate=config.lr,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(config.warmup_ratio * config.steps),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm or 0.0,
        optim=config.optim,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        use_cpu=device.type == "cpu",
        ddp_backend="gloo" if device.type == "cpu" and world > 1 else None,
        logging_steps=config.log_every,
        logging_nan_inf_filter=False,
        save_strategy="steps" if config.checkpoint_every else "no",
        save_steps=config.checkpoint_every or config.steps,
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        batch_sampler=_sequential_batches,
        prompts=prompts or {},
    )


def fit(model, loss: nn.Module, dataset, config: TrainConfig, work_dir: str | os.PathLike, *,
        prompts: dict[str, str] | None = None, on_log: Callable[[dict], None] | None = None,
        callbacks: list | None = None) -> TrainResult:
    """Train ``model`` (and the loss' own parameters) for ``config.steps`` steps on ``dataset``.

    ``dataset`` holds at least ``steps × batch_size`` rows in training order; ``prompts``
    maps a column to the prompt text prepended to it (e.g. ``{"anchor": "query: "}``).
    ``work_dir`` holds the trainer's checkpoints: a run that finds one resumes from it.
    ``callbacks`` are extra `transformers.TrainerCallback`s. The model is left in eval mode.
    """
    needed = config.steps * config.batch_size
    if len(dataset) < needed:
        raise MimoInputError(f"{len(dataset)} rows for {config.steps} steps of {config.batch_size}: need {needed}",
                             source="training data")
    if not [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]:
        raise MimoInputError("nothing to train: every parameter is frozen", source="model")
    if hasattr(loss, "mini_batch_size"):
        loss.mini_batch_size = config.chunk
    config = config.resolved()
    if hasattr(loss, "no_grad_dtype"):
        loss.no_grad_dtype = torch.bfloat16 if config.precision == "bf16" else None
    args = training_arguments(config, work_dir, prompts)
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset, loss=loss,
                               callbacks=_callbacks(loss, model, on_log) + list(callbacks or []))
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback logs each record once, through `logging`
    trainer.rows_per_step = config.batch_size
    trainer._window, trainer._window_n = {}, 0
    resume = latest_complete_checkpoint(work_dir)
    start = 0
    if resume is not None:
        import json

        start = int(json.loads((resume / "trainer_state.json").read_text()).get("global_step", 0))
        log.info("resuming training from step %d/%d (%s)", start, config.steps, resume)
    trainer._last_log_step, trainer._last_log_time = start, time.perf_counter()
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    finally:
        # Under bf16, accelerate wraps the model's forward in autocast for good; take it off, or a later
        # encode of the trained model in memory (the held-out P@1 probe) would run in bf16 whatever it asks.
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(model, keep_fp32_wrapper=False)
    wall = time.perf_counter() - t0
    model.eval()
    history = [_record(int(h["step"]), h) for h in trainer.state.log_history if "loss" in h]
    final = {k: v for k, v in history[-1].items() if k != "step"} if history else {}
    return TrainResult(steps=config.steps, wall_s=wall,
                       rows_per_s=(config.steps - start) * config.batch_size / max(wall, 1e-9),
                       history=history, final_terms=final, resumed_from_step=start)
