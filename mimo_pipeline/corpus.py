"""English–X parallel corpus: the packaged Bible (default) or a user corpus, filtered and split.

Output: one Parquet file, one row per (verse, language) pair, columns

=========  ======  ===========================================================
column     type    meaning
=========  ======  ===========================================================
verse_id   string  ``"B.C.V"`` (bNumber.cNumber.vNumber) for the Bible; the
                   user's ``verse_id``, else ``"u<row>"`` (see `load_user_corpus`)
book       int32   Bible book number 1-66; 0 for a user corpus
split      string  ``"train"``, ``"dev"`` or ``"eval"`` (see below)
lang       string  ISO 639-1 code of ``text``
en         string  the English side (World English Bible for the Bible)
text       string  the language-``lang`` side
=========  ======  ===========================================================

Splits (`SPLITS`): for the Bible, ``eval`` is the New Testament (books 40-66: test
only), ``dev`` is `bible.DEV_BOOKS`, seven whole Old Testament books that training
never draws (method settings are chosen on dev), and ``train`` the rest of the Old
Testament. A user corpus keeps its own ``split`` column (``validation``/``valid`` mean
dev, ``test`` means eval) or gets a seeded split by verse: ``eval_fraction`` of the
verses in eval, ``dev_fraction`` in dev, the rest in train.

Bible rows are ordered by verse (canonical order), then by the configured language
order; a user corpus keeps its file order. Rows sharing a ``verse_id`` are translations
of the same English sentence: `verse_texts` pivots them.

Filters, per language, each pair counted under the first one it fails (the ``stats``
table of `CorpusResult`, which the `parallel_corpus` asset shows):

- ``near_empty``: either side has fewer than 2 letters/digits after cleaning
  (Bengali has 800 "-" verses, Korean "상동" placeholders);
- ``too_short`` / ``too_long``: either side shorter than ``min_chars`` or longer than
  ``max_chars`` (in ``length_unit``: script-aware units, or characters);
- ``ratio``: longer side / shorter side above ``max_length_ratio``;
- ``english_dup``: an English sentence already kept (compared after case folding and
  whitespace normalisation; the first pair is kept): within the language
  (``english_dedup="language"``), or across the whole training split
  (``"corpus"``, the official preparation's; dev and eval stay per language so that
  their sentences keep every translation for the benchmarks);
- ``language_cap``: training pairs of a language beyond ``max_per_language`` (the first
  ones in corpus order are kept, as the official preparation does);
- ``capped``: left out by the seeded ``max_train_verses`` / ``max_dev_verses`` /
  ``max_eval_verses`` sample.

Two filter settings are named (`FILTER_PRESETS`, `CorpusConfig.with_preset`):
``pipeline`` (the defaults: script-aware units, 10-1000, ratio 3, dedup per language, no
language cap) and ``official``, the MIMO release's Stage-1 preparation
(``prepare_stage1_parallel.py``): characters, 10-512, ratio 3, English de-duplicated
across languages, 500,000 pairs per language.

Length units (`text_units`) are script-aware: a Han ideograph counts 3.5, a kana 2.0,
a Hangul syllable or jamo 2.75, anything else 1 (Unicode code points). The weights are
fitted on the packaged Bible so that the median of units(X) / len(English) is about
1.0 for Chinese (0.93), Japanese (0.99) and Korean (1.03), against 0.32, 0.45, 0.44 in
raw characters; with raw characters, a ratio limit of 3 would drop a large share of
Chinese verses and ``min_chars`` would drop short but complete CJK verses ("耶稣哭了。").

Caps: ``max_train_verses`` / ``max_dev_verses`` / ``max_eval_verses`` sample verse ids
per split (seeded), so every language keeps the same verses; verses kept in every
language are preferred. For the Bible the sample takes whole cross-reference pairs
first (a verse and one verse it cites, both in the split), so that a small corpus
still yields stage-2 query–passage pairs and MLIR benchmark queries; a uniform sample of
100 of the 7,957 New Testament verses would hold about one cross-reference.

Scale: a user corpus streams. A first pass reads the file a batch at a time, checks and
cleans every row and writes it to a staging Parquet file, keeping per row only a few
integers (language, split, verse and English-sentence hashes, the filter verdict: about
30 bytes a row); the cross-row decisions (verse ids, duplicates, splits, English
de-duplication, caps) are taken on those arrays with numpy; a second pass streams the
staged rows into the corpus file. Memory is that of the arrays, not of the texts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import tempfile
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import bible
from .errors import MimoInputError
from .fileio import (atomic_dir, check_parquet, iter_parquet_batches, parquet_writer, quarantine, read_parquet,
                     write_json)
from . import userfiles
from .userfiles import as_text, first_repeat, open_user_table, path_fingerprint, unique_in_order

log = logging.getLogger(__name__)

DEFAULT_LANGUAGES: tuple[str, ...] = ("de", "fr", "es", "ru", "ar", "zh", "ko")
SPLITS: tuple[str, ...] = ("train", "dev", "eval")
STATS_COLUMNS: tuple[str, ...] = (
    "raw", "near_empty", "too_short", "too_long", "ratio", "english_dup", "language_cap", "capped", "kept")
_REASONS = STATS_COLUMNS[1:-1]  # reason code k+1 = _REASONS[k]; 0 = kept
_R = {name: i + 1 for i, name in enumerate(_REASONS)}
CORPUS_FILE = "parallel.parquet"
META_FILE = "corpus.json"
# Bump when cleaning, filtering, sampling or the schema change: old caches are then unused.
# 2: the dev split, the official filter settings, streamed user corpora in file order.
CORPUS_FORMAT = 2

SCHEMA = pa.schema([
    ("verse_id", pa.string()),
    ("book", pa.int32()),
    ("split", pa.string()),
    ("lang", pa.string()),
    ("en", pa.string()),
    ("text", pa.string()),
])
_STAGE_SCHEMA = pa.schema([("row", pa.int64()), ("verse_id", pa.string()), ("lang", pa.string()),
                           ("en", pa.string()), ("text", pa.string())])

REQUIRED_COLUMNS: tuple[str, ...] = ("en", "text", "lang")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", "verse_id")
SPLIT_ALIASES = {"train": "train", "training": "train",
                 "dev": "dev", "development": "dev", "valid": "dev", "validation": "dev",
                 "eval": "eval", "evaluation": "eval", "test": "eval", "testing": "eval"}
LENGTH_UNITS = ("units", "chars")
ENGLISH_DEDUP = ("language", "corpus")
FILTER_FIELDS = ("min_chars", "max_chars", "max_length_ratio", "length_unit", "english_dedup", "max_per_language")
FILTER_PRESETS: dict[str, dict[str, object]] = {
    # this pipeline's defaults (script-aware lengths suit verse-aligned CJK text)
    "pipeline": {"min_chars": 10, "max_chars": 1000, "max_length_ratio": 3.0, "length_unit": "units",
                 "english_dedup": "language", "max_per_language": None},
    # the MIMO release's Stage-1 preparation (scripts/prepare_data/prepare_stage1_parallel.py)
    "official": {"min_chars": 10, "max_chars": 512, "max_length_ratio": 3.0, "length_unit": "chars",
                 "english_dedup": "corpus", "max_per_language": 500_000},
}

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
    - ``max_train_verses`` / ``max_dev_verses`` / ``max_eval_verses``: seeded caps on
      verse ids per split.
    - ``min_chars``, ``max_chars``, ``max_length_ratio``, ``length_unit`` (``units``:
      script-aware `text_units`; ``chars``: code points), ``english_dedup``
      (``language`` or ``corpus``), ``max_per_language`` (training pairs per language):
      the filters (see the module docstring; `with_preset` sets them together).
    - ``english``: bbName of the English Bible (``"4"`` WEB; ``"k"`` KJV, ``"3"`` BBE).
    - ``seed``: sampling and the split of user corpora without one.
    - ``eval_fraction`` / ``dev_fraction``: shares of verse ids held out as eval / dev
      when a user corpus has no split.
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
    max_dev_verses: int | None = None
    dev_fraction: float = 0.05
    length_unit: str = "units"
    english_dedup: str = "language"
    max_per_language: int | None = None

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
        for name in ("max_train_verses", "max_dev_verses", "max_eval_verses", "max_per_language"):
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
        if not (0.0 <= self.dev_fraction < 1.0 and self.eval_fraction + self.dev_fraction < 1.0):
            raise MimoInputError(f"dev_fraction={self.dev_fraction!r}: use a number in [0, 1) with eval_fraction + "
                                 f"dev_fraction < 1", source=f"{src}: dev_fraction")
        if self.length_unit not in LENGTH_UNITS:
            raise MimoInputError(f"length_unit={self.length_unit!r}: use one of {', '.join(LENGTH_UNITS)}",
                                 source=f"{src}: length_unit")
        if self.english_dedup not in ENGLISH_DEDUP:
            raise MimoInputError(f"english_dedup={self.english_dedup!r}: use one of {', '.join(ENGLISH_DEDUP)}",
                                 source=f"{src}: english_dedup")

    def with_preset(self, preset: str) -> "CorpusConfig":
        """This config with a named filter preset's settings (`FILTER_PRESETS`)."""
        if preset not in FILTER_PRESETS:
            raise MimoInputError(f"unknown filter preset {preset!r}; use one of {', '.join(FILTER_PRESETS)}",
                                 source="corpus config: filter_preset")
        return dataclasses.replace(self, **FILTER_PRESETS[preset])

    def filter_settings(self) -> dict[str, object]:
        """The filter settings in force, and the preset they match (or ``custom``)."""
        d = {k: getattr(self, k) for k in FILTER_FIELDS}
        d["preset"] = next((name for name, p in FILTER_PRESETS.items() if p == {k: d[k] for k in FILTER_FIELDS}),
                           "custom")
        return d


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
    source_kind: str = "bible"  # "bible" (the packaged Bible) or "user"
    filters: dict = field(default_factory=dict)  # `CorpusConfig.filter_settings`
    stats_by_split: list[tuple] = field(default_factory=list)  # (lang, split, *counts)

    @property
    def is_bible(self) -> bool:
        return self.source_kind == "bible"


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
                       max_length_ratio: float = 3.0, length_unit: str = "units") -> str | None:
    """Name of the first filter a single pair fails, or None if it passes.

    One of ``near_empty``, ``too_short``, ``too_long``, ``ratio`` (English duplicates
    need the other pairs: see `filter_pairs`). Lengths in ``length_unit``: ``units``
    (`text_units`) or ``chars`` (code points, as the official preparation counts).
    """
    en, text = en.strip(), text.strip()
    if not (_letters(en) and _letters(text)):
        return "near_empty"
    if length_unit == "chars":
        ue, ux = float(len(en)), float(len(text))
    else:
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
                 max_chars: int = 1000, max_length_ratio: float = 3.0,
                 length_unit: str = "units") -> tuple[list[int], dict[str, int]]:
    """Indices of the pairs kept (in order) and the count per filter.

    Counts have the keys of `STATS_COLUMNS` (``language_cap`` and ``capped`` always 0
    here); ``raw`` = the number of pairs, ``kept`` = ``len(indices)``. Dedup keeps the
    first pair of a repeated English sentence among the pairs that pass the other filters.
    """
    if len(en_texts) != len(texts):
        raise ValueError(f"{len(en_texts)} English texts but {len(texts)} texts")
    counts = dict.fromkeys(STATS_COLUMNS, 0)
    counts["raw"] = len(texts)
    seen: set[str] = set()
    kept: list[int] = []
    for i, (en, x) in enumerate(zip(en_texts, texts)):
        reason = pair_filter_reason(en, x, min_chars=min_chars, max_chars=max_chars,
                                    max_length_ratio=max_length_ratio, length_unit=length_unit)
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


