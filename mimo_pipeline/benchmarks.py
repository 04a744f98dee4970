"""Held-out retrieval benchmarks in BEIR form, built from the New Testament or read from disk.

A benchmark is a corpus, queries and qrels. Each document and query may carry a
``lang`` (ISO 639-1) and a ``group``: parallel queries share a group (what MRC@10
compares), and a document in the query's own group is the query's own verse (or one of
its translations), which is dropped from that query's ranking when ``exclude_own_group``
is set; like BEIR, a document whose id equals the query id is always dropped. Three tasks are built from the packaged Bible's held-out split:

- ``mlir``: queries in every language, one pool holding every language version of
  every pool verse; relevant = every language version of the verses the query
  cross-references.
- ``monolingual``: one benchmark per language, queries and pool in that language;
  relevant = the cross-referenced verses in that language.
- ``translation``: queries in every language over the mixed pool; relevant = the
  query verse's own translations (its own-language copy is the query and is excluded).

Two on-disk formats are read (and BEIR is written):

- BEIR: ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
  (``{"_id", "text"}``), ``qrels/test.tsv`` (header, then ``query-id corpus-id score``);
  extra ``lang`` / ``group`` fields are kept.
- The MIMO release (``yjoonjang/mlir-benchmarks``, e.g. ``MMLIR/Belebele_test``):
  ``queries.jsonl`` (``{"_id", "text", "lang"}``), ``corpus.jsonl`` (one
  ``{doc_id: {"text", "lang"}}`` object per line), ``qrels.jsonl``
  (``{query_id: {doc_id: relevance}}`` per line).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import MimoInputError
from .fileio import atomic_dir

log = logging.getLogger(__name__)

TASKS = ("mlir", "monolingual", "translation")
_INT_RE = re.compile(r" *-?[0-9]+ *")  # a qrels score (ASCII digits only: int("²") fails)


@dataclass
class Benchmark:
    """One retrieval benchmark held in memory."""

    name: str  # "mlir", "monolingual-de", a user folder's name, ...
    task: str  # one of TASKS
    corpus: dict[str, dict]  # doc id -> {"text", "lang"?, "group"?}
    queries: dict[str, dict]  # query id -> {"text", "lang"?, "group"?}
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    exclude_own_group: bool = False

    def summary(self) -> dict:
        langs = sorted({d.get("lang", "") for d in self.corpus.values()} - {""})
        return {"name": self.name, "task": self.task, "documents": len(self.corpus),
                "queries": len(self.queries), "qrels": sum(len(v) for v in self.qrels.values()),
                "languages": " ".join(langs)}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes of the Bible benchmarks: query verses, pool verses (each in every language)."""

    query_verses: int = 200
    pool_verses: int = 600
    translation_queries: int = 100
    seed: int = 13

    def __post_init__(self):
        for name in ("query_verses", "pool_verses", "translation_queries"):
            if getattr(self, name) < 1:
                raise MimoInputError(f"must be at least 1, got {getattr(self, name)}", source=name)


@dataclass(frozen=True)
class BenchmarkSet:
    """The handle an asset passes on: where the benchmarks are, and their sizes."""

    root: str
    names: tuple[str, ...]
    summaries: tuple[dict, ...] = field(default_factory=tuple)

    def load(self, name: str) -> Benchmark:
        return load_benchmark(Path(self.root) / name)


