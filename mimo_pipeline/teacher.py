"""The teacher's English vectors for every English sentence later stages need.

Stage 1 distils onto the teacher's vectors of the English side of the training pairs
and Stage 2 onto those of the (English versions of the) query and passage verses, all
from the training split. They are computed once per teacher and cached by text hash in
``MIMO_HOME/teacher_cache/<teacher fingerprint>/`` (see `embedding_cache`); vectors
encoded in bf16 (``precision``, see `precision`) go to ``<teacher fingerprint>-bf16/``
beside it, so two precisions never mix. That cache key is the handle's ``fingerprint``,
which the training stages fold into their checkpoints' fingerprints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .catalog import ResolvedModel
from .checkpoint import read_pooling_spec
from .embedding_cache import CacheReport, EmbeddingCache, fill_cache, text_key
from .encoder import ProgressLog, SentenceEncoder, default_device
from .precision import cache_fingerprint, resolve_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherEmbeddings:
    """A handle on one teacher's cache: what later stages read vectors from."""

    cache_root: str
    teacher_ref: str
    teacher_path: str
    fingerprint: str  # the cache key: the teacher's fingerprint, + "-bf16" for bf16 vectors
    dim: int
    normalized: bool
    report: CacheReport
    precision: str = "fp32"  # resolved: "fp32" or "bf16"

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.cache_root, self.fingerprint, dim=self.dim)

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """The teacher's vectors [len(texts), dim] of English texts already in the cache."""
        return self.cache().get([text_key(t) for t in texts])


def english_texts(corpus_path: str | Path, splits: Sequence[str] = ("train",)) -> list[str]:
    """Unique English sentences of the given splits of a parallel corpus, in file order."""
    table = pq.read_table(corpus_path, columns=["en", "split"])
    table = table.filter(pc.is_in(table["split"], value_set=pa.array(list(splits))))
    return list(dict.fromkeys(table["en"].to_pylist()))


def teacher_cache_for(teacher: ResolvedModel, cache_root: str | Path, precision: str = "fp32") -> EmbeddingCache:
    """The teacher's cache at a *resolved* precision (``fp32``: ``<fingerprint>/``, ``bf16``: ``<fingerprint>-bf16/``)."""
    spec = read_pooling_spec(teacher.path)
    return EmbeddingCache(cache_root, cache_fingerprint(teacher.fingerprint, precision), dim=spec.dim,
                          model=teacher.ref, normalized=spec.normalize)


def build_teacher_embeddings(
    texts: Sequence[str],
    teacher: ResolvedModel,
    cache_root: str | Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 2048,
    device: str | None = None,
    precision: str = "fp32",
) -> TeacherEmbeddings:
    """Encode with the teacher every text not yet in its cache; load the model only if needed.

    ``precision`` (``auto``, ``fp32``, ``bf16``) is resolved for ``device`` and picks the cache.
    """
    device = device or default_device()
    resolved = resolve_precision(precision, device)
    cache = teacher_cache_for(teacher, cache_root, resolved)
    encoder: SentenceEncoder | None = None
    progress = ProgressLog(f"teacher {teacher.name}")

    def encode(batch: list[str]) -> np.ndarray:
        nonlocal encoder
        if encoder is None:
            log.info("loading teacher %s from %s", teacher.ref, teacher.path)
            encoder = SentenceEncoder(teacher.path, device=device, precision=resolved)
        return encoder.encode(batch, batch_size=batch_size, progress=progress)

    report = fill_cache(cache, texts, encode, chunk_size=chunk_size)
    log.info("teacher cache %s: %d hits, %d misses, %.1f sentences/s, %d rows, %.1f MB",
             report.fingerprint, report.hits, report.misses, report.sentences_per_s,
             report.cache_rows, report.cache_bytes / 1e6)
    spec = read_pooling_spec(teacher.path)
    return TeacherEmbeddings(
        cache_root=str(cache_root), teacher_ref=teacher.ref, teacher_path=str(teacher.path),
        fingerprint=cache.fingerprint, dim=spec.dim, normalized=spec.normalize, report=report,
        precision=resolved,
    )


@dataclass(frozen=True)
class TeacherCheck:
    ok: bool
    missing: int
    non_finite: int


def check_teacher_embeddings(result: TeacherEmbeddings, texts: Sequence[str]) -> TeacherCheck:
    """Every text has a cached vector of the right dimension, and all are finite."""
    cache = result.cache()
    missing = len(cache.missing([text_key(t) for t in texts]))
    if missing:
        return TeacherCheck(ok=False, missing=missing, non_finite=0)
    vecs = result.vectors(list(dict.fromkeys(texts)))
    non_finite = int((~np.isfinite(vecs)).any(axis=1).sum())
    return TeacherCheck(ok=non_finite == 0 and vecs.shape[1] == result.dim, missing=0, non_finite=non_finite)