def _reason_code(en: str, text: str, config: CorpusConfig) -> int:
    r = pair_filter_reason(en, text, min_chars=config.min_chars, max_chars=config.max_chars,
                           max_length_ratio=config.max_length_ratio, length_unit=config.length_unit)
    return 0 if r is None else _R[r]


# --------------------------------------------------------------------------- splits


def _split_codes(n: int, *, seed: int, eval_fraction: float, dev_fraction: float = 0.0) -> np.ndarray:
    """Split codes (index into `SPLITS`) of ``n`` ids in order: a seeded ``eval_fraction`` in
    eval (at least one when there are two or more ids), then ``dev_fraction`` in dev (at
    least one when dev_fraction > 0 and three or more ids), the rest train."""
    n_eval = min(n - 1, max(1, round(n * eval_fraction))) if n > 1 else 0
    rest = n - n_eval
    n_dev = min(rest - 1, max(1, round(n * dev_fraction))) if dev_fraction > 0 and rest > 1 else 0
    codes = np.zeros(n, np.int8)
    perm = np.random.default_rng(seed).permutation(n)
    codes[perm[:n_eval]] = SPLITS.index("eval")
    codes[perm[n_eval:n_eval + n_dev]] = SPLITS.index("dev")
    return codes


def seeded_split(ids: Sequence[str], *, seed: int, eval_fraction: float = 0.1,
                 dev_fraction: float = 0.0) -> dict[str, str]:
    """``{id: "train" | "dev" | "eval"}``: a seeded ``eval_fraction`` of ids (at least one
    when there are two or more) in eval, ``dev_fraction`` in dev, the rest in train."""
    order = list(dict.fromkeys(ids))
    codes = _split_codes(len(order), seed=seed, eval_fraction=eval_fraction, dev_fraction=dev_fraction)
    return {v: SPLITS[c] for v, c in zip(order, codes)}


