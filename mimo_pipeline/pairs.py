"""Stage-2 query–passage pairs: from the packaged Bible's cross-references, or the user's own.

Two sources give the same pairs file:

- the packaged Bible (default): a training verse and one of its cross-references
  (`build_retrieval_pairs`), both from the corpus' ``train`` split (never ``dev`` or
  ``eval``);
- a user file (``source_path``, `build_user_pairs`), streamed in batches, in one of
  two layouts:

  - *wide*, the official mMARCO-parallel layout (``build_mmarco_parallel.py`` of the MIMO
    release writes it with ``datasets.Dataset.save_to_disk``): one row per (query,
    positive passage), columns ``query_<lang>`` and ``positive_<lang>`` for every language
    (mMARCO writes Dutch as ``dt``: read as ``nl``), optionally ``pair_id``;
  - *long*: columns ``pair_id``, ``lang``, ``query``, ``passage``, one row per pair and
    language (the rows of a pair next to each other stream; scattered ones are read into
    memory with a warning).

  Both as a ``datasets`` folder, Parquet or TSV. English versions are required (the
  teacher embeds them); a language whose query or passage is empty in a wide row is
  absent from that row (the official file has such gaps: they are counted per language);
  a row left with English only is dropped and counted (``no_translation``). Everything
  else wrong with a row is a `MimoInputError` naming the file, the row and what to do.

Each pair carries the query and the passage in the two languages of an ordered language
pair (a, b), a != b, drawn uniformly from the languages the pair has (the corpus
languages plus English for the Bible), the passage in a third language c drawn
independently of a and b (LaKDA's, as in the official ``cached_lakda.py`` setup), and the
English versions that the teacher embeds. ``q_verse``/``p_verse`` are the two verse ids
for the Bible, and both the pair id for user data (``pair_id``, else ``"r<row>"``).
The objectives pick what they need:

==========  =================================================================
objective   texts used
==========  =================================================================
mimo        query in a, passage in b; teacher vectors of q_en and p_en
xlco        query in a, passage in b
infonce     query in a, passage in a (same language)
lakda       query in a and in b, passage in c
==========  =================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from .bible import normalize_whitespace
from .errors import MimoInputError
from .fileio import (CorruptFileError, atomic_dir, check_parquet, iter_parquet_batches, parquet_writer, quarantine,
                     read_parquet, write_json, write_parquet)
from .userfiles import UserTable, as_text, first_repeat, open_user_table, path_fingerprint, unique_in_order

log = logging.getLogger(__name__)

COLUMNS = ("q_verse", "p_verse", "lang_a", "lang_b", "lang_c", "q_a", "q_b", "p_a", "p_b", "p_c", "q_en", "p_en")
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])
#: Bumped when the rows a config gives change (2: the independent passage language c).
PAIRS_FORMAT = 2
#: Bumped when the rows a user source gives change.
USER_PAIRS_FORMAT = 1
PAIRS_FILE = "pairs.parquet"
META_FILE = "pairs.json"
#: Language codes of user files read as another (mMARCO writes Dutch as "dt").
LANGUAGE_ALIASES = {"dt": "nl"}
LONG_COLUMNS = ("pair_id", "lang", "query", "passage")
_WIDE = re.compile(r"(query|positive)_(.+)", re.IGNORECASE)
_WRITE_ROWS = 16_384
LAYOUT_HELP = ("either the mMARCO-parallel layout (columns query_<lang> and positive_<lang> for every language, "
               "query_en and positive_en among them) or the long layout (columns pair_id, lang, query, passage)")


@dataclass(frozen=True)
class PairsConfig:
    """What the pairs are drawn from.

    - ``max_pairs``: a seeded sample cap; None = every cross-reference / every usable row.
    - ``seed``: the sample and the language draws.
    - ``source_path``: a user pairs file or folder (see the module docstring) instead of
      the Bible's cross-references.
    - ``languages``: with ``source_path``, the non-English languages to use (None: all the
      file has); English is always used.
    """

    max_pairs: int | None = None
    seed: int = 13
    source_path: str | None = None
    languages: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.max_pairs is not None and self.max_pairs < 1:
            raise MimoInputError(f"must be at least 1 (or unset), got {self.max_pairs}", source="max_pairs")
        if self.source_path is not None:
            object.__setattr__(self, "source_path", str(self.source_path))
        if self.languages is not None:
            langs = self.languages
            if isinstance(langs, str):
                langs = langs.replace(",", " ").split()
            langs = tuple(dict.fromkeys(_language(str(x).strip(), source="retrieval_pairs: languages")
                                        for x in langs))
            object.__setattr__(self, "languages", tuple(x for x in langs if x != "en"))


@dataclass(frozen=True)
class PairsResult:
    path: str
    n_pairs: int
    languages: tuple[str, ...]
    pairs_by_lang_pair: dict[tuple[str, str], int]
    source: str = "bible"  # "bible" (cross-references) or the user file's path
    layout: str = "bible"  # "bible", "wide" or "long"
    rows_read: int = 0  # user source: data rows read
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows (pairs) left out
    missing_by_lang: dict[str, int] = field(default_factory=dict)  # wide: rows lacking a language

    def iter_english_texts(self, batch_rows: int = 65_536) -> Iterator[list[str]]:
        """The English query and passage texts, a batch at a time (with repeats)."""
        for batch in iter_parquet_batches(self.path, ["q_en", "p_en"], batch_size=batch_rows):
            yield batch.column(0).to_pylist() + batch.column(1).to_pylist()

    def english_texts(self) -> list[str]:
        return list(dict.fromkeys(t for chunk in self.iter_english_texts() for t in chunk))


def _language(code: str, *, source: str, row: int | None = None) -> str:
    """A user file's language code: lowercased, ``dt`` read as ``nl``, checked (``en`` allowed)."""
    from .corpus import check_language_code

    c = code.strip()
    c = LANGUAGE_ALIASES.get(c.lower(), c.lower() if len(c) == 2 else c)
    return c if c == "en" else check_language_code(c, source=source, row=row)