def build_bible_benchmarks(
    verses: Mapping[str, Mapping[str, str]],
    cross_refs: Iterable[tuple[str, str]],
    languages: Sequence[str],
    config: BenchmarkConfig = BenchmarkConfig(),
) -> list[Benchmark]:
    """Build the mlir, monolingual-<lang> and translation benchmarks from held-out verses.

    ``verses`` maps verse id -> {lang: text} with every language of ``languages`` (the
    corpus' eval split, see `corpus.verse_texts`); ``cross_refs`` are (from, to) verse
    ids. Query verses are sampled (seeded) among verses with a cross-reference to
    another held-out verse; the pool holds their targets, the query verses themselves,
    and seeded distractors up to exactly ``pool_verses``. A ``pool_verses`` below what the
    query verses and their targets need, or above the held-out verses there are, is a
    `MimoInputError` naming the bound.
    """
    rng = random.Random(config.seed)
    langs = list(dict.fromkeys(languages))
    targets: dict[str, list[str]] = {}
    for src, dst in cross_refs:
        if src in verses and dst in verses and src != dst:
            targets.setdefault(src, [])
            if dst not in targets[src]:
                targets[src].append(dst)
    if not targets:
        raise MimoInputError("no cross-reference joins two held-out verses; the eval split is too small",
                             source="benchmarks")
    candidates = sorted(targets)
    rng.shuffle(candidates)
    queries_v = sorted(candidates[:config.query_verses])
    pool_v = set(queries_v)
    for q in queries_v:
        pool_v.update(targets[q])
    n_needed = len(pool_v)
    if config.pool_verses < len(pool_v):
        raise MimoInputError(
            f"{config.pool_verses} verses cannot hold the {len(queries_v)} query verses and their cross-referenced "
            f"targets: the pool needs at least {len(pool_v)} verses ({2 * len(pool_v)} for as many distractors "
            f"as query and target verses); raise pool_verses or lower query_verses", source="pool_verses")
    rest = sorted(set(verses) - pool_v)
    if config.pool_verses > len(pool_v) + len(rest):
        raise MimoInputError(
            f"{config.pool_verses} verses exceed the {len(pool_v) + len(rest)} held-out verses available; "
            f"set pool_verses to at most {len(pool_v) + len(rest)} or hold out more verses (max_eval_verses)",
            source="pool_verses")
    rng.shuffle(rest)
    pool_v.update(rest[:config.pool_verses - len(pool_v)])
    pool_v = sorted(pool_v)
    log.info("benchmark pool: %d verses: %d query and target verses (%d query verses), %d distractors",
             len(pool_v), n_needed, len(queries_v), len(pool_v) - n_needed)

    def doc(v: str, lang: str) -> dict:
        return {"text": verses[v][lang], "lang": lang, "group": v}

    out = []
    corpus = {f"{v}:{lang}": doc(v, lang) for v in pool_v for lang in langs}
    queries = {f"{v}:{lang}": doc(v, lang) for v in queries_v for lang in langs}
    qrels = {f"{v}:{lang}": {f"{t}:{tl}": 1 for t in targets[v] for tl in langs}
             for v in queries_v for lang in langs}
    out.append(Benchmark("mlir", "mlir", corpus, queries, qrels, exclude_own_group=True))

    for lang in langs:
        out.append(Benchmark(
            f"monolingual-{lang}", "monolingual",
            {f"{v}:{lang}": doc(v, lang) for v in pool_v},
            {f"{v}:{lang}": doc(v, lang) for v in queries_v},
            {f"{v}:{lang}": {f"{t}:{lang}": 1 for t in targets[v]} for v in queries_v},
            exclude_own_group=True))

    trans_v = sorted(rng.sample(pool_v, min(config.translation_queries, len(pool_v))))
    t_queries = {f"{v}:{lang}": doc(v, lang) for v in trans_v for lang in langs}
    t_qrels = {f"{v}:{lang}": {f"{v}:{other}": 1 for other in langs if other != lang}
               for v in trans_v for lang in langs}
    # The query's own-language copy is in the pool under the query's own id: like BEIR,
    # the evaluation drops a document whose id equals the query id.
    out.append(Benchmark("translation", "translation", corpus, t_queries, t_qrels, exclude_own_group=False))
    for b in out:
        log.info("benchmark %s: %d documents, %d queries", b.name, len(b.corpus), len(b.queries))
    return out


