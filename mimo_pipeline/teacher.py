"""The teacher's English vectors for every English sentence later stages need.

Stage 1 distils onto the teacher's vectors of the English side of the corpus' training
pairs (and the held-out probes may read those of its dev split), Stage 2 onto those of
the English versions of the query and passage of each retrieval pair (Bible verses of
the training split, or the user's pairs). `iter_teacher_texts` streams exactly these,
de-duplicated, a chunk at a time, and `build_teacher_embeddings` encodes a chunk at a
time, so neither the list of texts nor the vectors are ever held whole in memory.
They are computed once per teacher and cached by text hash in
``MIMO_HOME/teacher_cache/<teacher fingerprint>/`` (see `embedding_cache`); vectors
encoded in bf16 (``precision``, see `precision`) go to ``<teacher fingerprint>-bf16/``
beside it, so two precisions never mix. That cache key is the handle's ``fingerprint``,
which the training stages fold into their checkpoints' fingerprints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .catalog import ResolvedModel
from .checkpoint import read_pooling_spec
from .embedding_cache import CacheReport, EmbeddingCache, fill_cache_stream, text_key
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
    teacher_source: str = ""  # "hub", "catalog" or "local": where the teacher's files came from
    teacher_fingerprint: str = ""  # the teacher model's own fingerprint (the cache key less the precision)

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


#: The corpus splits whose English the teacher embeds: Stage 1 trains on train; dev is
#: what held-out probes read (never eval: the test side).
TEACHER_SPLITS: tuple[str, ...] = ("train", "dev")


def iter_teacher_texts(corpus_path: str | Path | None, splits: Sequence[str] = TEACHER_SPLITS,
                       pairs=None, *, batch_rows: int = 65_536) -> Iterator[list[str]]:
    """Every English text later stages need, once, a chunk at a time, in file order: the
    English side of the corpus' ``splits``, then the English query and passage of each
    retrieval pair (``pairs``: a `pairs.PairsResult`). Memory: one integer per unique text."""
    from .corpus import iter_english

    sources: list[Iterable[list[str]]] = []
    if corpus_path is not None:
        sources.append(iter_english(corpus_path, splits, batch_rows))
    if pairs is not None:
        sources.append(pairs.iter_english_texts(batch_rows))
    seen: set[int] = set()
    for source in sources:
        for chunk in source:
            out = []
            for t in chunk:
                h = hash(t)
                if h not in seen:
                    seen.add(h)
                    out.append(t)
            if out:
                yield out


def _as_chunks(texts) -> Iterable[Sequence[str]]:
    """A list of texts is one chunk; anything else is an iterable of chunks."""
    if isinstance(texts, (list, tuple)) and (not texts or isinstance(texts[0], str)):
        return [texts]
    return texts


def teacher_cache_for(teacher: ResolvedModel, cache_root: str | Path, precision: str = "fp32") -> EmbeddingCache:
    """The teacher's cache at a *resolved* precision (``fp32``: ``<fingerprint>/``, ``bf16``: ``<fingerprint>-bf16/``)."""
    spec = read_pooling_spec(teacher.path)
    return EmbeddingCache(cache_root, cache_fingerprint(teacher.fingerprint, precision), dim=spec.dim,
                          model=teacher.ref, normalized=spec.normalize)


def build_teacher_embeddings(
    texts: Sequence[str] | Iterable[Sequence[str]],
    teacher: ResolvedModel,
    cache_root: str | Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 2048,
    device: str | None = None,
    precision: str = "fp32",
) -> TeacherEmbeddings:
    """Encode with the teacher every text not yet in its cache; load the model only if needed.

    ``texts``: a list of texts, or an iterable of chunks of texts (`iter_teacher_texts`),
    consumed a chunk at a time. ``precision`` (``auto``, ``fp32``, ``bf16``) is resolved for
    ``device`` and picks the cache.
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

    report = fill_cache_stream(cache, _as_chunks(texts), encode, chunk_size=chunk_size)
    log.info("teacher cache %s: %d hits, %d misses, %.1f sentences/s, %d rows, %.1f MB",
             report.fingerprint, report.hits, report.misses, report.sentences_per_s,
             report.cache_rows, report.cache_bytes / 1e6)
    spec = read_pooling_spec(teacher.path)
    return TeacherEmbeddings(
        cache_root=str(cache_root), teacher_ref=teacher.ref, teacher_path=str(teacher.path),
        fingerprint=cache.fingerprint, dim=spec.dim, normalized=spec.normalize, report=report,
        precision=resolved, teacher_source=teacher.source, teacher_fingerprint=teacher.fingerprint,
    )


@dataclass(frozen=True)
class TeacherCheck:
    ok: bool
    missing: int
    non_finite: int


def check_teacher_embeddings(result: TeacherEmbeddings, texts: Sequence[str] | Iterable[Sequence[str]]) -> TeacherCheck:
    """Every text has a cached vector of the right dimension, and all are finite
    (``texts``: a list, or chunks of texts, read a chunk at a time)."""
    cache = result.cache()
    missing = non_finite = 0
    for chunk in _as_chunks(texts):
        unique = list(dict.fromkeys(chunk))
        absent = set(cache.missing([text_key(t) for t in unique]))
        missing += len(absent)
        if missing:
            continue
        vecs = result.vectors(unique)
        if vecs.shape[1] != result.dim:
            return TeacherCheck(ok=False, missing=0, non_finite=0)
        non_finite += int((~np.isfinite(vecs)).any(axis=1).sum())
    return TeacherCheck(ok=missing == 0 and non_finite == 0, missing=missing, non_finite=non_finite)