# --------------------------------------------------------------------------- the Bible


def make_pairs(
    verses: Mapping[str, Mapping[str, str]],
    cross_refs: Iterable[tuple[str, str]],
    languages: Sequence[str],
    config: PairsConfig = PairsConfig(),
) -> list[dict]:
    """Rows of query–passage pairs (see the module docstring), deterministic for a seed."""
    langs = sorted(set(languages) | {"en"})
    if len(langs) < 2:
        raise MimoInputError("need at least one non-English language for cross-lingual pairs", source="languages")
    ordered = [(a, b) for a in langs for b in langs if a != b]
    links = sorted({(s, d) for s, d in cross_refs if s in verses and d in verses and s != d})
    if not links:
        sample = ", ".join(repr(v) for v in list(verses)[:3]) or "none"
        raise MimoInputError(
            f"no cross-reference of the packaged Bible joins two of the {len(verses)} training verses present in "
            f"every language (verse ids: {sample}); cross-references join Bible verse ids 'B.C.V' only. Give "
            f"Stage 2 its own pairs (retrieval_pairs: source_path) or use a corpus with Bible verse ids",
            source="retrieval_pairs")
    rng = random.Random(config.seed)
    rng.shuffle(links)
    if config.max_pairs is not None:
        links = links[:config.max_pairs]
    rows = []
    for q, p in links:
        a, b = ordered[rng.randrange(len(ordered))]
        c = langs[rng.randrange(len(langs))]
        vq, vp = verses[q], verses[p]
        rows.append({"q_verse": q, "p_verse": p, "lang_a": a, "lang_b": b, "lang_c": c, "q_a": vq[a], "q_b": vq[b],
                     "p_a": vp[a], "p_b": vp[b], "p_c": vp[c], "q_en": vq["en"], "p_en": vp["en"]})
    return rows