def write_beir(bench: Benchmark, folder: str | Path) -> Path:
    """Write a benchmark as a BEIR folder (atomically), with ``lang``/``group`` fields kept."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for did, d in bench.corpus.items():
                f.write(json.dumps({"_id": did, "title": "", **d}, ensure_ascii=False) + "\n")
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
            for qid, q in bench.queries.items():
                f.write(json.dumps({"_id": qid, **q}, ensure_ascii=False) + "\n")
        (tmp / "qrels").mkdir()
        with open(tmp / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, rel in bench.qrels.items():
                for did, score in rel.items():
                    f.write(f"{qid}\t{did}\t{score}\n")
        (tmp / "benchmark.json").write_text(json.dumps(
            {"name": bench.name, "task": bench.task, "exclude_own_group": bench.exclude_own_group}) + "\n")
    return folder


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as e:  # JSONDecodeError, too many digits, too deep
                    raise MimoInputError(f"not valid JSON ({getattr(e, 'msg', e)}); each line must be one JSON object",
                                         source=str(path), row=lineno) from None
                if not isinstance(obj, dict):
                    raise MimoInputError("each line must be a JSON object", source=str(path), row=lineno)
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise MimoInputError(f"not UTF-8 text (byte {e.start}); re-save the file as UTF-8",
                             source=str(path)) from None


def _record(obj: dict, path: Path, lineno: int, *, id_key: str = "_id") -> tuple[str, dict]:
    if id_key not in obj or "text" not in obj:
        raise MimoInputError(f"missing {id_key!r} or 'text' (keys: {sorted(obj)})", source=str(path), row=lineno)
    text = obj["text"]
    if not isinstance(text, str):
        raise MimoInputError("'text' must be a string", source=str(path), row=lineno)
    title = obj.get("title") or ""
    rec = {"text": f"{title} {text}".strip() if title else text}
    for k in ("lang", "group"):
        if obj.get(k) is not None:
            rec[k] = str(obj[k])
    return str(obj[id_key]), rec


def load_benchmark(folder: str | Path, *, name: str | None = None, task: str | None = None) -> Benchmark:
    """Read a BEIR folder or a MIMO-release folder; validate that qrels point to known ids."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MimoInputError("not a folder; a benchmark folder holds corpus.jsonl, queries.jsonl and "
                             "qrels/test.tsv (BEIR) or qrels.jsonl (MIMO release)", source=str(folder))
    meta_path = folder / "benchmark.json"
    meta = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise MimoInputError(f"not valid JSON ({e}); fix it or delete it (it only names the benchmark "
                                 f"and its task)", source=str(meta_path)) from None
        if not isinstance(meta, dict):
            raise MimoInputError("must be a JSON object such as {\"name\": ..., \"task\": \"mlir\"}; fix it or "
                                 "delete it", source=str(meta_path))
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / required).exists():
            raise MimoInputError(f"missing {required}", source=str(folder))

    corpus: dict[str, dict] = {}
    for lineno, obj in _read_jsonl(folder / "corpus.jsonl"):
        if "_id" in obj:
            did, rec = _record(obj, folder / "corpus.jsonl", lineno)
            corpus[did] = rec
        else:  # MIMO release: {doc_id: {"text", "lang"}}
            for did, d in obj.items():
                if not isinstance(d, dict):
                    raise MimoInputError(f"document {did!r} must map to an object with 'text'",
                                         source=str(folder / "corpus.jsonl"), row=lineno)
                _, rec = _record({"_id": did, **d}, folder / "corpus.jsonl", lineno)
                corpus[str(did)] = rec
    queries = dict(_record(obj, folder / "queries.jsonl", lineno)
                   for lineno, obj in _read_jsonl(folder / "queries.jsonl"))

    qrels: dict[str, dict[str, int]] = {}
    tsv, jsonl = folder / "qrels" / "test.tsv", folder / "qrels.jsonl"
    if tsv.exists():
        try:
            lines = tsv.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        except UnicodeDecodeError as e:
            raise MimoInputError(f"not UTF-8 text (byte {e.start}); re-save the file as UTF-8",
                                 source=str(tsv)) from None
        if lines[-1] == "":
            lines.pop()  # the file's final newline
        for lineno, line in enumerate(lines, 1):
            parts = line.split("\t")
            if lineno == 1 and not _INT_RE.fullmatch(parts[-1]):
                continue  # header
            if len(parts) != 3 or not _INT_RE.fullmatch(parts[2]):
                raise MimoInputError(f"expected 'query-id<TAB>corpus-id<TAB>integer score', got {line[:80]!r}",
                                     source=str(tsv), row=lineno)
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
        qrels_src = tsv
    elif jsonl.exists():
        for lineno, obj in _read_jsonl(jsonl):
            for qid, rel in obj.items():
                if not isinstance(rel, dict):
                    raise MimoInputError(f"query {qid!r} must map to {{doc_id: relevance}}", source=str(jsonl),
                                         row=lineno)
                for d, s in rel.items():
                    try:
                        qrels.setdefault(str(qid), {})[str(d)] = int(s)
                    except (TypeError, ValueError, OverflowError):
                        raise MimoInputError(f"query {qid!r}: relevance of document {d!r} is {s!r}, not an "
                                             f"integer; use 0, 1, 2...", source=str(jsonl), row=lineno) from None
        qrels_src = jsonl
    else:
        raise MimoInputError("missing qrels/test.tsv (BEIR) or qrels.jsonl (MIMO release)", source=str(folder))

    for qid, rel in qrels.items():
        if qid not in queries:
            raise MimoInputError(f"qrels name query {qid!r}, which is not in queries.jsonl; add the query or "
                                 f"drop its qrels", source=str(qrels_src))
        missing = [d for d in rel if d not in corpus]
        if missing:
            raise MimoInputError(f"qrels of query {qid!r} point to {len(missing)} document(s) missing from "
                                 f"corpus.jsonl, e.g. {missing[0]!r}; fix the ids or add the documents",
                                 source=str(qrels_src))
    task = task or meta.get("task") or "mlir"
    if task not in TASKS:
        raise MimoInputError(f"unknown task {task!r}; use one of {TASKS}", source=str(folder))
    return Benchmark(name or meta.get("name") or folder.name, task, corpus, queries,
                     {q: r for q, r in qrels.items() if any(s > 0 for s in r.values())},
                     exclude_own_group=bool(meta.get("exclude_own_group", False)))


