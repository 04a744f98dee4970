"""A content-addressed embedding cache in Parquet, one folder per model fingerprint.

Layout: ``<root>/<fingerprint>/meta.json`` (model, dim, normalised) and shards
``part-<hash>.parquet`` with columns ``text_hash`` (hex BLAKE2b-128 of the UTF-8
text) and ``embedding`` (fixed-size list of float32). Shards are written atomically
and named by the hash of their keys, so a crash loses at most the shard in flight,
two writers never clobber each other, and a re-run encodes only what is missing.
Vectors of two models never mix: the folder is the model's fingerprint and the
dimension is checked on every write.

Shards carry page checksums (`fileio.write_parquet`) and each is read in full, checksums
checked, the first time a process indexes it. A shard that cannot be read (truncated,
bit rot, a foreign file) is moved aside to ``<name>.corrupt-<UTC time>`` with a WARNING;
its texts are then simply cache misses, so the next build re-encodes them and nothing else.

Two processes filling one folder (two runs of the pipeline on one MIMO_HOME) encode each text
once: the first that finds texts missing takes the folder's file lock (``.fill.lock``,
``flock``) and holds it to the end of its fill; the other logs that it waits, then re-reads the
shards and encodes only what is still missing (usually nothing). A fill that finds every text
cached takes no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from .errors import MimoInputError
from .fileio import CorruptFileError, dir_size, file_lock, quarantine, read_parquet, write_json, write_parquet

log = logging.getLogger(__name__)


#: Keys of each shard read so far, by (path, size, mtime_ns). Shards are immutable
#: (content-named, written atomically), so a process reads each one's keys once however
#: many `EmbeddingCache` handles open the folder (a build, its check, then `vectors`).
_SHARD_KEYS: dict[tuple[str, int, int], list[str]] = {}


def _shard_keys(shard: Path) -> list[str]:
    st = shard.stat()
    memo = (str(shard), st.st_size, st.st_mtime_ns)
    keys = _SHARD_KEYS.get(memo)
    if keys is None:
        # the whole shard, checksums checked: a damaged vector column is found now, not mid-run
        keys = read_parquet(shard).column("text_hash").to_pylist()
        _SHARD_KEYS[memo] = keys
    return keys


def _lost(shard: Path, cache_dir: Path) -> None:
    quarantine(shard, f"the texts it held are cache misses now: the next build of {cache_dir} re-encodes "
                      "them (and only them)")


def text_key(text: str) -> str:
    """The cache key of a text: hex BLAKE2b-128 of its UTF-8 bytes."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache:
    """Vectors of one model, keyed by text hash, in Parquet shards under `root/fingerprint`."""

    def __init__(self, root: str | Path, fingerprint: str, *, dim: int, model: str = "", normalized: bool = False):
        self.dir = Path(root) / fingerprint
        self.fingerprint, self.dim = fingerprint, int(dim)
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if int(meta["dim"]) != self.dim:
                raise MimoInputError(
                    f"cache holds {meta['dim']}-d vectors but the model gives {self.dim}-d: the "
                    f"folder belongs to another model; delete it to rebuild", source=str(self.dir))
        else:
            write_json({"fingerprint": fingerprint, "dim": self.dim, "model": model,
                        "normalized": normalized}, meta_path)
        self._index: dict[str, tuple[Path, int]] | None = None

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def _load_index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            index: dict[str, tuple[Path, int]] = {}
            for shard in self.shards():
                try:
                    keys = _shard_keys(shard)
                except CorruptFileError:
                    _lost(shard, self.dir)
                    continue
                for row, k in enumerate(keys):
                    index.setdefault(k, (shard, row))
            self._index = index
        return self._index

    def refresh(self) -> None:
        """Forget the index: the next lookup re-reads the folder (shards another process wrote)."""
        self._index = None

    def __len__(self) -> int:
        return len(self._load_index())

    def __contains__(self, key: str) -> bool:
        return key in self._load_index()

    def missing(self, keys: Sequence[str]) -> list[str]:
        index = self._load_index()
        return [k for k in dict.fromkeys(keys) if k not in index]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors [len(keys), dim] for cached keys (KeyError names the first missing one)."""
        index = self._load_index()
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            if k not in index:
                raise KeyError(f"text hash {k} is not in the cache {self.dir}")
            shard, row = index[k]
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            try:
                emb = read_parquet(shard, columns=["embedding"]).column(0).combine_chunks()
            except (CorruptFileError, FileNotFoundError) as e:
                # damaged since this handle indexed it: forget its keys, so a build re-encodes them
                if not isinstance(e, FileNotFoundError):
                    _lost(shard, self.dir)
                self._index = None
                raise KeyError(f"shard {shard.name} of the cache {self.dir} was lost ({e}); its texts are "
                               "re-encoded by the next build of this cache") from e
            flat = emb.values.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
            rows = np.array([r for _, r in pairs])
            out[[i for i, _ in pairs]] = flat[rows]
        return out

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one shard (atomically) and index it."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(keys), self.dim):
            raise ValueError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to cache non-finite vectors")
        name = hashlib.blake2b("\n".join(keys).encode(), digest_size=8).hexdigest()
        table = pa.table({
            "text_hash": pa.array(list(keys), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dim),
        })
        shard = write_parquet(table, self.dir / f"part-{name}.parquet")
        st = shard.stat()
        _SHARD_KEYS[(str(shard), st.st_size, st.st_mtime_ns)] = list(keys)
        index = self._load_index()
        for row, k in enumerate(keys):
            index.setdefault(k, (shard, row))
        return shard

    def size_bytes(self) -> int:
        return dir_size(self.dir)


#: The file lock of a cache folder, held by the process that fills it.
FILL_LOCK = ".fill.lock"


class _FillLock:
    """The folder's fill lock, taken on first need (`acquire`) and released on exit. Taking it
    after another process held it refreshes the cache's index, so that what the other process
    wrote counts as hits."""

    def __init__(self, cache: "EmbeddingCache"):
        self.cache, self._held = cache, None

    def acquire(self) -> None:
        if self._held is not None:
            return
        held = contextlib.ExitStack()
        waited = held.enter_context(file_lock(
            self.cache.dir / FILL_LOCK, waiting=f"cache {self.cache.dir}: another process is filling it; waiting "
                                                "for it, then encoding only what it left missing"))
        self._held = held  # only once taken: an interrupted wait leaves nothing that looks held
        if waited is not None:
            log.info("cache %s: the other process is done after %.1fs", self.cache.dir, waited)
        self.cache.refresh()  # whether or not we waited: a fill that ended just now is on disk

    def release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None


@contextlib.contextmanager
def _fill_lock(cache: "EmbeddingCache"):
    lock = _FillLock(cache)
    try:
        yield lock
    finally:
        lock.release()


@dataclass(frozen=True)
class CacheReport:
    """What one cache build did."""

    path: str
    fingerprint: str
    dim: int
    n_texts: int  # unique texts asked for
    hits: int
    misses: int  # texts encoded in this build
    seconds: float  # time spent encoding
    cache_rows: int  # rows in the cache after the build
    cache_bytes: int

    @property
    def sentences_per_s(self) -> float:
        return self.misses / self.seconds if self.seconds > 0 else 0.0


def fill_cache(
    cache: EmbeddingCache,
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    *,
    chunk_size: int = 2048,
) -> CacheReport:
    """Encode the texts missing from `cache`, writing one shard per chunk.

    `encode` is called only for missing texts (nothing at all on a full hit). A crash
    loses at most the chunk in flight; a re-run resumes from the shards on disk.
    """
    unique = list(dict.fromkeys(texts))
    keys = [text_key(t) for t in unique]
    with _fill_lock(cache) as lock:
        if cache.missing(keys):  # under the folder's lock, then again: another process may have filled them
            lock.acquire()
        missing = set(cache.missing(keys))
        todo = [(k, t) for k, t in zip(keys, unique) if k in missing]
        hits = len(unique) - len(todo)
        log.info("cache %s: %d texts, %d hits, %d to encode", cache.dir, len(unique), hits, len(todo))
        t0 = time.perf_counter()
        for start in range(0, len(todo), chunk_size):
            part = todo[start:start + chunk_size]
            vecs = encode([t for _, t in part])
            cache.put([k for k, _ in part], vecs)
            done = start + len(part)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            log.info("encoded %d/%d (%.1f sentences/s)", done, len(todo), rate)
        seconds = time.perf_counter() - t0 if todo else 0.0
    return CacheReport(path=str(cache.dir), fingerprint=cache.fingerprint, dim=cache.dim,
                       n_texts=len(unique), hits=hits, misses=len(todo), seconds=seconds,
                       cache_rows=len(cache), cache_bytes=cache.size_bytes())


def fill_cache_stream(
    cache: EmbeddingCache,
    chunks: Iterable[Sequence[str]],
    encode: Callable[[list[str]], np.ndarray],
    *,
    chunk_size: int = 2048,
) -> CacheReport:
    """`fill_cache` over texts that arrive a chunk at a time (of any size): the missing
    ones are encoded and written ``chunk_size`` at a time as they accumulate, so memory
    holds one chunk, whatever the total. Texts repeated across chunks are counted once
    only if the chunks are de-duplicated upstream (see `teacher.iter_teacher_texts`)."""
    n_texts = hits = misses = 0
    seconds = 0.0
    todo: list[tuple[str, str]] = []

    def flush(limit: int) -> None:
        nonlocal todo, seconds, misses
        while len(todo) >= limit and todo:
            part, todo = todo[:chunk_size], todo[chunk_size:]
            t0 = time.perf_counter()
            vecs = encode([t for _, t in part])
            seconds += time.perf_counter() - t0
            cache.put([k for k, _ in part], vecs)
            misses += len(part)
            log.info("encoded %d texts so far (%.1f sentences/s)", misses, misses / max(seconds, 1e-9))

    pending: set[str] = set()
    with _fill_lock(cache) as lock:
        for chunk in chunks:
            unique = list(dict.fromkeys(chunk))
            keys = [text_key(t) for t in unique]
            absent = set(cache.missing(keys))
            if absent:  # the first miss takes the folder's lock (and re-reads what a waited-for fill wrote)
                lock.acquire()
                absent = set(cache.missing(keys))
            n_texts += len(unique)
            for k, t in zip(keys, unique):
                if k in absent and k not in pending:
                    todo.append((k, t))
                    pending.add(k)
                elif k not in absent:
                    hits += 1
            flush(chunk_size)
            pending.intersection_update(k for k, _ in todo)
        flush(1)
    log.info("cache %s: %d texts, %d hits, %d encoded", cache.dir, n_texts, hits, misses)
    return CacheReport(path=str(cache.dir), fingerprint=cache.fingerprint, dim=cache.dim,
                       n_texts=n_texts, hits=hits, misses=misses, seconds=seconds,
                       cache_rows=len(cache), cache_bytes=cache.size_bytes())