def _count_lang_pairs(path: str | Path) -> dict[tuple[str, str], int]:
    counts: Counter[tuple[str, str]] = Counter()
    for batch in iter_parquet_batches(path, ["lang_a", "lang_b"]):
        counts.update(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
    return dict(counts)


def build_retrieval_pairs(
    verses: Mapping[str, Mapping[str, str]],
    cross_refs: Iterable[tuple[str, str]],
    languages: Sequence[str],
    out_dir: str | Path,
    config: PairsConfig = PairsConfig(),
    *,
    source_key: str = "",
) -> PairsResult:
    """Write the pairs to ``out_dir/<hash>/pairs.parquet`` once (content-addressed) and describe them."""
    key = hashlib.sha256(json.dumps([source_key, sorted(languages), asdict(config), PAIRS_FORMAT]).encode()).hexdigest()[:16]
    path = Path(out_dir) / key / PAIRS_FILE
    counts = None
    if path.exists():
        try:
            counts = _count_lang_pairs(path)
            log.info("retrieval pairs %s already built", path)
        except CorruptFileError as e:
            quarantine(path, f"the pairs are rebuilt ({e.reason})")
    if counts is None:
        rows = make_pairs(verses, cross_refs, languages, config)
        write_parquet(pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in COLUMNS}), path)
        log.info("retrieval pairs: %d pairs written to %s", len(rows), path)
        counts = dict(Counter((r["lang_a"], r["lang_b"]) for r in rows))
    return PairsResult(str(path), sum(counts.values()), tuple(sorted(set(languages) | {"en"})), counts)


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs as a list of dicts (column -> string)."""
    return read_parquet(path).to_pylist()


def build_retrieval_pairs_from_corpus(corpus, out_dir: str | Path, config: PairsConfig = PairsConfig()) -> PairsResult:
    """`build_retrieval_pairs` over a `corpus.CorpusResult`'s ``train`` verses and the Bible's cross-references."""
    from .bible import read_cross_references
    from .corpus import verse_texts

    verses = verse_texts(corpus.path, "train")
    return build_retrieval_pairs(verses, read_cross_references(), corpus.languages, out_dir, config,
                                 source_key=corpus.config_hash)


def build_stage2_pairs(corpus, out_dir: str | Path, config: PairsConfig = PairsConfig(), *,
                       bible_cross_references: bool | None = None) -> PairsResult:
    """The `retrieval_pairs` asset's library call: the user's pairs when ``config.source_path``
    is set; else the Bible's cross-references over the corpus' ``train`` verses, which a user
    corpus gets only when asked for (``bible_cross_references=True``: its verse ids must be
    Bible ids ``"B.C.V"``). With a user corpus and neither, nothing reads the Bible: the error
    says what to set."""
    if config.source_path is not None:
        return build_user_pairs(config, out_dir)
    user_corpus = getattr(corpus, "source_kind", "bible") != "bible"
    if user_corpus and not bible_cross_references:
        raise MimoInputError(
            f"the parallel corpus is your own ({corpus.source}) and Stage 2 has no query–passage pairs: set "
            f"retrieval_pairs' source_path to your pairs, {LAYOUT_HELP}, as a datasets folder, Parquet or TSV "
            f"(e.g. the MIMO release's mMARCO-parallel folder); or, if the corpus' verse_id values are Bible ids "
            f"'B.C.V', set bible_cross_references: true to pair verses by the packaged Bible's cross-references",
            source="retrieval_pairs: source_path")
    return build_retrieval_pairs_from_corpus(corpus, out_dir, config)


# --------------------------------------------------------------------------- user pairs


@dataclass
class _Layout:
    kind: str  # "wide" or "long"
    langs: list[str]  # wide: languages used (en first); long: filled while reading
    columns: dict[str, tuple[str, str]]  # wide: lang -> (query column, positive column)
    has_pair_id: bool


def _check_pairs_columns(source: str, columns: Sequence[str], hint: str) -> None:
    cols = [str(c) for c in columns]
    if all(c in cols for c in LONG_COLUMNS) or any(_WIDE.fullmatch(c) for c in cols):
        return
    raise MimoInputError(
        f"not a pairs file: found columns {', '.join(cols) or 'none'}; use {LAYOUT_HELP}{hint}", source=source)


def _layout(table: UserTable, config: PairsConfig) -> _Layout:
    source = str(table.path)
    cols = table.columns
    if all(c in cols for c in LONG_COLUMNS):
        return _Layout("long", [], {}, True)
    found: dict[str, dict[str, str]] = {}
    for c in cols:
        m = _WIDE.fullmatch(c)
        if not m:
            continue
        lang = _language(m.group(2), source=f"{source}: column {c}")
        side = m.group(1).lower()
        if side in found.setdefault(lang, {}):
            raise MimoInputError(f"columns {found[lang][side]} and {c} are both language {lang!r} (mMARCO's 'dt' is "
                                 f"'nl'); keep one of them", source=source)
        found[lang][side] = c
    for lang, sides in found.items():
        if len(sides) == 1:
            have, = sides.values()
            other = "positive" if "query" in sides else "query"
            raise MimoInputError(f"column {have} has no {other}_{have.split('_', 1)[1]}: every language needs both "
                                 f"its query_<lang> and positive_<lang> columns", source=source)
    if "en" not in found:
        raise MimoInputError(f"no English columns query_en and positive_en (languages found: "
                             f"{', '.join(sorted(found))}); the teacher embeds the English query and passage of "
                             f"every pair: add them", source=source)
    langs = sorted(set(found) - {"en"})
    if config.languages is not None:
        absent = [x for x in config.languages if x not in found]
        if absent:
            raise MimoInputError(f"languages {', '.join(absent)} have no query_<lang>/positive_<lang> columns; the "
                                 f"file has {', '.join(sorted(found))}", source=source)
        langs = [x for x in langs if x in config.languages]
    if not langs:
        raise MimoInputError("no language besides English; cross-lingual pairs need query_<lang> and "
                             "positive_<lang> columns of at least one more language", source=source)
    langs = ["en", *langs]
    return _Layout("wide", langs, {x: (found[x]["query"], found[x]["positive"]) for x in langs},
                   "pair_id" in cols)


class _Drawer:
    """The seeded language draws of user pairs, row after row."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self._ordered: dict[tuple[str, ...], list[tuple[str, str]]] = {}

    def draw(self, langs: tuple[str, ...]) -> tuple[str, str, str]:
        ordered = self._ordered.get(langs)
        if ordered is None:
            ordered = self._ordered[langs] = [(a, b) for a in langs for b in langs if a != b]
        a, b = ordered[self.rng.randrange(len(ordered))]
        return a, b, langs[self.rng.randrange(len(langs))]


