"""Streaming readers of a user's tabular files: TSV, Parquet, or a ``datasets`` folder.

The parallel corpus (`corpus`) and the retrieval pairs (`pairs`) accept the same three
containers. `open_user_table` checks the container and its header, then
`UserTable.batches` yields the data rows a batch at a time, so a file of any size is read
through constant memory:

- TSV: UTF-8, tab-separated, one header line; fields quoted as by ``csv``/pandas when
  they hold tabs, quotes or newlines. Read line by line: an undecodable byte is named by
  its line.
- Parquet: read a record batch at a time (``pyarrow.parquet.ParquetFile.iter_batches``).
- A folder written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``:
  each split's name comes with its rows): its Arrow stream files are read a batch at a
  time with pyarrow; a layout this reader does not know is opened with
  ``datasets.load_from_disk`` and iterated.

Rows are numbered as the users sees them: 1-based data rows, the header is row 0 (for a
``DatasetDict``, the splits' rows continue one numbering). Every problem with the file
itself raises `MimoInputError` naming the file, the row where there is one, and what
to do; what the columns must hold is the caller's to check.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import MimoInputError

#: ``check_columns(source, columns, hint)``: raise `MimoInputError` when the header lacks
#: what the caller needs (``hint`` adds what the reader noticed, e.g. commas in a TSV header).
ColumnCheck = Callable[[str, Sequence[str], str], None]

Record = tuple[int, dict]  # (1-based data row, {column: value})

BATCH_ROWS = 8192
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _no_check(source: str, columns: Sequence[str], hint: str) -> None:
    return None


@dataclass
class TablePart:
    """One table of a user file: the whole file, or one split of a ``DatasetDict`` folder."""

    source: str  # what error messages name
    columns: list[str]
    split: str | None  # the DatasetDict split name, if any
    _open: Callable[[Sequence[str], int], Iterator[list[dict]]] = field(repr=False)


@dataclass
class UserTable:
    path: Path
    kind: str  # "tsv", "parquet" or "datasets"
    parts: list[TablePart]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for p in self.parts for c in p.columns))

    def batches(self, columns: Sequence[str] | None = None,
                batch_rows: int = BATCH_ROWS) -> Iterator[tuple[TablePart, list[Record]]]:
        """``(part, [(row, {column: value}), ...])`` a batch at a time; ``columns`` limits the
        values to those present (None: every column)."""
        row = 0
        for part in self.parts:
            cols = [c for c in (columns if columns is not None else part.columns) if c in part.columns]
            for recs in part._open(cols, batch_rows):
                out = []
                for rec in recs:
                    if rec is None:  # a blank TSV record: it takes a row number, yields nothing
                        row += 1
                        continue
                    row += 1
                    out.append((row, rec))
                if out:
                    yield part, out


def open_user_table(path: str | Path, *, check_columns: ColumnCheck = _no_check,
                    what: str = "a TSV file, a Parquet file or a folder saved by datasets.Dataset.save_to_disk",
                    header_hint: str = "a header line and rows") -> UserTable:
    """Open a user's TSV, Parquet or ``datasets`` folder for streaming (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MimoInputError(f"no such file or folder; source_path must name {what}", source=str(p))
    if p.is_dir():
        return _open_datasets_dir(p, check_columns)
    if p.suffix.lower() in (".parquet", ".pq") or _is_parquet(p):
        return _open_parquet(p, check_columns)
    return _open_tsv(p, check_columns, header_hint)


def _is_parquet(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"PAR1"


# --------------------------------------------------------------------------- TSV


def _text_lines(p: Path) -> Iterator[str]:
    """The file's lines as text (line endings kept; a lone CR ends a line too), decoded one
    at a time; undecodable bytes raise `MimoInputError` naming their line."""
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start:e.end].hex(" ")
                where = "the header line" if lineno == 1 else f"line {lineno}"
                raise MimoInputError(
                    f"undecodable bytes ({bad}) in {where}: the file is not UTF-8; re-save it as UTF-8 "
                    f"(e.g. `iconv -f latin1 -t utf-8`)", source=str(p),
                    row=lineno - 1 if lineno > 1 else None) from None
            if "\r" in line:
                yield from (piece for piece in _LONE_CR.split(line) if piece)
            else:
                yield line


