"""The base student as a checkpoint folder under ``MIMO_HOME/models/base_student/<fp>/``."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .catalog import ResolvedModel
from .checkpoint import PoolingSpec, read_pooling_spec, write_sentence_transformers_files
from .fileio import atomic_dir

log = logging.getLogger(__name__)

#: Prompts of known students whose folders may lack them (e.g. an older hub copy).
KNOWN_PROMPTS = {"multilingual-e5": {"query": "query: ", "document": "passage: "}}

#: Files of a model folder that a checkpoint keeps (sentence-transformers files are rewritten).
_KEEP = ("config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model",
         "merges.txt", "vocab.json", "added_tokens.json")


@dataclass(frozen=True)
class ModelCheckpoint:
    """A sentence-transformers checkpoint folder of one of the pipeline's models."""

    model: str  # "base_student", "stage1", "mimo", ...
    path: str
    fingerprint: str
    source_ref: str
    dim: int
    prompts: dict
    source: str = ""  # where an exported model came from: "hub", "catalog" or "local" ("" for a trained one)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no second copy of the weights
    except OSError:
        shutil.copy2(src, dst)


def export_checkpoint(model: ResolvedModel, models_dir: str | Path, name: str = "base_student") -> ModelCheckpoint:
    """Export a resolved model as ``models_dir/<name>/<fingerprint>/`` (idempotent)."""
    src = Path(model.path)
    spec = read_pooling_spec(src)
    prompts = spec.prompts or next((p for k, p in KNOWN_PROMPTS.items() if k in model.ref.lower()), {})
    dest = Path(models_dir) / name / model.fingerprint
    if not (dest / "modules.json").exists():
        log.info("exporting %s (%s) to %s", model.ref, model.fingerprint, dest)
        with atomic_dir(dest) as tmp:
            for pattern in _KEEP:
                for f in src.glob(pattern):
                    _link_or_copy(f, tmp / f.name)
            write_sentence_transformers_files(
                tmp, PoolingSpec(dim=spec.dim, mode=spec.mode, normalize=spec.normalize,
                                 max_seq_length=spec.max_seq_length, prompts=prompts))
    return ModelCheckpoint(model=name, path=str(dest), fingerprint=model.fingerprint,
                           source_ref=model.ref, dim=spec.dim, prompts=dict(prompts), source=model.source)