class _Sink:
    """Pairs rows into the Parquet writer a batch at a time, counting language pairs."""

    def __init__(self, writer):
        self.writer, self.buf, self.n = writer, {c: [] for c in COLUMNS}, 0
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, pid: str, texts: Mapping[str, tuple[str, str]], a: str, b: str, c: str) -> None:
        (qa, pa_), (qb, pb), (_, pc), (qe, pe) = texts[a], texts[b], texts[c], texts["en"]
        for col, v in zip(COLUMNS, (pid, pid, a, b, c, qa, qb, pa_, pb, pc, qe, pe)):
            self.buf[col].append(v)
        self.counts[(a, b)] += 1
        if len(self.buf["q_verse"]) >= _WRITE_ROWS:
            self.flush()

    def flush(self) -> None:
        k = len(self.buf["q_verse"])
        if k:
            self.writer.write_batch(pa.record_batch([pa.array(self.buf[c], pa.string()) for c in COLUMNS],
                                                    schema=SCHEMA))
            self.n += k
            self.buf = {c: [] for c in COLUMNS}


def _text(value, column: str, source: str, row: int) -> str:
    return normalize_whitespace(as_text(value, column, source, row))


def _wide_rows(table: UserTable, layout: _Layout, stats: dict) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """``(pair id, {lang: (query, passage)})`` of every usable wide row, in file order."""
    cols = [c for lang in layout.langs for c in layout.columns[lang]] + (["pair_id"] if layout.has_pair_id else [])
    missing = stats["missing_by_lang"]
    for part, recs in table.batches(cols):
        src = part.source
        for row, rec in recs:
            stats["rows_read"] += 1
            texts = {}
            for lang in layout.langs:
                qc, pc = layout.columns[lang]
                q, p = _text(rec[qc], qc, src, row), _text(rec[pc], pc, src, row)
                if q and p:
                    texts[lang] = (q, p)
                elif lang == "en":
                    raise MimoInputError(
                        f"empty English {'query (query_en)' if not q else 'passage (positive_en)'}: the teacher "
                        f"embeds the English query and passage of every pair; fill it in or delete the row",
                        source=src, row=row)
                else:
                    missing[lang] = missing.get(lang, 0) + 1
            if len(texts) < 2:
                stats["dropped"]["no_translation"] = stats["dropped"].get("no_translation", 0) + 1
                continue
            if layout.has_pair_id:
                pid = as_text(rec["pair_id"], "pair_id", src, row, allow_int=True).strip()
                if not pid:
                    raise MimoInputError("empty pair_id; give every row an id or drop the pair_id column",
                                         source=src, row=row)
            else:
                pid = f"r{row}"
            yield pid, texts


