"""Fuzzing the parsers of user files with hypothesis.

Property: on any input, `corpus.load_user_corpus`, `pairs.build_user_pairs` (both pairs
layouts), `benchmarks.load_benchmark` and `e5s1.read_e5s1` either return or raise one of the project's own errors
(`errors.MimoError`, e.g. `MimoInputError`), never a bare IndexError, KeyError,
struct.error, UnicodeDecodeError, ValueError from deep inside.

Each test writes its files into a fresh `tempfile` folder (hypothesis runs the body
many times per pytest call, so function-scoped fixtures like tmp_path are not used).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mimo_pipeline.benchmarks import load_benchmark
from mimo_pipeline.corpus import load_user_corpus
from mimo_pipeline.e5s1 import E5S1Config, read_e5s1, write_e5s1
from mimo_pipeline.errors import MimoError
from mimo_pipeline.pairs import PairsConfig, PairsResult, build_user_pairs, read_pairs

# Deterministic in CI (the same 150 examples per test); MIMO_FUZZ_EXAMPLES=5000 explores afresh.
_EXPLORE = os.environ.get("MIMO_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_EXPLORE or 150), derandomize=not _EXPLORE, deadline=None,
                suppress_health_check=list(HealthCheck), database=None)


def returns_or_mimo_error(fn, *args, **kwargs):
    """Call ``fn``; a MimoError is fine (and must carry a message), anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except MimoError as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return e


# --------------------------------------------------------------------------- user corpus

# Pieces that reach deep into the TSV reader: columns, languages, splits, quotes, separators.
TSV_TOKENS = st.sampled_from([
    "en", "text", "lang", "split", "verse_id", "note", "de", "fr", "zh", "xx", "EN", "deu", "en ",
    "train", "eval", "dev", "holdout", "v1", "v2", "1", "Hello there.", "Hallo da.", "你好。",
    "\t", "\t", "\t", "\n", "\n", "\r\n", "\r", '"', '""', ",", ";", " ", "", "\x00", "\ufeff", "\u00e9",
])
TSV_TEXT = st.one_of(
    st.lists(TSV_TOKENS, max_size=40).map("".join),
    st.text(max_size=200),
)


def _tsv_bytes():
    header = st.lists(st.sampled_from(["en", "text", "lang", "split", "verse_id", "x"]), min_size=0, max_size=6)
    return st.one_of(
        st.binary(max_size=300),
        TSV_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.tuples(header, st.lists(TSV_TEXT, max_size=6)).map(
            lambda hr: ("\t".join(hr[0]) + "\n" + "\n".join(hr[1])).encode("utf-8", "surrogatepass")),
        st.tuples(st.just("en\ttext\tlang\n"), TSV_TEXT, st.sampled_from(["utf-8", "latin-1", "utf-16"])).map(
            lambda t: t[0].encode() + t[1].encode(t[2], "replace")),
    )


@FUZZ
@given(data=_tsv_bytes(), suffix=st.sampled_from([".tsv", ".txt", ".parquet", ""]))
def test_user_corpus_tsv_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"corpus{suffix}"
        p.write_bytes(data)
        out = returns_or_mimo_error(load_user_corpus, p)
        if isinstance(out, pa.Table):
            assert out.num_rows > 0 and set(out.column("split").to_pylist()) <= {"train", "dev", "eval"}


_CELLS = {
    "string": st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["de", "fr", "xx", "en", "train", "eval",
                                                                         "Hello there.", ""])),
    "int64": st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
    "double": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    "bool": st.one_of(st.none(), st.booleans()),
    "binary": st.one_of(st.none(), st.binary(max_size=10)),
    "list": st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3)),
}
_ARROW = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_(),
          "binary": pa.binary(), "list": pa.list_(pa.string())}


@st.composite
def parquet_tables(draw):
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.sampled_from(["en", "text", "lang", "split", "verse_id", "other"]),
                          max_size=6, unique=True))
    cols = {}
    for name in names:
        kind = draw(st.sampled_from(list(_CELLS)) if draw(st.booleans()) else st.just("string"))
        cols[name] = pa.array(draw(st.lists(_CELLS[kind], min_size=n, max_size=n)), _ARROW[kind])
    return pa.table(cols) if cols else pa.table({"unrelated": pa.array([], pa.int64())})


def _mangle(path: Path, how: str, pos: int) -> None:
    """Damage a written file: ``truncate`` it at ``pos``, ``flip`` the byte at ``pos``, or ``none``."""
    if how == "none":
        return
    data = bytearray(path.read_bytes())
    i = pos % len(data)
    if how == "truncate":
        data = data[:i]
    else:
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@FUZZ
@given(table=parquet_tables(), mangle=st.sampled_from(["none", "truncate", "flip"]), pos=st.integers(0, 10**6))
def test_user_corpus_parquet(table, mangle, pos):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "corpus.parquet"
        pq.write_table(table, p)
        _mangle(p, mangle, pos)
        returns_or_mimo_error(load_user_corpus, p)


