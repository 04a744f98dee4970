"""Held-out retrieval benchmarks in BEIR form, built from the New Testament or read from disk.

A benchmark is a corpus, queries and qrels. Each document and query may carry a
``lang`` (ISO 639-1) and a ``group``: parallel queries share a group (what MRC@10
compares), and a document in the query's own group is the query's own verse (or one of
its translations), which is dropped from that query's ranking when ``exclude_own_group``
is set; like BEIR, a document whose id equals the query id is always dropped. Three tasks
are built from the corpus' ``eval`` split (the New Testament: test only), and the same
three, smaller (`BenchmarkConfig.dev_sizes`: a quarter of the sizes by default), from its
``dev`` split, named with a ``dev-`` prefix (``dev-mlir``, ``dev-monolingual-<lang>``,
``dev-translation``) for choosing method settings without touching the test side:

- ``mlir``: queries in every language, one pool holding every language version of
  every pool verse; relevant = every language version of the verses the query
  cross-references.
- ``monolingual``: one benchmark per language, queries and pool in that language;
  relevant = the cross-referenced verses in that language.
- ``translation``: queries in every language over the mixed pool; relevant = the
  query verse's own translations (its own-language copy is the query and is excluded).

``mlir`` and ``monolingual`` follow the packaged Bible's cross-references. With a user
corpus nothing reads the Bible: those two are skipped (said in `BenchmarkSet.notes`) unless
asked for (``bible_benchmarks=True``, for a corpus whose ``verse_id`` values are Bible ids),
and ``translation`` / ``dev-translation``, which need only parallel text, are built from the
corpus' eval and dev verses with whatever languages each verse has
(`build_translation_benchmark`). User BEIR / MIMO-release folders are added as they are.

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
from dataclasses import dataclass, field, replace
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


#: Name prefix of the benchmarks built from the dev split.
DEV_PREFIX = "dev-"
#: Dev benchmarks are this many times smaller than the test ones unless sized explicitly.
DEV_SHARE = 4


@dataclass(frozen=True)
class BenchmarkConfig:
    """Sizes of the Bible benchmarks: query verses, pool verses (each in every language).

    ``dev_*`` size the ``dev-`` benchmarks (None: a quarter of the test size, rounded
    up). ``bible_benchmarks``: build ``mlir``/``monolingual`` from the packaged Bible's
    cross-references (None: for the packaged Bible yes, for a user corpus no). ``dev``:
    build the ``dev-`` benchmarks when the corpus has a dev split. ``fit_pool``: a
    translation pool larger than its split takes the whole split (`BenchmarkSet.notes` says
    so) instead of failing; the ``mlir_benchmarks`` asset sets it when nobody chose the pool
    sizes (they are the profile's, sized for the Bible, and a user corpus is any size)."""

    query_verses: int = 200
    pool_verses: int = 600
    translation_queries: int = 100
    seed: int = 13
    dev_query_verses: int | None = None
    dev_pool_verses: int | None = None
    dev_translation_queries: int | None = None
    bible_benchmarks: bool | None = None
    dev: bool = True
    fit_pool: bool = False

    def __post_init__(self):
        for name in ("query_verses", "pool_verses", "translation_queries", "dev_query_verses", "dev_pool_verses",
                     "dev_translation_queries"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MimoInputError(f"must be at least 1, got {v}", source=name)

    def dev_sizes(self) -> "BenchmarkConfig":
        """The sizes of the ``dev-`` benchmarks, as a config of their own."""
        def share(v: int | None, test: int) -> int:
            return v if v is not None else -(-test // DEV_SHARE)

        return replace(self, query_verses=share(self.dev_query_verses, self.query_verses),
                       pool_verses=share(self.dev_pool_verses, self.pool_verses),
                       translation_queries=share(self.dev_translation_queries, self.translation_queries))


@dataclass(frozen=True)
class BenchmarkSet:
    """The handle an asset passes on: where the benchmarks are, and their sizes.

    ``names``: the test benchmarks, then the ``dev-`` ones, then user folders (by path).
    ``notes``: what was skipped and why, for the asset's log and metadata."""

    root: str
    names: tuple[str, ...]
    summaries: tuple[dict, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()

    def load(self, name: str) -> Benchmark:
        return load_benchmark(Path(self.root) / name)

    @property
    def dev_names(self) -> tuple[str, ...]:
        """The benchmarks built from the dev split (for choosing settings; not results)."""
        return tuple(n for n in self.names if is_dev_benchmark(n))

    @property
    def test_names(self) -> tuple[str, ...]:
        """Every benchmark but the dev ones: the held-out test side and user folders."""
        return tuple(n for n in self.names if not is_dev_benchmark(n))


def is_dev_benchmark(name: str) -> bool:
    """Whether a benchmark name is one built from the dev split (``dev-`` prefix)."""
    return name.startswith(DEV_PREFIX)


def build_bible_benchmarks(
    verses: Mapping[str, Mapping[str, str]],
    cross_refs: Iterable[tuple[str, str]],
    languages: Sequence[str],
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    prefix: str = "",
    split: str = "eval",
) -> list[Benchmark]:
    """Build the mlir, monolingual-<lang> and translation benchmarks from held-out verses.

    Names get ``prefix`` (``"dev-"`` for the dev split); ``split`` only words the messages.

    ``verses`` maps verse id -> {lang: text} with every language of ``languages`` (the
    corpus' eval split, see `corpus.verse_texts`); ``cross_refs`` are (from, to) verse
    ids. Query verses are sampled (seeded) among verses with a cross-reference to
    another held-out verse; the pool holds their targets, the query verses themselves,
    and seeded distractors up to exactly ``pool_verses``. A ``pool_verses`` below what the
    query verses and their targets need, or above the held-out verses there are, is a
    `MimoInputError` naming the bound.
    """
    rng = random.Random(config.seed)
    setting = prefix.replace("-", "_")  # the config key prefix: "" or "dev_"
    langs = list(dict.fromkeys(languages))
    targets: dict[str, list[str]] = {}
    for src, dst in cross_refs:
        if src in verses and dst in verses and src != dst:
            targets.setdefault(src, [])
            if dst not in targets[src]:
                targets[src].append(dst)
    if not targets:
        sample = ", ".join(repr(v) for v in list(verses)[:3]) or "none"
        raise MimoInputError(
            f"no cross-reference of the packaged Bible joins two of the {len(verses)} {split} verses present in every "
            f"language (verse ids: {sample}); the cross-reference benchmarks (mlir, monolingual) need verse ids that "
            f"are Bible ids 'B.C.V'. For a corpus of your own, leave bible_benchmarks unset (translation is built "
            f"from the corpus) and bring benchmarks as user_folders", source="benchmarks")
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
            f"as query and target verses); raise {setting}pool_verses or lower {setting}query_verses",
            source=f"{setting}pool_verses")
    rest = sorted(set(verses) - pool_v)
    if config.pool_verses > len(pool_v) + len(rest):
        raise MimoInputError(
            f"{config.pool_verses} verses exceed the {len(pool_v) + len(rest)} {split} verses available; "
            f"set {setting}pool_verses to at most {len(pool_v) + len(rest)} or hold out more verses "
            f"(max_{split}_verses)", source=f"{setting}pool_verses")
    rng.shuffle(rest)
    pool_v.update(rest[:config.pool_verses - len(pool_v)])
    pool_v = sorted(pool_v)
    log.info("benchmark pool (%s): %d verses: %d query and target verses (%d query verses), %d distractors",
             split, len(pool_v), n_needed, len(queries_v), len(pool_v) - n_needed)

    def doc(v: str, lang: str) -> dict:
        return {"text": verses[v][lang], "lang": lang, "group": v}

    out = []
    corpus = {f"{v}:{lang}": doc(v, lang) for v in pool_v for lang in langs}
    queries = {f"{v}:{lang}": doc(v, lang) for v in queries_v for lang in langs}
    qrels = {f"{v}:{lang}": {f"{t}:{tl}": 1 for t in targets[v] for tl in langs}
             for v in queries_v for lang in langs}
    out.append(Benchmark(f"{prefix}mlir", "mlir", corpus, queries, qrels, exclude_own_group=True))

    for lang in langs:
        out.append(Benchmark(
            f"{prefix}monolingual-{lang}", "monolingual",
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
    out.append(Benchmark(f"{prefix}translation", "translation", corpus, t_queries, t_qrels, exclude_own_group=False))
    for b in out:
        log.info("benchmark %s: %d documents, %d queries", b.name, len(b.corpus), len(b.queries))
    return out


def build_translation_benchmark(
    verses: Mapping[str, Mapping[str, str]],
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    name: str = "translation",
    split: str = "eval",
) -> Benchmark:
    """The translation task from parallel text alone: a pool of ``pool_verses`` verses of
    the split (seeded), each in every language it has (``verses``: id -> {lang: text},
    English and at least one more); ``translation_queries`` of them queried in each of
    their languages; relevant = the verse's other language versions (its own-language
    copy is the query, dropped as in BEIR). A pool larger than the split is a
    `MimoInputError` naming the setting, or with ``config.fit_pool`` the whole split."""
    usable = {v: d for v, d in verses.items() if len(d) >= 2}
    setting = f"{'dev_' if is_dev_benchmark(name) else ''}pool_verses"
    if not usable:
        raise MimoInputError(f"the {split} split has no sentence in two languages; the translation benchmark needs "
                             f"parallel {split} rows", source="benchmarks")
    if config.pool_verses > len(usable) and not config.fit_pool:
        raise MimoInputError(
            f"{config.pool_verses} verses exceed the {len(usable)} {split} sentences of the corpus; set {setting} to at "
            f"most {len(usable)}, or hold out more sentences in the corpus' {split} split", source=setting)
    rng = random.Random(config.seed)
    pool_v = sorted(rng.sample(sorted(usable), min(config.pool_verses, len(usable))))
    query_v = sorted(rng.sample(pool_v, min(config.translation_queries, len(pool_v))))

    def doc(v: str, lang: str) -> dict:
        return {"text": usable[v][lang], "lang": lang, "group": v}

    corpus = {f"{v}:{lang}": doc(v, lang) for v in pool_v for lang in usable[v]}
    queries = {f"{v}:{lang}": doc(v, lang) for v in query_v for lang in usable[v]}
    qrels = {f"{v}:{lang}": {f"{v}:{other}": 1 for other in usable[v] if other != lang}
             for v in query_v for lang in usable[v]}
    log.info("benchmark %s: %d documents, %d queries (%s split)", name, len(corpus), len(queries), split)
    return Benchmark(name, "translation", corpus, queries, qrels, exclude_own_group=False)


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


#: Bumped when the benchmarks a config gives change (2: the dev split, user corpora).
BENCHMARKS_FORMAT = 2
MANIFEST = "benchmarks.json"


def build_benchmark_set(
    corpus_path: str | Path,
    languages: Sequence[str],
    out_root: str | Path,
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    cross_refs: Iterable[tuple[str, str]] | None = None,
    user_folders: Sequence[str | Path] = (),
    user_corpus: bool = False,
) -> BenchmarkSet:
    """Build the corpus' benchmarks into ``out_root/<hash>/`` once (see the module docstring).

    From the packaged Bible (``user_corpus=False``): mlir, monolingual-<lang> and
    translation from the eval split, the same with a ``dev-`` prefix from the dev split.
    From a user corpus: translation and dev-translation; mlir/monolingual only when
    ``config.bible_benchmarks`` is True (nothing reads the Bible otherwise). A split the
    corpus lacks is skipped with a note (`BenchmarkSet.notes`); ``user_folders`` (BEIR or
    MIMO-release folders) are validated and added by path.
    """
    import hashlib
    from dataclasses import asdict

    from .corpus import verse_texts
    from .fileio import write_json

    langs = ["en", *[lang for lang in languages if lang != "en"]]
    use_refs = config.bible_benchmarks if config.bible_benchmarks is not None else not user_corpus
    key = hashlib.sha256(json.dumps([str(corpus_path), langs, asdict(config), use_refs, user_corpus,
                                     BENCHMARKS_FORMAT]).encode()).hexdigest()[:16]
    root = Path(out_root) / key
    manifest = root / MANIFEST
    names: list[str] | None = None
    notes: list[str] = []
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
            names, notes = [str(n) for n in m["names"]], [str(n) for n in m["notes"]]
        except (OSError, ValueError, KeyError, TypeError):
            names = None
    if names is not None and all((root / n / "benchmark.json").exists() for n in names):
        log.info("benchmarks already built in %s", root)
    else:
        names, notes = [], []
        if not use_refs:
            notes.append("the Bible benchmarks (mlir, monolingual-<lang>) are skipped: the corpus is your own and "
                         "nothing reads the Bible; translation is built from the corpus (set bible_benchmarks: true "
                         "if its verse_id values are Bible ids 'B.C.V'; bring MLIR benchmarks as user_folders)")
            log.info(notes[-1])
        refs = None
        plan = [("eval", "", config)] + ([("dev", DEV_PREFIX, config.dev_sizes())] if config.dev else [])
        for split, prefix, cfg in plan:
            if use_refs:
                verses = verse_texts(corpus_path, split)
                verses = {v: {lang: t[lang] for lang in langs} for v, t in verses.items()}
            else:
                verses = verse_texts(corpus_path, split, complete=False)
            if not verses:
                note = (f"no {prefix or 'test '}benchmarks: the corpus has no {split} verses"
                        f"{' present in every language' if use_refs else ''}")
                notes.append(note)
                log.info(note)
                continue
            if use_refs:
                if refs is None:
                    from .bible import read_cross_references

                    refs = list(read_cross_references()) if cross_refs is None else list(cross_refs)
                benches = build_bible_benchmarks(verses, refs, langs, cfg, prefix=prefix, split=split)
            else:
                benches = [build_translation_benchmark(verses, cfg, name=f"{prefix}translation", split=split)]
                pool = len({d["group"] for d in benches[0].corpus.values()})
                if pool < cfg.pool_verses:
                    notes.append(f"{prefix}translation: the pool holds all {pool} {split} sentences in two languages "
                                 f"or more, fewer than the profile's {prefix.replace('-', '_')}pool_verses "
                                 f"{cfg.pool_verses}")
                    log.info(notes[-1])
            for bench in benches:
                write_beir(bench, root / bench.name)
                names.append(bench.name)
        write_json({"names": names, "notes": notes}, manifest)
    summaries = [load_benchmark(root / n).summary() for n in names]
    user_names = []
    for folder in user_folders:
        bench = load_benchmark(folder)
        summaries.append(bench.summary())
        user_names.append(str(Path(folder).resolve()))
    if not [n for n in names if not is_dev_benchmark(n)] and not user_names:
        raise MimoInputError("no benchmark to evaluate on: " + "; ".join(notes) + ". Give the corpus an eval split "
                             "or bring benchmarks as user_folders", source="benchmarks")
    return BenchmarkSet(str(root), tuple(names + user_names), tuple(summaries), tuple(notes))