def _long_scan(table: UserTable, config: PairsConfig, stats: dict):
    """Pass 1 over a long file: validate every row; return per-row arrays and the groups."""
    rows, pair_h, key_h, lang_ix = array("q"), array("q"), array("q"), array("h")
    langs: dict[str, int] = {}
    for part, recs in table.batches(list(LONG_COLUMNS)):
        src = part.source
        for row, rec in recs:
            stats["rows_read"] += 1
            pid = as_text(rec["pair_id"], "pair_id", src, row, allow_int=True).strip()
            if not pid:
                raise MimoInputError("empty pair_id; every row names the pair it belongs to", source=src, row=row)
            raw = as_text(rec["lang"], "lang", src, row).strip()
            if not raw:
                raise MimoInputError("empty language code (column lang); use 'en' or a 2-letter ISO 639-1 code "
                                     "such as 'de'", source=src, row=row)
            lang = _language(raw, source=src, row=row)
            for col in ("query", "passage"):
                if not _text(rec[col], col, src, row):
                    raise MimoInputError(f"empty {col} (column {col}); fill it in or delete the row (a pair leaves "
                                         f"out a language by having no row for it)", source=src, row=row)
            rows.append(row)
            pair_h.append(hash(pid))
            key_h.append(hash((pid, lang)))
            lang_ix.append(langs.setdefault(lang, len(langs)))
    if not rows:
        raise MimoInputError("no data rows; add rows with pair_id, lang, query and passage", source=str(table.path))
    return (np.frombuffer(rows, np.int64), np.frombuffer(pair_h, np.int64), np.frombuffer(key_h, np.int64),
            np.frombuffer(lang_ix, np.int16), list(langs))


def _record_at(table: UserTable, row: int, columns: Sequence[str]) -> tuple[str, dict]:
    for part, recs in table.batches(list(columns)):
        if recs[-1][0] < row:
            continue
        for r, rec in recs:
            if r == row:
                return part.source, rec
    raise AssertionError(f"row {row} not found")  # pragma: no cover