# --------------------------------------------------------------------------- staged rows


@dataclass
class _Staged:
    """Every raw row of a corpus source, staged: per-row arrays and the staged texts.

    ``vid`` numbers verses 0.. in order of first appearance; ``split`` is a code into
    `SPLITS` per verse (``vsplit``); ``reason`` the single-pair filter verdict.
    """

    lang: np.ndarray  # int16, index into `langs`
    vid: np.ndarray  # int64
    en_h: np.ndarray  # int64, hash of `english_key`
    reason: np.ndarray  # int8
    vsplit: np.ndarray  # int8 per verse
    langs: list[str]
    batches: Callable[[], Iterator[pa.RecordBatch]]  # the staged rows (_STAGE_SCHEMA), in row order
    vid_names: Callable[[np.ndarray, pa.RecordBatch], list[str]]  # verse ids of one staged batch
    books: Callable[[list[str]], list[int]]  # book numbers of verse ids

    @property
    def split(self) -> np.ndarray:
        return self.vsplit[self.vid]


def _check_corpus_columns(source: str, columns: Sequence[str], hint: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MimoInputError(
            f"missing column(s) {', '.join(missing)} (found: {', '.join(map(str, columns)) or 'none'}); "
            f"a parallel corpus needs columns en (English), text (its translation) and lang "
            f"(ISO 639-1 code of text), optionally split and verse_id{hint}", source=source)


def _stage_user(path: str | Path, config: CorpusConfig, stage_path: Path) -> _Staged:
    """Pass 1 over a user corpus: check and clean every row, stage it, decide ids and splits."""
    table = open_user_table(path, check_columns=_check_corpus_columns,
                            header_hint="a header line (en, text, lang) and rows")
    source = str(table.path)
    has_id = "verse_id" in table.columns
    has_split = "split" in table.columns
    for part in table.parts:
        if part.split is not None and SPLIT_ALIASES.get(part.split.lower()) is None and "split" not in part.columns:
            raise MimoInputError(
                f"split name {part.split!r} is neither train, dev nor eval (validation means dev, test means "
                f"eval); rename it or add a split column", source=source)
    rows, lang_ix, vid_h, en_h, reason, split_c = (array("q"), array("h"), array("q"), array("q"), array("b"),
                                                   array("b"))
    langs: dict[str, int] = {}
    lang_ok: dict[str, str] = {}
    codes = {s: i for i, s in enumerate(SPLITS)}
    norm = bible.normalize_whitespace
    cols = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in table.columns]
    with parquet_writer(stage_path, _STAGE_SCHEMA) as writer:
        for part, recs in table.batches(cols, userfiles.BATCH_ROWS):
            src = part.source if part.split is not None else source
            part_split = SPLIT_ALIASES.get(part.split.lower()) if part.split is not None else None
            b_row, b_vid, b_lang, b_en, b_text = [], [], [], [], []
            for row, rec in recs:
                en = norm(as_text(rec.get("en"), "en", src, row))
                text = norm(as_text(rec.get("text"), "text", src, row))
                if not en:
                    raise MimoInputError("empty English text (column en); fill it in or delete the row",
                                         source=src, row=row)
                if not text:
                    raise MimoInputError("empty text (column text); fill in the translation or delete the row",
                                         source=src, row=row)
                raw_lang = as_text(rec.get("lang"), "lang", src, row)
                lang = lang_ok.get(raw_lang)
                if lang is None:
                    lang = raw_lang.strip()
                    if not lang:
                        raise MimoInputError("empty language code (column lang); use a 2-letter ISO 639-1 code "
                                             "such as 'de'", source=src, row=row)
                    if len(lang) == 2:
                        lang = lang.lower()
                    check_language_code(lang, source=src, row=row)
                    lang_ok[raw_lang] = lang
                if has_id and "verse_id" in rec:
                    vid = as_text(rec.get("verse_id"), "verse_id", src, row, allow_int=True).strip()
                    if not vid:
                        raise MimoInputError("empty verse_id; give every row an id (rows sharing an id are "
                                             "translations of one sentence) or drop the column", source=src, row=row)
                else:
                    vid = ""
                if "split" in rec:
                    raw = as_text(rec.get("split"), "split", src, row).strip()
                    split = SPLIT_ALIASES.get(raw.lower())
                    if split is None:
                        raise MimoInputError(f"split {raw!r} is not train, dev or eval (validation means dev, test "
                                             f"means eval); fix the value or drop the split column",
                                             source=src, row=row)
                    split_c.append(codes[split])
                elif part_split is not None:
                    split_c.append(codes[part_split])
                else:
                    split_c.append(-1)
                key = english_key(en)
                rows.append(row)
                lang_ix.append(langs.setdefault(lang, len(langs)))
                en_h.append(hash(key))
                vid_h.append(hash(vid) if vid else 0)
                reason.append(_reason_code(en, text, config))
                b_row.append(row)
                b_vid.append(vid)
                b_lang.append(lang)
                b_en.append(en)
                b_text.append(text)
            writer.write_batch(pa.record_batch([pa.array(b_row, pa.int64()), pa.array(b_vid, pa.string()),
                                                pa.array(b_lang, pa.string()), pa.array(b_en, pa.string()),
                                                pa.array(b_text, pa.string())], schema=_STAGE_SCHEMA))
    if not rows:
        raise MimoInputError("no data rows; add rows with en, text and lang", source=source)
    rows_a = np.frombuffer(rows, np.int64)
    lang_a = np.frombuffer(lang_ix, np.int16)
    en_a = np.frombuffer(en_h, np.int64)
    split_a = np.frombuffer(split_c, np.int8)
    vid_keys = np.frombuffer(vid_h, np.int64) if has_id else en_a
    vid, first_idx = unique_in_order(vid_keys)
    if has_id and (np.frombuffer(vid_h, np.int64) == 0).any():  # some parts lack the column
        raise MimoInputError("some splits have a verse_id column and some do not; give every split the same "
                             "columns", source=source)

    def staged_row(i: int) -> dict:
        want = int(rows_a[i])
        for batch in iter_parquet_batches(stage_path):
            r = batch.column(0).to_numpy()
            hit = np.flatnonzero(r == want)
            if len(hit):
                return batch.slice(int(hit[0]), 1).to_pylist()[0]
        raise AssertionError(want)  # pragma: no cover

    rep = first_repeat(vid.astype(np.int64) * 1024 + lang_a)
    if rep is not None:
        first, second = rep
        rec = staged_row(second)
        what = f"verse_id {rec['verse_id']!r}" if has_id else f"English sentence {rec['en'][:60]!r}"
        raise MimoInputError(
            f"{what} appears twice for language {rec['lang']!r} (rows {rows_a[first]} and {rows_a[second]}); "
            f"keep one translation per sentence and language", source=source, row=int(rows_a[second]))
    if (split_a >= 0).all():
        vsplit = split_a[first_idx]
        bad = np.flatnonzero(split_a != vsplit[vid])
        if len(bad):
            i = int(bad[0])
            j = int(first_idx[vid[i]])
            name = staged_row(i)["verse_id"] if has_id else f"u{rows_a[j]}"
            raise MimoInputError(
                f"verse_id {name!r} is in split {SPLITS[vsplit[vid[i]]]!r} at row {rows_a[j]} but "
                f"{SPLITS[split_a[i]]!r} here; all translations of a sentence belong to one split",
                source=source, row=int(rows_a[i]))
    elif (split_a < 0).all():
        vsplit = _split_codes(len(first_idx), seed=config.seed, eval_fraction=config.eval_fraction,
                              dev_fraction=config.dev_fraction)
    else:
        raise MimoInputError("some splits have a split column and some do not; give every split the same "
                             "columns", source=source)
    first_rows = rows_a[first_idx]

    def batches() -> Iterator[pa.RecordBatch]:
        return iter_parquet_batches(stage_path)

    def vid_names(codes_: np.ndarray, batch: pa.RecordBatch) -> list[str]:
        if has_id:
            return batch.column(1).to_pylist()
        return [f"u{r}" for r in first_rows[codes_].tolist()]

    return _Staged(lang_a, vid, en_a, np.frombuffer(reason, np.int8), vsplit.astype(np.int8), list(langs),
                   batches, vid_names, lambda ids: [0] * len(ids))


