"""Stage-2 query–passage pairs: a training verse and one of its cross-references.

Each pair carries both verses in the two languages of an ordered language pair
(a, b), a != b, drawn uniformly from the corpus languages plus English, the passage
in a third language c drawn independently of a and b (LaKDA's, as in the official
``cached_lakda.py`` setup), and the English versions that the teacher embeds. The
objectives pick what they need:

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pyarrow as pa

from .errors import MimoInputError
from .fileio import CorruptFileError, quarantine, read_parquet, write_parquet

log = logging.getLogger(__name__)

COLUMNS = ("q_verse", "p_verse", "lang_a", "lang_b", "lang_c", "q_a", "q_b", "p_a", "p_b", "p_c", "q_en", "p_en")
#: Bumped when the rows a config gives change (2: the independent passage language c).
PAIRS_FORMAT = 2


@dataclass(frozen=True)
class PairsConfig:
    max_pairs: int | None = None  # seeded sample cap; None = every cross-reference
    seed: int = 13

    def __post_init__(self):
        if self.max_pairs is not None and self.max_pairs < 1:
            raise MimoInputError(f"must be at least 1 (or unset), got {self.max_pairs}", source="max_pairs")


@dataclass(frozen=True)
class PairsResult:
    path: str
    n_pairs: int
    languages: tuple[str, ...]
    pairs_by_lang_pair: dict[tuple[str, str], int]

    def english_texts(self) -> list[str]:
        t = read_parquet(self.path, columns=["q_en", "p_en"])
        return list(dict.fromkeys(t["q_en"].to_pylist() + t["p_en"].to_pylist()))


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
        raise MimoInputError("no cross-reference joins two training verses present in every language",
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
    path = Path(out_dir) / key / "pairs.parquet"
    table = None
    if path.exists():
        try:
            table = read_parquet(path)
            log.info("retrieval pairs %s already built", path)
        except CorruptFileError as e:
            quarantine(path, f"the pairs are rebuilt ({e.reason})")
    if table is not None:
        rows = [dict(zip(("lang_a", "lang_b"), r)) for r in zip(table["lang_a"].to_pylist(),
                                                                 table["lang_b"].to_pylist())]
    else:
        rows = make_pairs(verses, cross_refs, languages, config)
        write_parquet(pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in COLUMNS}), path)
        log.info("retrieval pairs: %d pairs written to %s", len(rows), path)
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["lang_a"], r["lang_b"])] = counts.get((r["lang_a"], r["lang_b"]), 0) + 1
    return PairsResult(str(path), len(rows), tuple(sorted(set(languages) | {"en"})), counts)


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs as a list of dicts (column -> string)."""
    return read_parquet(path).to_pylist()


def build_retrieval_pairs_from_corpus(corpus, out_dir: str | Path, config: PairsConfig = PairsConfig()) -> PairsResult:
    """`build_retrieval_pairs` over a `corpus.CorpusResult`'s training verses and the Bible's cross-references."""
    from .bible import read_cross_references
    from .corpus import verse_texts

    verses = verse_texts(corpus.path, "train")
    return build_retrieval_pairs(verses, read_cross_references(), corpus.languages, out_dir, config,
                                 source_key=corpus.config_hash)