# --------------------------------------------------------------------------- user pairs

PAIR_COLUMNS = ["pair_id", "lang", "query", "passage", "query_en", "positive_en", "query_de", "positive_de",
                "query_dt", "positive_dt", "query_xx", "query_", "positive_EN", "other"]
PAIR_TOKENS = st.sampled_from([
    *PAIR_COLUMNS, "en", "de", "dt", "nl", "xx", "EN", "p1", "p2", "1", "What is it?", "It is a thing.",
    "Was ist es?", "Es ist ein Ding.", "\t", "\t", "\t", "\n", "\n", "\r\n", '"', " ", "", "\x00", "\ufeff",
])


def _pairs_tsv_bytes():
    header = st.lists(st.sampled_from(PAIR_COLUMNS), min_size=0, max_size=6)
    cell = st.one_of(PAIR_TOKENS, st.text(max_size=12))
    return st.one_of(
        st.binary(max_size=300),
        st.lists(PAIR_TOKENS, max_size=40).map("".join).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.tuples(header, st.lists(st.lists(cell, max_size=6).map("\t".join), max_size=6)).map(
            lambda hr: ("\t".join(hr[0]) + "\n" + "\n".join(hr[1])).encode("utf-8", "surrogatepass")),
    )


def _check_pairs(out):
    if isinstance(out, PairsResult):
        rows = read_pairs(out.path)
        assert len(rows) == out.n_pairs > 0
        assert all(r["lang_a"] != r["lang_b"] and r["q_en"] and r["p_en"] and r["q_a"] and r["p_b"] for r in rows)


@FUZZ
@given(data=_pairs_tsv_bytes(), max_pairs=st.one_of(st.none(), st.integers(1, 3)))
def test_user_pairs_tsv_bytes(data, max_pairs):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "pairs.tsv"
        p.write_bytes(data)
        _check_pairs(returns_or_mimo_error(build_user_pairs, PairsConfig(source_path=str(p), max_pairs=max_pairs),
                                           Path(d) / "out"))


@st.composite
def pair_tables(draw):
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.sampled_from(PAIR_COLUMNS), max_size=8, unique=True))
    cols = {}
    for name in names:
        kind = draw(st.sampled_from(list(_CELLS)) if draw(st.booleans()) else st.just("string"))
        cells = st.one_of(_CELLS[kind], PAIR_TOKENS) if kind == "string" else _CELLS[kind]
        cols[name] = pa.array(draw(st.lists(cells, min_size=n, max_size=n)), _ARROW[kind])
    return pa.table(cols) if cols else pa.table({"unrelated": pa.array([], pa.int64())})


@FUZZ
@given(table=pair_tables(), mangle=st.sampled_from(["none", "none", "truncate", "flip"]), pos=st.integers(0, 10**6))
def test_user_pairs_parquet(table, mangle, pos):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "pairs.parquet"
        pq.write_table(table, p)
        _mangle(p, mangle, pos)
        _check_pairs(returns_or_mimo_error(build_user_pairs, PairsConfig(source_path=str(p)), Path(d) / "out"))


def test_user_pairs_accept_valid_files():
    """The pairs fuzz property is not vacuous: well-formed wide and long files give pairs."""
    with tempfile.TemporaryDirectory() as d:
        wide = Path(d) / "w.tsv"
        wide.write_text("query_en\tpositive_en\tquery_dt\tpositive_dt\nWhat?\tThat.\tWat?\tDat.\n")
        out = build_user_pairs(PairsConfig(source_path=str(wide)), Path(d) / "out")
        assert out.n_pairs == 1 and out.languages == ("en", "nl")
        long = Path(d) / "l.tsv"
        long.write_text("pair_id\tlang\tquery\tpassage\np1\ten\tWhat?\tThat.\np1\tde\tWas?\tDas.\n")
        assert build_user_pairs(PairsConfig(source_path=str(long)), Path(d) / "out").n_pairs == 1


# --------------------------------------------------------------------------- benchmarks

IDS = st.sampled_from(["d1", "d2", "q1", "q2", "", "0", "1", "x y"])
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8), IDS),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.one_of(IDS, st.sampled_from(["_id", "text", "title", "lang",
                                                                                "group"])), children, max_size=4)),
    max_leaves=10)
DOC = st.fixed_dictionaries({"_id": st.one_of(IDS, JSON_VALUES), "text": st.one_of(st.text(max_size=10), JSON_VALUES)},
                            optional={"title": JSON_VALUES, "lang": JSON_VALUES, "group": JSON_VALUES})
RELEASE_DOC = st.dictionaries(IDS, st.one_of(st.fixed_dictionaries({"text": st.text(max_size=10)},
                                                                   optional={"lang": JSON_VALUES}), JSON_VALUES),
                              max_size=3)