def build_benchmark_set(
    corpus_path: str | Path,
    languages: Sequence[str],
    out_root: str | Path,
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    cross_refs: Iterable[tuple[str, str]] | None = None,
    user_folders: Sequence[str | Path] = (),
) -> BenchmarkSet:
    """Build the Bible benchmarks from the corpus' eval split into ``out_root/<hash>/`` once.

    ``user_folders`` (BEIR or MIMO-release folders) are validated and added by path.
    """
    import hashlib
    from dataclasses import asdict

    from .bible import read_cross_references
    from .corpus import verse_texts

    langs = ["en", *[lang for lang in languages if lang != "en"]]
    key = hashlib.sha256(json.dumps([str(corpus_path), langs, asdict(config)]).encode()).hexdigest()[:16]
    root = Path(out_root) / key
    names = ["mlir", *[f"monolingual-{lang}" for lang in langs], "translation"]
    if not all((root / n / "benchmark.json").exists() for n in names):
        verses = verse_texts(corpus_path, "eval")
        verses = {v: {lang: t[lang] for lang in langs} for v, t in verses.items()}
        refs = read_cross_references() if cross_refs is None else cross_refs
        for bench in build_bible_benchmarks(verses, refs, langs, config):
            write_beir(bench, root / bench.name)
    else:
        log.info("benchmarks already built in %s", root)
    summaries = [load_benchmark(root / n).summary() for n in names]
    user_names = []
    for folder in user_folders:
        bench = load_benchmark(folder)
        summaries.append(bench.summary())
        user_names.append(str(Path(folder).resolve()))
    return BenchmarkSet(str(root), tuple(names + user_names), tuple(summaries))