def _long_groups(table: UserTable, layout: _Layout, config: PairsConfig, stats: dict):
    """Validate a long file (pass 1) and give the groups: ``(group of row i, eligible
    groups in order, contiguous, langs)``."""
    rows, pair_h, key_h, lang_ix, langs = _long_scan(table, config, stats)
    src = str(table.path)
    dup = first_repeat(key_h)
    if dup is not None:
        first, second = rows[dup[0]], rows[dup[1]]
        psrc, rec = _record_at(table, int(second), ["pair_id", "lang"])
        raise MimoInputError(f"pair_id {str(rec['pair_id']).strip()!r} has two rows for language "
                             f"{_language(str(rec['lang']), source=psrc)!r} (rows {first} and {second}); keep one "
                             f"query and passage per pair and language", source=psrc, row=int(second))
    group, first_idx = unique_in_order(pair_h)  # group number in order of first appearance
    first_row_of_group = rows[first_idx]
    selected = np.array([x == "en" or config.languages is None or x in config.languages for x in langs])
    if config.languages is not None:
        absent = [x for x in config.languages if x not in langs]
        if absent:
            raise MimoInputError(f"languages {', '.join(absent)} have no row; the file has "
                                 f"{', '.join(sorted(langs))}", source=src)
    sel = selected[lang_ix]
    n_groups = len(first_idx)
    en_code = langs.index("en") if "en" in langs else -1
    has_en = np.zeros(n_groups, bool)
    if en_code >= 0:
        has_en[group[lang_ix == en_code]] = True
    if not has_en.all():
        g = int(np.flatnonzero(~has_en)[0])
        psrc, rec = _record_at(table, int(first_row_of_group[g]), ["pair_id"])
        raise MimoInputError(f"pair_id {str(rec['pair_id']).strip()!r} has no English row (lang en): the teacher "
                             f"embeds the English query and passage of every pair; add its en row or delete the "
                             f"pair's rows", source=psrc, row=int(first_row_of_group[g]))
    n_langs = np.bincount(group[sel], minlength=n_groups)
    eligible = n_langs >= 2
    if not eligible.all():
        stats["dropped"]["no_translation"] = int((~eligible).sum())
    contiguous = bool((np.diff(group) >= 0).all()) if len(group) > 1 else True
    layout.langs = ["en", *sorted(x for x in langs if x != "en" and selected[langs.index(x)])]
    if len(layout.langs) < 2:
        raise MimoInputError("no language besides English; cross-lingual pairs need rows in at least one more "
                             "language", source=src)
    return eligible, contiguous


def _long_rows(table: UserTable, layout: _Layout, config: PairsConfig, eligible: np.ndarray,
               contiguous: bool) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """Pass 2 over a long file: ``(pair id, {lang: (query, passage)})`` of each eligible pair."""
    use = set(layout.langs)

    def records():
        for part, recs in table.batches(list(LONG_COLUMNS)):
            for row, rec in recs:
                pid = as_text(rec["pair_id"], "pair_id", part.source, row, allow_int=True).strip()
                lang = _language(str(rec["lang"]), source=part.source, row=row)
                yield pid, lang, normalize_whitespace(rec["query"]), normalize_whitespace(rec["passage"])

    if contiguous:
        stream = records()
    else:
        log.warning("%s: the rows of a pair are not next to each other; the file is read into memory to group "
                    "them (sort it by pair_id to stream it)", table.path)
        held: dict[str, list] = {}
        for rec in records():
            held.setdefault(rec[0], []).append(rec)
        stream = (r for recs in held.values() for r in recs)
    g, current, texts = -1, None, {}
    for pid, lang, q, p in stream:
        if pid != current:
            if current is not None and eligible[g]:
                yield current, texts
            g, current, texts = g + 1, pid, {}
        if lang in use:
            texts[lang] = (q, p)
    if current is not None and eligible[g]:
        yield current, texts


def _user_pairs_key(config: PairsConfig, fingerprint: str) -> str:
    d = asdict(config)
    d["source_path"] = "user"
    return hashlib.sha256(json.dumps([fingerprint, d, USER_PAIRS_FORMAT], sort_keys=True).encode()).hexdigest()[:16]


def _result_from_meta(path: Path, meta: dict) -> PairsResult:
    return PairsResult(
        path=str(path), n_pairs=int(meta["n_pairs"]), languages=tuple(meta["languages"]),
        pairs_by_lang_pair={(a, b): int(n) for a, b, n in meta["pairs_by_lang_pair"]},
        source=meta["source"], layout=meta["layout"], rows_read=int(meta["rows_read"]),
        dropped={k: int(v) for k, v in meta["dropped"].items()},
        missing_by_lang={k: int(v) for k, v in meta["missing_by_lang"].items()})