JSONL_LINE = st.one_of(
    DOC.map(lambda o: json.dumps(o)),
    RELEASE_DOC.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=30),
    st.sampled_from(["", "{", "{}", "[]", "null", "{\"_id\": 1e999, \"text\": \"x\"}", "NaN", "9" * 5000]),
)
JSONL = st.lists(JSONL_LINE, max_size=5).map("\n".join)
QRELS_TSV = st.lists(st.one_of(
    st.tuples(IDS, IDS, st.one_of(st.integers(-2, 3).map(str), st.sampled_from(["²", "١", "1.5", "", "-", "x"])))
    .map("\t".join),
    st.text(max_size=20),
    st.just("query-id\tcorpus-id\tscore"),
), max_size=6).map("\n".join)
QRELS_JSONL = st.lists(st.one_of(
    st.dictionaries(IDS, st.dictionaries(IDS, st.one_of(st.integers(-2, 3), JSON_VALUES,
                                                        st.sampled_from([1e300, float("inf"), "2", "x"])),
                                         max_size=3), max_size=2).map(lambda o: json.dumps(o)),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=20),
), max_size=4).map("\n".join)


def _as_bytes(text_or_bytes):
    return text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode("utf-8", "surrogatepass")


@FUZZ
@given(corpus=st.one_of(JSONL, st.binary(max_size=60)), queries=st.one_of(JSONL, st.binary(max_size=60)),
       qrels_kind=st.sampled_from(["tsv", "jsonl", "none"]),
       qrels=st.one_of(QRELS_TSV, QRELS_JSONL, st.binary(max_size=60)),
       meta=st.one_of(st.none(), st.sampled_from(['{"task": "mlir"}', '{"task": "nope"}', "{", "[]", '"x"'])))
def test_load_benchmark(corpus, queries, qrels_kind, qrels, meta):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "bench"
        root.mkdir()
        (root / "corpus.jsonl").write_bytes(_as_bytes(corpus))
        (root / "queries.jsonl").write_bytes(_as_bytes(queries))
        if qrels_kind == "tsv":
            (root / "qrels").mkdir()
            (root / "qrels" / "test.tsv").write_bytes(_as_bytes(qrels))
        elif qrels_kind == "jsonl":
            (root / "qrels.jsonl").write_bytes(_as_bytes(qrels))
        if meta is not None:
            (root / "benchmark.json").write_text(meta)
        out = returns_or_mimo_error(load_benchmark, root)
        if not isinstance(out, MimoError):
            for qid, rel in out.qrels.items():  # what the loader promises
                assert qid in out.queries and all(did in out.corpus and isinstance(s, int) for did, s in rel.items())


def test_load_benchmark_accepts_a_valid_folder():
    """The fuzz property is not vacuous: a well-formed folder loads."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b", "lang": "de"}\n')
        (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a?"}\n')
        (root / "qrels.jsonl").write_text('{"q1": {"d1": 1, "d2": 0}}\n')
        b = load_benchmark(root)
        assert b.qrels == {"q1": {"d1": 1, "d2": 0}} and b.corpus["d2"]["lang"] == "de"


# --------------------------------------------------------------------------- E5S1


def _tiny_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cfg = E5S1Config(32, 1, 2, 32, 8, 4, 2, 1e-12)
    return {n: (0.2 * rng.standard_normal(s)).astype(np.float32) for n, s in cfg.expected_shapes().items()}


@pytest.fixture(scope="module")
def tiny_e5s1() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = write_e5s1(Path(d) / "tiny.bin", _tiny_tensors(), num_heads=2,
                       pieces=[("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0),
                               ("▁b", -2.0), ("c", -3.0), ("<mask>", 0.0)],
                       norm_map=b"\x00" * 10, n_norm=2)
        data = p.read_bytes()
        model = read_e5s1(p)  # the unmangled file reads
        assert model.pieces()[4] == "▁a" and len(model.tensors) == len(_tiny_tensors())
        return data


def _read_everything(path: Path):
    """Parse, then touch everything a reader would: pieces and every tensor."""
    model = read_e5s1(path)
    model.pieces()
    for name in model.tensors:
        arr = model.tensor(name)
        assert arr.shape == model.tensors[name].shape
    return model


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a flipped f16 scale may dequantise to inf/nan: not an error
@FUZZ
@given(data=st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=400).map(lambda b: b"E5S1" + struct.pack("<I", 1) + b),
    st.lists(st.integers(-3, 1 << 20), min_size=7, max_size=7).map(
        lambda dims: b"E5S1" + struct.pack("<I7ifi", 1, *dims, 1e-12, 32)),
))
def test_read_e5s1_random_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "model.bin"
        p.write_bytes(data)
        returns_or_mimo_error(_read_everything, p)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**7)), header_only=st.booleans())
def test_read_e5s1_flipped_or_truncated(tiny_e5s1, flips, cut, header_only):
    data = bytearray(tiny_e5s1)
    # most flips land in tensor data (harmless); half the examples aim at the header and directory
    span = min(len(data), 1200) if header_only else len(data)
    for pos, xor in flips:
        data[pos % span] ^= xor
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    assume(bytes(data) != tiny_e5s1)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "model.bin"
        p.write_bytes(bytes(data))
        returns_or_mimo_error(_read_everything, p)