def _stage_bible(config: CorpusConfig) -> tuple[_Staged, dict[int, list[int]]]:
    """The packaged Bible's rows (verse order, then language order), and the cross-reference
    links between verses of one split (by verse code)."""
    for lang in config.languages:
        bible.bbname_for(lang)
    en = bible.read_verses(config.english)
    code = {v: i for i, v in enumerate(en)}
    vsplit = np.array([SPLITS.index(bible.split_of_book(bible.parse_verse_id(v)[0])) for v in en], np.int8)
    xs = {lang: bible.read_language(lang) for lang in config.languages}
    cols = {k: [] for k in ("row", "verse_id", "lang", "en", "text")}
    lang_ix, vid, en_h, reason = [], [], [], []
    for v, e in en.items():
        key = hash(english_key(e))
        for li, lang in enumerate(config.languages):
            x = xs[lang].get(v)
            if x is None:
                continue
            cols["row"].append(len(cols["row"]) + 1)
            cols["verse_id"].append(v)
            cols["lang"].append(lang)
            cols["en"].append(e)
            cols["text"].append(x)
            lang_ix.append(li)
            vid.append(code[v])
            en_h.append(key)
            reason.append(_reason_code(e, x, config))
    staged = pa.table(cols, schema=_STAGE_SCHEMA)
    links: dict[int, list[int]] = defaultdict(list)
    for a, b in bible.read_cross_references():
        if a in code and b in code and vsplit[code[a]] == vsplit[code[b]]:
            links[code[a]].append(code[b])

    def batches() -> Iterator[pa.RecordBatch]:
        return iter(staged.to_batches(max_chunksize=65_536))

    return _Staged(np.array(lang_ix, np.int16), np.array(vid, np.int64), np.array(en_h, np.int64),
                   np.array(reason, np.int8), vsplit, list(config.languages), batches,
                   lambda codes_, batch: batch.column(1).to_pylist(),
                   lambda ids: [bible.parse_verse_id(v)[0] for v in ids]), links


