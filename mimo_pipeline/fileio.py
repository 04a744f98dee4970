"""Crash-safe file writes: write to a temporary name in the same folder, then rename.

A reader never sees a half-written file: `os.replace` is atomic on POSIX when source
and destination are on the same file system. A full disk (ENOSPC, or a quota: EDQUOT)
fails the write cleanly: the temporary file is removed and `DiskFullError` names the
folder, the bytes the write needed (when known) and the free space.

Parquet files carry a CRC-32 checksum per page, written with them (`write_parquet`) and
checked on every read through `read_parquet`; a file that cannot be read raises
`CorruptFileError`, and `quarantine` moves such a file aside (``<name>.corrupt-<UTC time>``)
so that what owns it rebuilds only what was lost.

`file_lock` is the one advisory lock (``flock``) that processes sharing a MIMO_HOME or a
DAGSTER_HOME queue on: training a fingerprint, filling an embedding cache, appending results,
creating MLflow's or Dagster's SQLite tables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write ran out of space; nothing partial was left behind (see the message)."""


class CorruptFileError(OSError):
    """A file that exists cannot be read back: truncated, bit-flipped, not what its name says."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: cannot be read ({reason})")
        self.path, self.reason = Path(path), reason


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, DiskFullError):
        return False  # already explained by an inner writer
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc)  # pyarrow and torch report errno in the message only
    return isinstance(exc, (OSError, RuntimeError)) and any(
        m in text for m in ("No space left on device", "Disk quota exceeded", "errno 28]", "errno 122]"))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def disk_full_error(folder: str | os.PathLike, exc: BaseException, *, wanted: int | None = None,
                    written: int | None = None) -> DiskFullError:
    """The error a write raises when the disk (or quota) is full: folder, bytes, free space."""
    folder = Path(folder)
    try:
        free = _fmt_bytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    parts = [f"no space left writing into {folder}"]
    if wanted is not None:
        parts.append(f"the write needed about {_fmt_bytes(wanted)}")
    if written:
        parts.append(f"{_fmt_bytes(written)} were written before it failed and have been removed")
    parts.append(f"{free} free on that file system")
    code = exc.errno if isinstance(exc, OSError) and exc.errno in _DISK_FULL else errno.ENOSPC
    return DiskFullError(code, "; ".join(parts) + f"; free space (or set MIMO_HOME elsewhere) and re-run ({exc})")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, waiting: str | None = None) -> Iterator[float | None]:
    """Hold an exclusive ``flock`` on `path` (created, with its folder) for the ``with`` block.

    Another process holding it makes this one wait; `waiting`, if given, is logged at INFO
    before the wait. Yields the seconds waited, or None when the lock was free. The kernel
    drops the lock when its holder dies, so a crashed process never leaves it taken.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        waited = None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            t0 = time.perf_counter()
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = time.perf_counter() - t0
        try:
            yield waited
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _size(path: Path) -> int:
    try:
        return dir_size(path) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it onto `dest`.

    Out of space (ENOSPC/EDQUOT), the temporary file is removed and `DiskFullError` says
    where, how much (`expected_bytes` if the caller knows it) and what is free.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException as e:
        if _is_disk_full(e):
            written = _size(tmp_path)
            tmp_path.unlink(missing_ok=True)
            raise disk_full_error(dest.parent, e, wanted=expected_bytes, written=written) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success rename it onto `dest`.

    If `dest` already exists (e.g. another process finished first), the new folder
    is discarded: folders written this way are content-addressed, so both are equal.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    except BaseException as e:
        if _is_disk_full(e):
            written = _size(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_full_error(dest.parent, e, written=written) from e
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(table: pa.Table, dest: str | os.PathLike) -> Path:
    """Write a pyarrow table to Parquet atomically, with a CRC-32 checksum per page."""
    with atomic_path(dest, expected_bytes=table.nbytes) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    return Path(dest)


def read_parquet(path: str | os.PathLike, columns: Sequence[str] | None = None, *, filters=None) -> pa.Table:
    """`pyarrow.parquet.read_table` that checks the page checksums; a file that cannot be read
    raises `CorruptFileError` (a missing one `FileNotFoundError`, a missing column the usual error)."""
    def read(cols, flt):
        return pq.read_table(path, columns=list(cols) if cols is not None else None, filters=flt,
                             page_checksum_verification=True)

    try:
        return read(columns, filters)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        if columns is None and filters is None:
            raise CorruptFileError(path, f"{type(e).__name__}: {e}") from e
        try:  # is the file at fault, or the request (a column it does not have)?
            read(None, None)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as e2:
            raise CorruptFileError(path, f"{type(e2).__name__}: {e2}") from e
        raise


def check_parquet(path: str | os.PathLike) -> str | None:
    """Why a Parquet file cannot be read in full (checksums included), or None if it can.

    Reads batch by batch: memory stays flat however large the file."""
    try:
        for _ in iter_parquet_batches(path, batch_size=8192):
            pass
    except CorruptFileError as e:
        return e.reason
    return None


def iter_parquet_batches(path: str | os.PathLike, columns: Sequence[str] | None = None, *,
                         batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file, page checksums checked, a row group at a time:
    what streams a large file through constant memory. A file that cannot be read raises
    `CorruptFileError` (a missing one `FileNotFoundError`)."""
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        it = pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns is not None else None)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise CorruptFileError(path, f"{type(e).__name__}: {e}") from e


@contextlib.contextmanager
def parquet_writer(dest: str | os.PathLike, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A `pyarrow.parquet.ParquetWriter` on a temporary name beside `dest` (zstd, page
    checksums), renamed onto `dest` once the block ends without error: write a large
    table batch by batch, atomically (see `atomic_path`)."""
    with atomic_path(dest) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd", write_page_checksum=True) as writer:
            yield writer


def quarantine(path: str | os.PathLike, rebuilt: str) -> Path:
    """Move an unreadable file or folder aside to ``<name>.corrupt-<UTC time>`` and say so (WARNING).

    `rebuilt` says what will be rebuilt instead ("its 2,048 texts are re-encoded"). Returns
    the new path; if another process moved it first, returns the old one.
    """
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return path
    log.warning("%s cannot be read: moved aside to %s; %s", path, dest.name, rebuilt)
    return dest


def write_json(obj, dest: str | os.PathLike) -> Path:
    """Write JSON atomically (sorted keys, indented)."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    with atomic_path(dest, expected_bytes=len(text.encode())) as tmp:
        tmp.write_text(text)
    return Path(dest)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_size(path: str | os.PathLike) -> int:
    """Total bytes of the regular files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