def _all_blank(p: Path) -> bool:
    """Whether the file holds nothing but whitespace (and a byte-order mark)."""
    with open(p, "rb") as f:
        first = True
        while block := f.read(1 << 20):
            if first and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            first = False
            if block.strip():
                return False
    return True


def _tsv_reader(p: Path):
    return csv.reader(_text_lines(p), dialect="excel-tab", strict=True)


def _read_header(p: Path, reader, header_hint: str) -> list[str]:
    try:
        first = next(reader)
    except StopIteration:
        raise MimoInputError(f"the file is empty; it needs {header_hint}", source=str(p)) from None
    except csv.Error as e:
        raise MimoInputError(f"unreadable header line ({e})", source=str(p)) from None
    return [h.strip() for h in first]


def _open_tsv(p: Path, check_columns: ColumnCheck, header_hint: str) -> UserTable:
    reader = _tsv_reader(p)
    header = _read_header(p, reader, header_hint)
    if not any(header) and len(header) <= 1 and _all_blank(p):
        raise MimoInputError(f"the file is empty; it needs {header_hint}", source=str(p))
    hint = ""
    if len(header) == 1 and ("," in header[0] or ";" in header[0]):
        hint = "; the header has no tab: this file looks comma/semicolon-separated, use tabs"
    check_columns(str(p), header, hint)

    def records(columns: Sequence[str], batch_rows: int) -> Iterator[list]:
        idx = [(c, header.index(c)) for c in columns]
        reader = _tsv_reader(p)
        _read_header(p, reader, header_hint)
        batch: list = []
        row = 0
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise MimoInputError(f"(line {start}) unreadable TSV record ({e}); check its quotes",
                                     source=str(p), row=row + 1) from None
            row += 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                batch.append(None)  # blank line
            elif len(fields) != len(header):
                raise MimoInputError(
                    f"(line {start}) has {len(fields)} tab-separated fields, the header has "
                    f"{len(header)}; remove tabs inside texts or quote the field", source=str(p), row=row)
            else:
                batch.append({c: fields[i] for c, i in idx})
            if len(batch) >= batch_rows:
                yield batch
                batch = []
        if batch:
            yield batch

    return UserTable(p, "tsv", [TablePart(str(p), header, None, records)])


# --------------------------------------------------------------------------- Parquet and Arrow


def _columns_of(batch: pa.RecordBatch | pa.Table, columns: Sequence[str], source: str) -> list[dict]:
    try:
        cols = {c: batch.column(c).to_pylist() for c in columns}
    except (pa.ArrowException, UnicodeDecodeError, OSError) as e:
        raise MimoInputError(f"unreadable values ({type(e).__name__}: {e}); write the file again",
                             source=source) from None
    n = batch.num_rows
    return [{c: cols[c][i] for c in columns} for i in range(n)]