# --------------------------------------------------------------------------- decisions


def _sample_verses(ids: Sequence[int], coverage: Mapping[int, int], n_langs: int, cap: int,
                   rng: random.Random, links: Mapping[int, Sequence[int]] | None) -> set[int]:
    """``cap`` ids of one split: verses kept in every language first; within those,
    cross-reference pairs first (when ``links`` is given), then the rest, seeded."""
    full = [v for v in ids if coverage[v] == n_langs]
    partial = [v for v in ids if coverage[v] < n_langs]
    rng.shuffle(full)
    partial.sort(key=lambda v: -coverage[v])  # stable: canonical order among equals
    chosen: dict[int, None] = {}
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


def _decide(st: _Staged, languages: Sequence[str], config: CorpusConfig,
            links: Mapping[int, Sequence[int]] | None) -> tuple[np.ndarray, np.ndarray]:
    """Final reason code of every row (0 = kept) and the rows' selection mask (their language
    is one of ``languages``)."""
    sel_lang = np.array([x in languages for x in st.langs], bool)
    selected = sel_lang[st.lang]
    reason = st.reason.copy()
    split = st.split
    train = split == SPLITS.index("train")
    # English de-duplication: the first pair of each English sentence among those that pass
    idx = np.flatnonzero(selected & (reason == 0))
    if len(idx):
        group = st.lang[idx].astype(np.int64)
        if config.english_dedup == "corpus":
            group = np.where(train[idx], -1, group)
        order = np.lexsort((idx, st.en_h[idx], group))
        g, h = group[order], st.en_h[idx][order]
        dup = np.zeros(len(order), bool)
        dup[1:] = (g[1:] == g[:-1]) & (h[1:] == h[:-1])
        reason[idx[order][dup]] = _R["english_dup"]
    # per-language cap on training pairs, in corpus order
    if config.max_per_language is not None:
        idx = np.flatnonzero(selected & (reason == 0) & train)
        if len(idx):
            order = np.argsort(st.lang[idx], kind="stable")
            lg = st.lang[idx][order]
            starts = np.flatnonzero(np.r_[True, lg[1:] != lg[:-1]])
            rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            reason[idx[order][rank >= config.max_per_language]] = _R["language_cap"]
    # seeded caps on verses per split
    caps = {"train": config.max_train_verses, "dev": config.max_dev_verses, "eval": config.max_eval_verses}
    if any(caps.values()):
        kept = selected & (reason == 0)
        coverage = np.bincount(st.vid[kept], minlength=len(st.vsplit))
        allowed = np.ones(len(st.vsplit), bool)
        rng = random.Random(config.seed)
        for s, cap in caps.items():
            ids = np.flatnonzero((st.vsplit == SPLITS.index(s)) & (coverage > 0))
            if cap is None or cap >= len(ids):
                continue
            cov = dict(zip(ids.tolist(), coverage[ids].tolist()))
            chosen = _sample_verses(ids.tolist(), cov, len(languages), cap, rng, links)
            allowed[ids] = False
            allowed[list(chosen)] = True
        reason[kept & ~allowed[st.vid]] = _R["capped"]
    return reason, selected


