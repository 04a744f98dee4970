"""The models an evaluation compares, as `evaluation.Embedder`s, from checkpoint handles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .catalog import ResolvedModel
from .evaluation import CheckpointEmbedder, Embedder, UseEmbedder
from .report import MODEL_ORDER
from .student import ModelCheckpoint

#: The reference teacher sees English only: it is evaluated on the English pool.
TEACHER_BENCHMARKS = ("monolingual-en",)


@dataclass(frozen=True)
class EvalModels:
    """``models``: key -> embedder, in the report's order (the key is the model name, or
    ``<name>@<seed>`` for a model trained with several seeds); ``only``: key -> the
    benchmarks it is limited to; ``seeds``: key -> training seed (None: not trained, or
    not known). `evaluation.evaluate_models` takes all three."""

    models: dict[str, Embedder]
    only: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seeds: dict[str, int | None] = field(default_factory=dict)


def trained_models(trained: Any, default_name: str) -> list[tuple[str, int | None, Any]]:
    """``[(name, seed, TrainedModel)]`` from what a training asset hands on.

    Accepts a ``TrainedSet`` (``all()`` -> (name, seed, model)), a ``TrainedModel``
    (named ``default_name``, its seed from ``seed`` or its training config), a mapping
    name -> any of these, or a list of them (several seeds).
    """
    if trained is None:
        return []
    if callable(getattr(trained, "all", None)):
        return [(name, seed, t) for name, seed, t in trained.all()]
    if hasattr(trained, "checkpoint"):
        seed = getattr(trained, "seed", None)
        if seed is None:
            seed = (getattr(trained, "config", None) or {}).get("stage", {}).get("train", {}).get("seed")
        return [(default_name, seed, trained)]
    if isinstance(trained, Mapping):
        return [item for name, value in trained.items() for item in trained_models(value, name)]
    if isinstance(trained, (list, tuple)):
        return [item for value in trained for item in trained_models(value, default_name)]
    raise TypeError(f"cannot read trained models from {type(trained).__name__}")


def evaluation_models(
    student_base: ModelCheckpoint,
    stage1: Any,
    stage2: Any,
    baselines: Any,
    teacher: ResolvedModel | None,
    *,
    batch_size: int = 64,
    precision: str = "fp32",
) -> EvalModels:
    """Every model to evaluate, as `EvalModels`, in the report's order (`report.MODEL_ORDER`).

    Names: base_student, stage1, mimo and the λ ablation (mimo_lambda_0, mimo_lambda_0.5,
    mimo_lambda_1) where stage 2 trained them, infonce, xlco, lakda, use_m, and
    teacher_en when a teacher is given (limited to the English monolingual benchmark).
    ``stage1``/``stage2``/``baselines`` are what the training assets hand on (a
    ``TrainedSet``, or see `trained_models`). Every seed of a model is its own embedder:
    key ``<name>@<seed>`` when the model has several seeds, the name otherwise.
    ``precision`` (``auto``, ``fp32``, ``bf16``) applies to every checkpoint model, and is
    part of its cache key.
    """
    found = [("base_student", None, None)]
    for trained, default in ((stage1, "stage1"), (stage2, "mimo"), (baselines, "baseline")):
        found += trained_models(trained, default)
    order = {name: i for i, name in enumerate(MODEL_ORDER)}
    found.sort(key=lambda f: order.get(f[0], len(order)))  # stable: other names keep their order
    n_seeds: dict[str, int] = {}
    for name, _, _ in found:
        n_seeds[name] = n_seeds.get(name, 0) + 1
    models: dict[str, Embedder] = {}
    seeds: dict[str, int | None] = {}
    for name, seed, t in found:
        ckpt = student_base if t is None else t.checkpoint
        key = f"{name}@{seed}" if n_seeds[name] > 1 else name
        if key in models:
            raise ValueError(f"model {name!r} appears twice with seed {seed!r}")
        models[key] = CheckpointEmbedder(name, ckpt.path, ckpt.fingerprint, batch_size=batch_size,
                                         precision=precision)
        seeds[key] = seed
    models["use_m"] = UseEmbedder()
    seeds["use_m"] = None
    only: dict[str, tuple[str, ...]] = {}
    if teacher is not None:
        models["teacher_en"] = CheckpointEmbedder("teacher_en", teacher.path, teacher.fingerprint,
                                                  batch_size=batch_size, precision=precision)
        seeds["teacher_en"] = None
        only["teacher_en"] = TEACHER_BENCHMARKS
    return EvalModels(models, only, seeds)