def build_user_pairs(config: PairsConfig, out_dir: str | Path) -> PairsResult:
    """Stream a user pairs file (``config.source_path``, see the module docstring) into
    ``out_dir/<hash>/pairs.parquet`` with the `COLUMNS` of the Bible's pairs, once per
    content and config; ``pairs.json`` beside it holds the counts. With ``max_pairs``, a
    first pass counts the usable rows and a seeded uniform sample of them is kept."""
    if config.source_path is None:
        raise ValueError("build_user_pairs needs config.source_path")
    fingerprint = path_fingerprint(config.source_path)
    folder = Path(out_dir) / _user_pairs_key(config, fingerprint)
    path, meta_path = folder / PAIRS_FILE, folder / META_FILE
    if path.is_file() and meta_path.is_file():
        problem = check_parquet(path)
        if problem is None:
            try:
                result = _result_from_meta(path, json.loads(meta_path.read_text()))
                log.info("retrieval pairs %s already built", path)
                return result
            except (ValueError, KeyError, TypeError) as e:
                problem = f"{META_FILE}: {e}"
        quarantine(folder, f"the pairs are rebuilt from {config.source_path} ({problem})")

    table = open_user_table(config.source_path, check_columns=_check_pairs_columns,
                            header_hint="a header line (query_<lang> and positive_<lang> columns, or pair_id, lang, "
                                        "query, passage) and rows")
    layout = _layout(table, config)
    stats = {"rows_read": 0, "dropped": {}, "missing_by_lang": {}}
    if layout.kind == "long":
        eligible, contiguous = _long_groups(table, layout, config, stats)
        n_usable = int(eligible.sum())

        def rows():
            return _long_rows(table, layout, config, eligible, contiguous)
    else:
        n_usable = None

        def rows():
            return _wide_rows(table, layout, stats)
    keep = None
    if config.max_pairs is not None:
        if n_usable is None:  # a first pass counts the usable rows (and validates them all)
            n_usable = sum(1 for _ in rows())
            stats = {"rows_read": 0, "dropped": {}, "missing_by_lang": {}}
        if config.max_pairs < n_usable:
            keep = np.zeros(n_usable, bool)
            keep[np.random.default_rng(config.seed).choice(n_usable, config.max_pairs, replace=False)] = True
    drawer = _Drawer(config.seed)
    with atomic_dir(folder) as tmp:
        with parquet_writer(tmp / PAIRS_FILE, SCHEMA) as writer:
            sink = _Sink(writer)
            for i, (pid, texts) in enumerate(rows()):
                if keep is not None and not keep[i]:
                    continue
                a, b, c = drawer.draw(tuple(sorted(texts)))
                sink.add(pid, texts, a, b, c)
            sink.flush()
        if keep is not None:
            stats["dropped"]["max_pairs"] = int((~keep).sum())
        if sink.n == 0:
            raise MimoInputError(f"no usable pair: every row lacks a second language besides English "
                                 f"({stats['rows_read']} rows read); fill in translations", source=config.source_path)
        meta = {"source": config.source_path, "source_fingerprint": fingerprint, "config": asdict(config),
                "layout": layout.kind, "rows_read": stats["rows_read"], "n_pairs": sink.n,
                "languages": sorted(layout.langs), "format": USER_PAIRS_FORMAT,
                "pairs_by_lang_pair": [[a, b, n] for (a, b), n in sorted(sink.counts.items())],
                "dropped": stats["dropped"], "missing_by_lang": dict(sorted(stats["missing_by_lang"].items()))}
        write_json(meta, tmp / META_FILE)
    log.info("retrieval pairs: %d pairs from %s (%s layout, %d rows read) written to %s", sink.n,
             config.source_path, layout.kind, stats["rows_read"], path)
    return _result_from_meta(path, json.loads(meta_path.read_text()))