def _stats(st: _Staged, reason: np.ndarray, selected: np.ndarray, languages: Sequence[str]):
    """(stats rows (lang, *counts), stats by split (lang, split, *counts), rows by (lang, split),
    verses by split)."""
    n_r = len(STATS_COLUMNS)
    split = st.split
    li = np.array([st.langs.index(x) if x in st.langs else -1 for x in languages])
    by = np.zeros((len(st.langs), len(SPLITS), n_r - 1), np.int64)  # reason codes 0..len(_REASONS)
    np.add.at(by, (st.lang[selected], split[selected], reason[selected]), 1)
    rows, rows_split = [], []
    for lang, k in zip(languages, li):
        counts = by[k] if k >= 0 else np.zeros((len(SPLITS), n_r - 1), np.int64)
        total = counts.sum(0)
        rows.append((lang, int(total.sum()), *(int(total[_R[r]]) for r in _REASONS), int(total[0])))
        for s, c in zip(SPLITS, counts):
            rows_split.append((lang, s, int(c.sum()), *(int(c[_R[r]]) for r in _REASONS), int(c[0])))
    kept = selected & (reason == 0)
    rows_by = {(lang, s): int(by[k, si, 0]) if k >= 0 else 0
               for lang, k in zip(languages, li) for si, s in enumerate(SPLITS)}
    verses = {s: int(len(np.unique(st.vid[kept & (split == si)]))) for si, s in enumerate(SPLITS)}
    return rows, rows_split, rows_by, verses


