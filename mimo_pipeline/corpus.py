"""English–X parallel corpus: the packaged Bible (default) or a user corpus, filtered and split.

Output: one Parquet file, one row per (verse, language) pair, columns

=========  ======  ===========================================================
column     type    meaning
=========  ======  ===========================================================
verse_id   string  ``"B.C.V"`` (bNumber.cNumber.vNumber) for the Bible; the
                   user's ``verse_id``, else ``"u<row>"`` (see `load_user_corpus`)
book       int32   Bible book number 1-66; 0 for a user corpus
split      string  ``"train"`` (Old Testament, books 1-39) or ``"eval"`` (New
                   Testament, books 40-66); a user corpus' own or seeded split
lang       string  ISO 639-1 code of ``text``
en         string  the English side (World English Bible for the Bible)
text       string  the language-``lang`` side
=========  ======  ===========================================================

Rows are ordered by verse (canonical Bible order, or file order), then by the
configured language order. Rows sharing a ``verse_id`` are translations of the same
English sentence: `verse_texts` pivots them.

Filters, per language, each pair counted under the first one it fails (the ``stats``
table of `CorpusResult`):

- ``near_empty``: either side has fewer than 2 letters/digits after cleaning
  (Bengali has 800 "-" verses, Korean "상동" placeholders);
- ``too_short`` / ``too_long``: either side shorter than ``min_chars`` or longer than
  ``max_chars`` *length units*;
- ``ratio``: longer side / shorter side, in length units, above ``max_length_ratio``;
- ``english_dup``: an English sentence already kept for this language (compared after
  case folding and whitespace normalisation): the first pair is kept;
- ``capped``: left out by the seeded ``max_train_verses`` / ``max_eval_verses`` sample.

Length units (`text_units`) are script-aware: a Han ideograph counts 3.5, a kana 2.0,
a Hangul syllable or jamo 2.75, anything else 1 (Unicode code points). The weights are
fitted on the packaged Bible so that the median of units(X) / len(English) is about
1.0 for Chinese (0.93), Japanese (0.99) and Korean (1.03), against 0.32, 0.45, 0.44 in
raw characters; with raw characters, a ratio limit of 3 would drop a large share of
Chinese verses and ``min_chars`` would drop short but complete CJK verses ("耶稣哭了。").
One formula serves every language, including those of user corpora.

Caps: ``max_train_verses`` / ``max_eval_verses`` sample verse ids per split (seeded),
so every language keeps the same verses; verses kept in every language are preferred.
For the Bible the sample takes whole cross-reference pairs first (a verse and one
verse it cites, both in the split), so that a small corpus still yields stage-2
query–passage pairs and MLIR benchmark queries; a uniform sample of 100 of the 7,957
New Testament verses would hold about one cross-reference.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import bible
from .errors import MimoInputError
from .fileio import atomic_dir, check_parquet, quarantine, read_parquet, sha256_file, write_json, write_parquet

log = logging.getLogger(__name__)

DEFAULT_LANGUAGES: tuple[str, ...] = ("de", "fr", "es", "ru", "ar", "zh", "ko")
SPLITS: tuple[str, ...] = ("train", "eval")
STATS_COLUMNS: tuple[str, ...] = (
    "raw", "near_empty", "too_short", "too_long", "ratio", "english_dup", "capped", "kept")
CORPUS_FILE = "parallel.parquet"
META_FILE = "corpus.json"
# Bump when cleaning, filtering, sampling or the schema change: old caches are then unused.
CORPUS_FORMAT = 1

SCHEMA = pa.schema([
    ("verse_id", pa.string()),
    ("book", pa.int32()),
    ("split", pa.string()),
    ("lang", pa.string()),
    ("en", pa.string()),
    ("text", pa.string()),
])

REQUIRED_COLUMNS: tuple[str, ...] = ("en", "text", "lang")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", "verse_id")
SPLIT_ALIASES = {"train": "train", "training": "train", "eval": "eval", "evaluation": "eval",
                 "dev": "eval", "valid": "eval", "validation": "eval", "test": "eval"}

ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht
hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky
la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny
oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss
st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo
za zh zu""".split())


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CorpusConfig:
    """What `build_parallel_corpus` builds. Every field enters the cache key.

    - ``languages``: non-English ISO 639-1 codes (default: 7 languages over 5 scripts:
      Latin, Cyrillic, Arabic, Han, Hangul). For a user corpus, the default means "the
      languages found in the file"; any other value keeps only those languages.
    - ``source_path``: a user corpus (TSV, Parquet or a ``datasets`` folder, see
      `load_user_corpus`) instead of the packaged Bible.
    - ``max_train_verses`` / ``max_eval_verses``: seeded caps on verse ids per split.
    - ``max_length_ratio``, ``min_chars``, ``max_chars``: filters, in script-aware
      length units (`text_units`).
    - ``english``: bbName of the English Bible (``"4"`` WEB; ``"k"`` KJV, ``"3"`` BBE).
    - ``seed``: sampling and the split of user corpora without one.
    - ``eval_fraction``: share of verse ids held out when a user corpus has no split.
    """

    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    source_path: str | None = None
    max_train_verses: int | None = None
    max_eval_verses: int | None = None
    max_length_ratio: float = 3.0
    min_chars: int = 10
    max_chars: int = 1000
    english: str = bible.ENGLISH_BBNAME
    seed: int = 13
    eval_fraction: float = 0.1

    def __post_init__(self):
        src = "corpus config"
        langs = self.languages
        if isinstance(langs, str):
            langs = langs.replace(",", " ").split()
        langs = tuple(dict.fromkeys(str(x).strip().lower() for x in langs))
        if not langs:
            raise MimoInputError("languages is empty; name at least one non-English ISO 639-1 code",
                                 source=f"{src}: languages")
        for lang in langs:
            check_language_code(lang, source=f"{src}: languages")
        object.__setattr__(self, "languages", langs)
        if self.source_path is not None:
            object.__setattr__(self, "source_path", str(self.source_path))
        for name in ("max_train_verses", "max_eval_verses"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise MimoInputError(f"{name}={v!r}: use a positive integer, or None for no cap",
                                     source=f"{src}: {name}")
        if not self.max_length_ratio >= 1.0:
            raise MimoInputError(f"max_length_ratio={self.max_length_ratio!r}: use a number >= 1",
                                 source=f"{src}: max_length_ratio")
        if not 0 <= self.min_chars < self.max_chars:
            raise MimoInputError(f"min_chars={self.min_chars}, max_chars={self.max_chars}: need "
                                 f"0 <= min_chars < max_chars", source=f"{src}: min_chars")
        if not 0.0 < self.eval_fraction < 1.0:
            raise MimoInputError(f"eval_fraction={self.eval_fraction!r}: use a number in (0, 1)",
                                 source=f"{src}: eval_fraction")


@dataclass(frozen=True)
class CorpusResult:
    """The handle the `parallel_corpus` asset returns (small, picklable)."""

    path: str
    n_rows: int
    languages: tuple[str, ...]
    rows_by_lang_split: dict[tuple[str, str], int]
    stats_columns: tuple[str, ...]
    stats_rows: list[tuple]  # (lang, *counts in stats_columns order)
    config_hash: str
    source: str = "bible"
    n_verses_by_split: dict[str, int] = field(default_factory=dict)


def check_language_code(lang: object, *, source: str | None = None, row: int | None = None) -> str:
    """Return ``lang`` if it is a 2-letter lowercase ISO 639-1 code other than ``en``."""
    if not isinstance(lang, str) or len(lang) != 2 or not lang.isascii() or not lang.isalpha():
        raise MimoInputError(
            f"ill-formed language code {lang!r}: use a 2-letter ISO 639-1 code such as 'de', "
            f"'zh' or 'ko' (not 'deu', 'german' or 'zh-CN')", source=source, row=row)
    if lang not in ISO_639_1:
        raise MimoInputError(
            f"unknown language code {lang!r}: not an ISO 639-1 code; use a 2-letter ISO 639-1 "
            f"code such as 'de', 'zh' or 'ko'", source=source, row=row)
    if lang == "en":
        raise MimoInputError(
            "language code 'en': English is the pivot side (column en); name the language of "
            "the other side instead", source=source, row=row)
    return lang


# --------------------------------------------------------------------------- filters

UNIT_WEIGHTS = {"han": 3.5, "kana": 2.0, "hangul": 2.75}
_HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL_RE = re.compile("[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")


def text_units(text: str) -> float:
    """Script-aware length: a Han ideograph 3.5, a kana 2.0, Hangul 2.75, any other code point 1."""
    n = float(len(text))
    if not text or max(text) < "\u1100":  # no CJK or Hangul possible: the common case
        return n
    return (n + (UNIT_WEIGHTS["han"] - 1) * len(_HAN_RE.findall(text))
            + (UNIT_WEIGHTS["kana"] - 1) * len(_KANA_RE.findall(text))
            + (UNIT_WEIGHTS["hangul"] - 1) * len(_HANGUL_RE.findall(text)))


def _letters(text: str, at_least: int = 2) -> bool:
    k = 0
    for ch in text:
        if ch.isalnum():
            k += 1
            if k >= at_least:
                return True
    return False


def pair_filter_reason(en: str, text: str, *, min_chars: int = 10, max_chars: int = 1000,
                       max_length_ratio: float = 3.0) -> str | None:
    """Name of the first filter a single pair fails, or None if it passes.

    One of ``near_empty``, ``too_short``, ``too_long``, ``ratio`` (English duplicates
    need the other pairs: see `filter_pairs`).
    """
    en, text = en.strip(), text.strip()
    if not (_letters(en) and _letters(text)):
        return "near_empty"
    ue, ux = text_units(en), text_units(text)
    if min(ue, ux) < min_chars:
        return "too_short"
    if max(ue, ux) > max_chars:
        return "too_long"
    if max(ue, ux) / min(ue, ux) > max_length_ratio:
        return "ratio"
    return None


def english_key(en: str) -> str:
    """What two English sentences must share to count as duplicates."""
    return " ".join(en.split()).casefold()


def filter_pairs(en_texts: Sequence[str], texts: Sequence[str], *, min_chars: int = 10,
                 max_chars: int = 1000, max_length_ratio: float = 3.0) -> tuple[list[int], dict[str, int]]:
    """Indices of the pairs kept (in order) and the count per filter.

    Counts have the keys of `STATS_COLUMNS` except ``capped`` (always 0 here); ``raw``
    = the number of pairs, ``kept`` = ``len(indices)``. Dedup keeps the first pair of a
    repeated English sentence among the pairs that pass the other filters.
    """
    if len(en_texts) != len(texts):
        raise ValueError(f"{len(en_texts)} English texts but {len(texts)} texts")
    counts = dict.fromkeys(STATS_COLUMNS, 0)
    counts["raw"] = len(texts)
    seen: set[str] = set()
    kept: list[int] = []
    for i, (en, x) in enumerate(zip(en_texts, texts)):
        reason = pair_filter_reason(en, x, min_chars=min_chars, max_chars=max_chars,
                                    max_length_ratio=max_length_ratio)
        if reason is None:
            key = english_key(en)
            if key in seen:
                reason = "english_dup"
            else:
                seen.add(key)
        if reason is None:
            kept.append(i)
        else:
            counts[reason] += 1
    counts["kept"] = len(kept)
    return kept, counts


# --------------------------------------------------------------------------- user corpora


def load_user_corpus(path: str | Path, *, seed: int = 13, eval_fraction: float = 0.1) -> pa.Table:
    """Read and validate a user's parallel corpus into the corpus schema (`SCHEMA`).

    Accepted: a TSV file (UTF-8, tab-separated, a header line; fields quoted as by
    ``csv``/pandas when they hold tabs, quotes or newlines), a Parquet file, or a folder
    written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``,
    whose split names become ``split`` when there is no such column). Columns: ``en``,
    ``text``, ``lang`` required; ``split`` (train/eval; dev/validation/test mean eval)
    and ``verse_id`` optional; others are ignored.

    Without ``verse_id``, rows sharing the same English sentence share an id,
    ``"u<row>"`` with the 1-based data row of its first occurrence: they are
    translations of one sentence. Without ``split``, a seeded ``eval_fraction`` of the
    verse ids goes to ``eval``, the rest to ``train`` (a verse never straddles splits).
    Texts are whitespace-normalised; ``book`` is 0.

    Every problem raises `MimoInputError` naming the file, the row (1-based data row,
    the header is row 0) and what to do.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MimoInputError(
            "no such file or folder; source_path must name a TSV file, a Parquet file or a "
            "folder saved by datasets.Dataset.save_to_disk", source=str(p))
    if p.is_dir():
        columns, records = _read_datasets_dir(p)
    elif p.suffix.lower() in (".parquet", ".pq") or _is_parquet(p):
        columns, records = _read_parquet(p)
    else:
        columns, records = _read_tsv(p)
    return _validate(str(p), columns, records, seed=seed, eval_fraction=eval_fraction)


def _is_parquet(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"PAR1"


def _missing_columns(source: str, columns: Sequence[str], hint: str = "") -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MimoInputError(
            f"missing column(s) {', '.join(missing)} (found: {', '.join(map(str, columns)) or 'none'}); "
            f"a parallel corpus needs columns en (English), text (its translation) and lang "
            f"(ISO 639-1 code of text), optionally split and verse_id{hint}", source=source)


def _read_tsv(p: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    data = p.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start:e.end].hex(" ")
        where = "the header line" if line == 1 else f"line {line}"
        raise MimoInputError(
            f"undecodable bytes ({bad}) in {where}: the file is not UTF-8; re-save it as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8`)", source=str(p), row=line - 1 if line > 1 else None) from None
    if not content.strip():
        raise MimoInputError("the file is empty; it needs a header line (en, text, lang) and rows",
                             source=str(p))
    reader = csv.reader(io.StringIO(content, newline=""), dialect="excel-tab", strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as e:
        raise MimoInputError(f"unreadable header line ({e})", source=str(p)) from None
    hint = ""
    if len(header) == 1 and ("," in header[0] or ";" in header[0]):
        hint = "; the header has no tab: this file looks comma/semicolon-separated, use tabs"
    _missing_columns(str(p), header, hint)
    records: list[tuple[int, dict]] = []
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
            continue  # blank line
        if len(fields) != len(header):
            raise MimoInputError(
                f"(line {start}) has {len(fields)} tab-separated fields, the header has "
                f"{len(header)}; remove tabs inside texts or quote the field", source=str(p), row=row)
        records.append((row, dict(zip(header, fields))))
    return header, records


def _read_parquet(p: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    try:
        table = pq.read_table(p)
        names, cols = table.column_names, table.to_pydict()  # decoding fails on corrupt (non-UTF-8) strings
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise MimoInputError(f"not a readable Parquet file ({e}); write it with "
                             f"pandas.DataFrame.to_parquet or pyarrow.parquet.write_table",
                             source=str(p)) from None
    return _records_from_columns(str(p), names, cols)


def _records_from_columns(source: str, names: Sequence[str], cols: Mapping[str, list],
                          extra: Mapping[str, object] | None = None) -> tuple[list[str], list[tuple[int, dict]]]:
    names = list(names)
    _missing_columns(source, names)
    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
    n = len(cols[names[0]]) if names else 0
    records = []
    for i in range(n):
        rec = {c: cols[c][i] for c in keep}
        if extra:
            for k, v in extra.items():
                rec.setdefault(k, v)
        records.append((i + 1, rec))
    return keep + [k for k in (extra or {}) if k not in keep], records


def _read_datasets_dir(p: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    if not ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
        raise MimoInputError(
            "this folder was not written by datasets' save_to_disk (no state.json or "
            "dataset_dict.json); give a folder saved with Dataset.save_to_disk, or the path "
            "of a .tsv or .parquet file", source=str(p))
    import datasets  # heavy: imported only for this format

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - any failure here is the folder's
        raise MimoInputError(f"datasets.load_from_disk failed ({type(e).__name__}: {e}); "
                             f"re-save the dataset with save_to_disk", source=str(p)) from None
    if isinstance(ds, datasets.DatasetDict):
        columns: list[str] = []
        records: list[tuple[int, dict]] = []
        for name, part in ds.items():
            src = f"{p} (split {name})"
            split = SPLIT_ALIASES.get(name.lower())
            if split is None and "split" not in part.column_names:
                raise MimoInputError(
                    f"split name {name!r} is neither train nor eval (nor dev/validation/test); "
                    f"rename it or add a split column", source=str(p))
            cols, recs = _records_from_columns(src, part.column_names, part.to_dict(),
                                               extra={"split": split} if split else None)
            columns = list(dict.fromkeys([*columns, *cols]))
            offset = len(records)
            records += [(offset + r, rec) for r, rec in recs]
        return columns, records
    return _records_from_columns(str(p), ds.column_names, ds.to_dict())


def _as_text(value: object, column: str, source: str, row: int) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        if column == "verse_id" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise MimoInputError(f"column {column} holds {type(value).__name__} {value!r}, not text; "
                             f"store it as a string", source=source, row=row)
    return value


def _validate(source: str, columns: Sequence[str], records: list[tuple[int, dict]], *,
              seed: int, eval_fraction: float) -> pa.Table:
    has_split, has_id = "split" in columns, "verse_id" in columns
    if not records:
        raise MimoInputError("no data rows; add rows with en, text and lang", source=source)
    out = {k: [] for k in ("verse_id", "split", "lang", "en", "text")}
    first_row: dict[tuple[str, str], int] = {}
    split_of: dict[str, tuple[str, int]] = {}
    id_of_en: dict[str, str] = {}
    for row, rec in records:
        en = bible.normalize_whitespace(_as_text(rec.get("en"), "en", source, row))
        text = bible.normalize_whitespace(_as_text(rec.get("text"), "text", source, row))
        if not en:
            raise MimoInputError("empty English text (column en); fill it in or delete the row",
                                 source=source, row=row)
        if not text:
            raise MimoInputError("empty text (column text); fill in the translation or delete the row",
                                 source=source, row=row)
        lang = _as_text(rec.get("lang"), "lang", source, row).strip()
        if not lang:
            raise MimoInputError("empty language code (column lang); use a 2-letter ISO 639-1 code "
                                 "such as 'de'", source=source, row=row)
        if len(lang) == 2:
            lang = lang.lower()
        check_language_code(lang, source=source, row=row)
        if has_id:
            vid = _as_text(rec.get("verse_id"), "verse_id", source, row).strip()
            if not vid:
                raise MimoInputError("empty verse_id; give every row an id (rows sharing an id are "
                                     "translations of one sentence) or drop the column", source=source, row=row)
        else:
            vid = id_of_en.setdefault(english_key(en), f"u{row}")
        key = (vid, lang)
        if key in first_row:
            what = f"verse_id {vid!r}" if has_id else f"English sentence {en[:60]!r}"
            raise MimoInputError(
                f"{what} appears twice for language {lang!r} (rows {first_row[key]} and {row}); "
                f"keep one translation per sentence and language", source=source, row=row)
        first_row[key] = row
        if has_split:
            raw = _as_text(rec.get("split"), "split", source, row).strip()
            split = SPLIT_ALIASES.get(raw.lower())
            if split is None:
                raise MimoInputError(f"split {raw!r} is not train or eval (dev/validation/test also "
                                     f"mean eval); fix the value or drop the split column",
                                     source=source, row=row)
            prev = split_of.setdefault(vid, (split, row))
            if prev[0] != split:
                raise MimoInputError(
                    f"verse_id {vid!r} is in split {prev[0]!r} at row {prev[1]} but {split!r} here; "
                    f"all translations of a sentence belong to one split", source=source, row=row)
        else:
            split = ""
        for k, v in zip(("verse_id", "split", "lang", "en", "text"), (vid, split, lang, en, text)):
            out[k].append(v)
    if not has_split:
        assign = seeded_split(list(dict.fromkeys(out["verse_id"])), seed=seed, eval_fraction=eval_fraction)
        out["split"] = [assign[v] for v in out["verse_id"]]
    n = len(out["en"])
    return pa.table({"verse_id": out["verse_id"], "book": pa.array([0] * n, pa.int32()),
                     "split": out["split"], "lang": out["lang"], "en": out["en"], "text": out["text"]},
                    schema=SCHEMA)


def seeded_split(ids: Sequence[str], *, seed: int, eval_fraction: float = 0.1) -> dict[str, str]:
    """``{id: "train" | "eval"}``: a seeded ``eval_fraction`` of ids (at least one when
    there are two or more) in eval."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    n_eval = min(len(order) - 1, max(1, round(len(order) * eval_fraction))) if len(order) > 1 else 0
    held = set(order[:n_eval])
    return {v: ("eval" if v in held else "train") for v in ids}


# --------------------------------------------------------------------------- building


def source_fingerprint(config: CorpusConfig) -> str:
    """Identity of the input: the Bible package file, or the user file's content hash."""
    if config.source_path is None:
        return bible.bible_fingerprint()
    p = Path(config.source_path).expanduser()
    if p.is_file():
        return "sha256:" + sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
        return "dir-sha256:" + h.hexdigest()
    raise MimoInputError("no such file or folder; source_path must name a TSV file, a Parquet "
                         "file or a folder saved by datasets.Dataset.save_to_disk", source=str(p))


def config_hash(config: CorpusConfig, fingerprint: str | None = None) -> str:
    """16 hex digits of SHA-256 over the config (the source by content, not by path)."""
    fingerprint = source_fingerprint(config) if fingerprint is None else fingerprint
    d = dataclasses.asdict(config)
    d["source_path"] = None if config.source_path is None else "user"
    blob = json.dumps({"config": d, "source": fingerprint, "format": CORPUS_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sample_verses(ids: Sequence[str], coverage: Mapping[str, int], n_langs: int, cap: int,
                   rng: random.Random, links: Mapping[str, Sequence[str]] | None) -> set[str]:
    """``cap`` ids of one split: verses kept in every language first; within those,
    cross-reference pairs first (when ``links`` is given), then the rest, seeded."""
    full = [v for v in ids if coverage[v] == n_langs]
    partial = [v for v in ids if coverage[v] < n_langs]
    rng.shuffle(full)
    partial.sort(key=lambda v: -coverage[v])  # stable: canonical order among equals
    chosen: dict[str, None] = {}
    if links:
        ok = set(full)
        for v in full:
            if len(chosen) + 2 > cap:
                break
            if v in chosen:
                continue
            partners = [w for w in links.get(v, ()) if w in ok and w not in chosen and w != v]
            if partners:
                chosen[v] = None
                chosen[partners[rng.randrange(len(partners))]] = None
    for v in (*full, *partial):
        if len(chosen) >= cap:
            break
        chosen.setdefault(v, None)
    return set(chosen)


def build_parallel_corpus(config: CorpusConfig) -> tuple[pa.Table, list[tuple]]:
    """The filtered, split, capped parallel table and its per-language stats rows.

    Stats rows are ``(lang, *counts)`` in `STATS_COLUMNS` order.
    """
    if config.source_path is None:
        for lang in config.languages:
            bible.bbname_for(lang)
        en = bible.read_verses(config.english)
        pairs: dict[str, tuple[list[str], list[str], list[str]]] = {}  # lang -> (ids, en, text)
        for lang in config.languages:
            x = bible.read_language(lang)
            ids = [v for v in en if v in x]
            pairs[lang] = (ids, [en[v] for v in ids], [x[v] for v in ids])
        order = {v: i for i, v in enumerate(en)}
        split_of = {v: bible.split_of_book(bible.parse_verse_id(v)[0]) for v in en}
        book_of = {v: bible.parse_verse_id(v)[0] for v in en}
        links: dict[str, list[str]] | None = defaultdict(list)
        for a, b in bible.read_cross_references():
            if a in split_of and b in split_of and split_of[a] == split_of[b]:
                links[a].append(b)
        languages = config.languages
    else:
        table = load_user_corpus(config.source_path, seed=config.seed, eval_fraction=config.eval_fraction)
        cols = table.to_pydict()
        found = list(dict.fromkeys(cols["lang"]))
        if config.languages == DEFAULT_LANGUAGES:
            languages = tuple(found)
        else:
            languages = config.languages
            dropped = sorted(set(found) - set(languages))
            if dropped:
                log.warning("%s: rows in %s dropped (not in languages %s)", config.source_path,
                            " ".join(dropped), " ".join(languages))
            if not set(found) & set(languages):
                raise MimoInputError(
                    f"no row in languages {', '.join(languages)}; the file has {', '.join(found)}; "
                    f"set languages to some of those", source=config.source_path)
        by_lang: dict[str, tuple[list[str], list[str], list[str]]] = {lang: ([], [], []) for lang in languages}
        order, split_of = {}, {}
        for vid, split, lang, e, x in zip(cols["verse_id"], cols["split"], cols["lang"], cols["en"], cols["text"]):
            order.setdefault(vid, len(order))
            split_of[vid] = split
            if lang in by_lang:
                for lst, val in zip(by_lang[lang], (vid, e, x)):
                    lst.append(val)
        pairs = by_lang
        book_of = {}
        links = None

    kept: dict[str, list[int]] = {}
    stats: dict[str, dict[str, int]] = {}
    coverage: Counter[str] = Counter()
    for lang in languages:
        ids, ens, xs = pairs[lang]
        kept[lang], stats[lang] = filter_pairs(
            ens, xs, min_chars=config.min_chars, max_chars=config.max_chars,
            max_length_ratio=config.max_length_ratio)
        coverage.update(ids[i] for i in kept[lang])

    caps = {"train": config.max_train_verses, "eval": config.max_eval_verses}
    allowed: set[str] | None = None
    if any(caps.values()):
        rng = random.Random(config.seed)
        allowed = set()
        for split in SPLITS:
            ids = sorted((v for v in coverage if split_of[v] == split), key=order.__getitem__)
            cap = caps[split]
            allowed |= set(ids) if cap is None or cap >= len(ids) else _sample_verses(
                ids, coverage, len(languages), cap, rng, links)

    rows = []  # (verse order, lang index, verse_id, split, lang, en, text)
    for li, lang in enumerate(languages):
        ids, ens, xs = pairs[lang]
        n_capped = 0
        for i in kept[lang]:
            v = ids[i]
            if allowed is not None and v not in allowed:
                n_capped += 1
                continue
            rows.append((order[v], li, v, split_of[v], lang, ens[i], xs[i]))
        stats[lang]["capped"] = n_capped
        stats[lang]["kept"] -= n_capped
    rows.sort(key=lambda r: (r[0], r[1]))
    table = pa.table({
        "verse_id": [r[2] for r in rows],
        "book": pa.array([book_of.get(r[2], 0) for r in rows], pa.int32()),
        "split": [r[3] for r in rows],
        "lang": [r[4] for r in rows],
        "en": [r[5] for r in rows],
        "text": [r[6] for r in rows],
    }, schema=SCHEMA)
    stats_rows = [(lang, *(stats[lang][c] for c in STATS_COLUMNS)) for lang in languages]
    if table.num_rows == 0:
        raise MimoInputError(
            f"no pair survives the filters (per language: {stats_rows}); relax min_chars, "
            f"max_chars or max_length_ratio, or check the texts",
            source=config.source_path or "packaged Bible")
    return table, stats_rows


def _result_from_meta(path: Path, meta: dict) -> CorpusResult:
    return CorpusResult(
        path=str(path),
        n_rows=int(meta["n_rows"]),
        languages=tuple(meta["languages"]),
        rows_by_lang_split={(lang, split): int(n) for lang, split, n in meta["rows_by_lang_split"]},
        stats_columns=tuple(meta["stats_columns"]),
        stats_rows=[tuple(r) for r in meta["stats_rows"]],
        config_hash=meta["config_hash"],
        source=meta["source"],
        n_verses_by_split={k: int(v) for k, v in meta.get("n_verses_by_split", {}).items()},
    )


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"{path.name}: {e}"
    return None


def build_parallel_corpus_cached(config: CorpusConfig, corpus_dir: str | Path) -> CorpusResult:
    """Build the corpus once into ``corpus_dir/<config hash>/parallel.parquet``.

    The hash covers the config, the source's fingerprint and `CORPUS_FORMAT`; the
    folder (Parquet + ``corpus.json`` with the counts) appears atomically, so a crash
    leaves nothing half-written and a second call with the same config reuses it.
    """
    fingerprint = source_fingerprint(config)
    h = config_hash(config, fingerprint)
    folder = Path(corpus_dir) / h
    path, meta_path = folder / CORPUS_FILE, folder / META_FILE
    if path.is_file() and meta_path.is_file():
        problem = check_parquet(path) or _json_problem(meta_path)
        if problem is None:
            log.info("parallel corpus: reusing %s (config hash %s)", path, h)
            return _result_from_meta(path, json.loads(meta_path.read_text()))
        quarantine(folder, f"this corpus is rebuilt from its source ({problem})")

    t0 = time.perf_counter()
    table, stats_rows = build_parallel_corpus(config)
    cols = table.select(["verse_id", "split", "lang"]).to_pydict()
    by_ls = Counter(zip(cols["lang"], cols["split"]))
    verses = {s: len({v for v, sp in zip(cols["verse_id"], cols["split"]) if sp == s}) for s in SPLITS}
    languages = tuple(r[0] for r in stats_rows)
    meta = {
        "config_hash": h,
        "config": dataclasses.asdict(config),
        "source": config.source_path or f"bible ({fingerprint})",
        "source_fingerprint": fingerprint,
        "format": CORPUS_FORMAT,
        "n_rows": table.num_rows,
        "languages": list(languages),
        "rows_by_lang_split": [[lang, s, by_ls.get((lang, s), 0)] for lang in languages for s in SPLITS],
        "n_verses_by_split": verses,
        "stats_columns": list(STATS_COLUMNS),
        "stats_rows": [list(r) for r in stats_rows],
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_dir(folder) as tmp:
        write_parquet(table, tmp / CORPUS_FILE)
        write_json(meta, tmp / META_FILE)
    log.info("parallel corpus: wrote %s (%d rows, %.1f s)", path, table.num_rows, meta["build_seconds"])
    return _result_from_meta(path, json.loads(meta_path.read_text()))


# --------------------------------------------------------------------------- reading


def read_corpus(corpus_path: str | Path, split: str | None = None,
                columns: Sequence[str] | None = None) -> pa.Table:
    """The corpus table, optionally one split and some columns."""
    filters = [("split", "=", split)] if split is not None else None
    return read_parquet(corpus_path, columns=list(columns) if columns else None, filters=filters)


def corpus_languages(corpus_path: str | Path) -> tuple[str, ...]:
    """The non-English languages of a corpus, in order of first appearance."""
    return tuple(dict.fromkeys(read_parquet(corpus_path, columns=["lang"]).column("lang").to_pylist()))


def verse_texts(corpus_path: str | Path, split: str) -> dict[str, dict[str, str]]:
    """``{verse_id: {lang: text, ..., "en": english}}`` for the verses of ``split`` present
    in every language of the corpus, in file (canonical) order."""
    if split not in SPLITS:
        raise MimoInputError(f"split {split!r}: use one of {', '.join(SPLITS)}", source="verse_texts")
    langs = corpus_languages(corpus_path)
    cols = read_corpus(corpus_path, split, ["verse_id", "lang", "en", "text"]).to_pydict()
    out: dict[str, dict[str, str]] = {}
    for vid, lang, en, text in zip(cols["verse_id"], cols["lang"], cols["en"], cols["text"]):
        d = out.setdefault(vid, {"en": en})
        d[lang] = text
    need = len(langs) + 1
    return {v: d for v, d in out.items() if len(d) == need}
