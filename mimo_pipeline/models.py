"""The models an evaluation compares, as `evaluation.Embedder`s, from checkpoint handles."""

from __future__ import annotations

from typing import Mapping

from .catalog import ResolvedModel
from .evaluation import CheckpointEmbedder, Embedder, UseEmbedder
from .stages import TrainedModel
from .student import ModelCheckpoint

#: The reference teacher sees English only: it is evaluated on the English pool.
TEACHER_BENCHMARKS = ("monolingual-en",)


def evaluation_models(
    student_base: ModelCheckpoint,
    stage1: TrainedModel,
    mimo: TrainedModel,
    baselines: Mapping[str, TrainedModel],
    teacher: ResolvedModel | None,
    *,
    batch_size: int = 64,
    precision: str = "fp32",
) -> tuple[dict[str, Embedder], dict[str, tuple[str, ...]]]:
    """``({name: embedder}, {name: benchmarks it is limited to})`` in the report's order.

    Names: base_student, stage1, mimo, infonce, xlco, lakda, use_m, and teacher_en when
    a teacher is given (limited to the English monolingual benchmark). ``precision``
    (``auto``, ``fp32``, ``bf16``) applies to every checkpoint model, and is part of its cache key.
    """
    ckpts = {"base_student": student_base, "stage1": stage1.checkpoint, "mimo": mimo.checkpoint,
             **{name: t.checkpoint for name, t in baselines.items()}}
    models: dict[str, Embedder] = {
        name: CheckpointEmbedder(name, c.path, c.fingerprint, batch_size=batch_size, precision=precision)
        for name, c in ckpts.items()}
    models["use_m"] = UseEmbedder()
    only: dict[str, tuple[str, ...]] = {}
    if teacher is not None:
        models["teacher_en"] = CheckpointEmbedder("teacher_en", teacher.path, teacher.fingerprint,
                                                  batch_size=batch_size, precision=precision)
        only["teacher_en"] = TEACHER_BENCHMARKS
    return models, only