def _write(st: _Staged, keep: np.ndarray, dest: Path) -> int:
    """Pass 2: stream the kept staged rows into the corpus file; returns the row count."""
    n, offset = 0, 0
    split_names = np.array(SPLITS)
    with parquet_writer(dest, SCHEMA) as writer:
        for batch in st.batches():
            k = batch.num_rows
            mask = keep[offset:offset + k]
            codes = st.vid[offset:offset + k]
            offset += k
            if not mask.any():
                continue
            b = batch.filter(pa.array(mask))
            codes = codes[mask]
            ids = st.vid_names(codes, b)
            writer.write_batch(pa.record_batch([
                pa.array(ids, pa.string()), pa.array(st.books(ids), pa.int32()),
                pa.array(split_names[st.vsplit[codes]].tolist(), pa.string()),
                b.column(2), b.column(3), b.column(4)], schema=SCHEMA))
            n += b.num_rows
    return n


@dataclass(frozen=True)
class _Built:
    n_rows: int
    languages: tuple[str, ...]
    stats_rows: list[tuple]
    stats_by_split: list[tuple]
    rows_by_lang_split: dict[tuple[str, str], int]
    n_verses_by_split: dict[str, int]


def _build_into(config: CorpusConfig, dest: Path, work: Path) -> _Built:
    """Build the corpus into ``dest`` (a Parquet file), staging user rows under ``work``."""
    if config.source_path is None:
        st, links = _stage_bible(config)
        languages = config.languages
    else:
        st = _stage_user(config.source_path, config, work / "staged.parquet")
        links = None
        found = st.langs
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
    reason, selected = _decide(st, languages, config, links)
    stats_rows, by_split, rows_by, verses = _stats(st, reason, selected, languages)
    keep = selected & (reason == 0)
    if not keep.any():
        raise MimoInputError(
            f"no pair survives the filters (per language: {stats_rows}); relax min_chars, "
            f"max_chars or max_length_ratio, or check the texts",
            source=config.source_path or "packaged Bible")
    n = _write(st, keep, dest)
    return _Built(n, tuple(languages), stats_rows, by_split, rows_by, verses)


def build_parallel_corpus(config: CorpusConfig) -> tuple[pa.Table, list[tuple]]:
    """The filtered, split, capped parallel table and its per-language stats rows.

    Stats rows are ``(lang, *counts)`` in `STATS_COLUMNS` order. In memory: for a large
    corpus use `build_parallel_corpus_cached`, which streams.
    """
    with tempfile.TemporaryDirectory(prefix="mimo-corpus-") as d:
        built = _build_into(config, Path(d) / CORPUS_FILE, Path(d))
        return read_parquet(Path(d) / CORPUS_FILE), built.stats_rows


# --------------------------------------------------------------------------- user corpora


def load_user_corpus(path: str | Path, *, seed: int = 13, eval_fraction: float = 0.1,
                     dev_fraction: float = 0.05) -> pa.Table:
    """Read and validate a user's parallel corpus into the corpus schema (`SCHEMA`), unfiltered.

    Accepted: a TSV file (UTF-8, tab-separated, a header line; fields quoted as by
    ``csv``/pandas when they hold tabs, quotes or newlines), a Parquet file, or a folder
    written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``,
    whose split names become ``split`` when there is no such column). Columns: ``en``,
    ``text``, ``lang`` required; ``split`` (train/dev/eval; validation means dev, test
    means eval) and ``verse_id`` optional; others are ignored.

    Without ``verse_id``, rows sharing the same English sentence share an id,
    ``"u<row>"`` with the 1-based data row of its first occurrence: they are
    translations of one sentence. Without ``split``, a seeded ``eval_fraction`` of the
    verse ids goes to ``eval``, ``dev_fraction`` to ``dev``, the rest to ``train`` (a verse
    never straddles splits). Texts are whitespace-normalised; ``book`` is 0.

    Every problem raises `MimoInputError` naming the file, the row (1-based data row,
    the header is row 0) and what to do. `build_parallel_corpus_cached` reads the same way,
    streaming.
    """
    config = CorpusConfig(source_path=str(path), seed=seed, eval_fraction=eval_fraction, dev_fraction=dev_fraction)
    with tempfile.TemporaryDirectory(prefix="mimo-corpus-") as d:
        st = _stage_user(path, config, Path(d) / "staged.parquet")
        _write(st, np.ones(len(st.lang), bool), Path(d) / CORPUS_FILE)
        return read_parquet(Path(d) / CORPUS_FILE)