def _open_parquet(p: Path, check_columns: ColumnCheck) -> UserTable:
    def unreadable(e: BaseException) -> MimoInputError:
        return MimoInputError(f"not a readable Parquet file ({e}); write it with pandas.DataFrame.to_parquet "
                              f"or pyarrow.parquet.write_table", source=str(p))

    try:
        names = list(pq.ParquetFile(p).schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(e) from None
    check_columns(str(p), names, "")

    def records(columns: Sequence[str], batch_rows: int) -> Iterator[list]:
        try:
            pf = pq.ParquetFile(p)
            it = pf.iter_batches(batch_size=batch_rows, columns=list(columns))
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                yield _columns_of(batch, columns, str(p))
        except MimoInputError:
            raise
        except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as e:
            raise unreadable(e) from None

    return UserTable(p, "parquet", [TablePart(str(p), names, None, records)])


def _arrow_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a ``Dataset.save_to_disk`` folder in order, or None if its
    state.json is not the layout this reader knows (then `datasets` reads it)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        if state.get("_indices_data_files"):
            return None
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if files and all(f.is_file() for f in files) else None


def _arrow_part(folder: Path, files: list[Path], source: str, split: str | None) -> TablePart | None:
    try:
        with pa.OSFile(str(files[0])) as f:
            names = list(pa.ipc.open_stream(f).schema.names)
    except (pa.ArrowException, OSError):
        return None

    def records(columns: Sequence[str], batch_rows: int) -> Iterator[list]:
        for path in files:
            try:
                with pa.OSFile(str(path)) as f:
                    reader = pa.ipc.open_stream(f)
                    for batch in reader:
                        for start in range(0, batch.num_rows, batch_rows):
                            yield _columns_of(batch.slice(start, batch_rows), columns, source)
            except MimoInputError:
                raise
            except (pa.ArrowException, OSError) as e:
                raise MimoInputError(f"unreadable Arrow file {path.name} ({e}); re-save the dataset with "
                                     f"save_to_disk", source=str(folder)) from None

    return TablePart(source, names, split, records)


def _datasets_part(ds, source: str, split: str | None) -> TablePart:
    def records(columns: Sequence[str], batch_rows: int) -> Iterator[list]:
        for table in ds.with_format("arrow").iter(batch_size=batch_rows):
            yield _columns_of(table, columns, source)

    return TablePart(source, list(ds.column_names), split, records)


def _open_datasets_dir(p: Path, check_columns: ColumnCheck) -> UserTable:
    if not ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        raise MimoInputError(
            "this folder was not written by datasets' save_to_disk (no state.json or "
            "dataset_dict.json); give a folder saved with Dataset.save_to_disk, or the path "
            "of a .tsv or .parquet file", source=str(p))
    parts: list[TablePart] | None = []
    if (p / "dataset_dict.json").exists():
        try:
            splits = json.loads((p / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            assert isinstance(splits, list) and all(isinstance(s, str) for s in splits)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            splits = None
        for name in splits or []:
            files = _arrow_files(p / name)
            part = _arrow_part(p, files, f"{p} (split {name})", name) if files else None
            if part is None:
                parts = None
                break
            parts.append(part)
        if splits is None:
            parts = None
    else:
        files = _arrow_files(p)
        part = _arrow_part(p, files, str(p), None) if files else None
        parts = [part] if part is not None else None
    if parts is None:  # a layout the direct reader does not know: let datasets open it
        parts = _parts_via_datasets(p)
    for part in parts:
        check_columns(part.source, part.columns, "")
    return UserTable(p, "datasets", parts)


def _parts_via_datasets(p: Path) -> list[TablePart]:
    import datasets  # heavy: imported only for this format

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - any failure here is the folder's
        raise MimoInputError(f"datasets.load_from_disk failed ({type(e).__name__}: {e}); "
                             f"re-save the dataset with save_to_disk", source=str(p)) from None
    if isinstance(ds, datasets.DatasetDict):
        return [_datasets_part(part, f"{p} (split {name})", name) for name, part in ds.items()]
    return [_datasets_part(ds, str(p), None)]


def as_text(value: object, column: str, source: str, row: int, *, allow_int: bool = False) -> str:
    """A cell as text: None is empty; an int is accepted where ``allow_int`` (ids); any
    other non-string raises `MimoInputError` naming the column and the row."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MimoInputError(f"column {column} holds {type(value).__name__} {value!r}, not text; "
                         f"store it as a string", source=source, row=row)


def path_fingerprint(path: str | Path) -> str:
    """A user file's identity by content: SHA-256 of a file, or of a folder's files and names."""
    from .fileio import sha256_file

    p = Path(path).expanduser()
    if p.is_file():
        return "sha256:" + sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
        return "dir-sha256:" + h.hexdigest()
    raise MimoInputError("no such file or folder; source_path must name a TSV file, a Parquet "
                         "file or a folder saved by datasets.Dataset.save_to_disk", source=str(p))


# --------------------------------------------------------------------------- row keys
# Checks across rows run on one integer key per row (a hash), not on the texts: see
# `corpus` and `pairs`.


def unique_in_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code of each key, numbered in order of first appearance; index of each code's first row)."""
    uniq, first_idx, inv = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first_idx, kind="stable")
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inv.reshape(-1)], first_idx[order]


def first_repeat(keys: np.ndarray) -> tuple[int, int] | None:
    """(first, second) indices of the earliest repeated key, earliest by the second index."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    same = np.flatnonzero(k[1:] == k[:-1]) + 1
    if not len(same):
        return None
    i = same[np.argmin(order[same])]
    return int(order[np.searchsorted(k, k[i])]), int(order[i])