# --------------------------------------------------------------------------- building


def source_fingerprint(config: CorpusConfig) -> str:
    """Identity of the input: the Bible package file, or the user file's content hash."""
    if config.source_path is None:
        return bible.bible_fingerprint()
    return path_fingerprint(config.source_path)


def config_hash(config: CorpusConfig, fingerprint: str | None = None) -> str:
    """16 hex digits of SHA-256 over the config (the source by content, not by path)."""
    fingerprint = source_fingerprint(config) if fingerprint is None else fingerprint
    d = dataclasses.asdict(config)
    d["source_path"] = None if config.source_path is None else "user"
    blob = json.dumps({"config": d, "source": fingerprint, "format": CORPUS_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
        source_kind=meta.get("source_kind", "bible"),
        filters=dict(meta.get("filters", {})),
        stats_by_split=[tuple(r) for r in meta.get("stats_by_split", [])],
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
    leaves nothing half-written and a second call with the same config reuses it. A user
    corpus streams through (see the module docstring).
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
    with atomic_dir(folder) as tmp:
        work = tmp / ".work"
        work.mkdir()
        built = _build_into(config, tmp / CORPUS_FILE, work)
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
        meta = {
            "config_hash": h,
            "config": dataclasses.asdict(config),
            "source": config.source_path or f"bible ({fingerprint})",
            "source_kind": "bible" if config.source_path is None else "user",
            "source_fingerprint": fingerprint,
            "format": CORPUS_FORMAT,
            "n_rows": built.n_rows,
            "languages": list(built.languages),
            "rows_by_lang_split": [[lang, s, built.rows_by_lang_split.get((lang, s), 0)]
                                   for lang in built.languages for s in SPLITS],
            "n_verses_by_split": built.n_verses_by_split,
            "stats_columns": list(STATS_COLUMNS),
            "stats_rows": [list(r) for r in built.stats_rows],
            "stats_by_split": [list(r) for r in built.stats_by_split],
            "filters": config.filter_settings(),
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        write_json(meta, tmp / META_FILE)
    log.info("parallel corpus: wrote %s (%d rows, %.1f s)", path, built.n_rows, meta["build_seconds"])
    return _result_from_meta(path, json.loads(meta_path.read_text()))


# --------------------------------------------------------------------------- reading


def read_corpus(corpus_path: str | Path, split: str | None = None,
                columns: Sequence[str] | None = None) -> pa.Table:
    """The corpus table, optionally one split and some columns."""
    filters = [("split", "=", split)] if split is not None else None
    return read_parquet(corpus_path, columns=list(columns) if columns else None, filters=filters)


def corpus_languages(corpus_path: str | Path) -> tuple[str, ...]:
    """The non-English languages of a corpus, in order of first appearance."""
    seen: dict[str, None] = {}
    for batch in iter_parquet_batches(corpus_path, ["lang"]):
        seen.update(dict.fromkeys(pc.unique(batch.column(0)).to_pylist()))
    return tuple(seen)


def verse_texts(corpus_path: str | Path, split: str, *, complete: bool = True) -> dict[str, dict[str, str]]:
    """``{verse_id: {lang: text, ..., "en": english}}`` for the verses of ``split``, in file
    order: those present in every language of the corpus (``complete``), or all of them
    with the languages each has."""
    if split not in SPLITS:
        raise MimoInputError(f"split {split!r}: use one of {', '.join(SPLITS)}", source="verse_texts")
    langs = corpus_languages(corpus_path)
    cols = read_corpus(corpus_path, split, ["verse_id", "lang", "en", "text"]).to_pydict()
    out: dict[str, dict[str, str]] = {}
    for vid, lang, en, text in zip(cols["verse_id"], cols["lang"], cols["en"], cols["text"]):
        d = out.setdefault(vid, {"en": en})
        d[lang] = text
    if not complete:
        return out
    need = len(langs) + 1
    return {v: d for v, d in out.items() if len(d) == need}


def iter_english(corpus_path: str | Path, splits: Sequence[str] = ("train",),
                 batch_rows: int = 65_536) -> Iterator[list[str]]:
    """The English side of the rows of ``splits``, a batch at a time (with repeats)."""
    want = pa.array(list(splits))
    for batch in iter_parquet_batches(corpus_path, ["en", "split"], batch_size=batch_rows):
        yield batch.column(0).filter(pc.is_in(batch.column(1), value_set=want)).to_pylist()
