"""Benchmark building (Bible, on toy verses) and loading (BEIR and the MIMO release format)."""

import json

import pytest

from mimo_pipeline.benchmarks import (Benchmark, BenchmarkConfig, build_bible_benchmarks, load_benchmark,
                                      write_beir)
from mimo_pipeline.errors import MimoInputError

LANGS = ["en", "de"]
VERSES = {f"40.1.{i}": {"en": f"english verse {i}", "de": f"deutscher Vers {i}"} for i in range(1, 9)}
REFS = [("40.1.1", "40.1.2"), ("40.1.1", "40.1.3"), ("40.1.4", "40.1.5"), ("40.1.1", "99.9.9")]


def test_bible_benchmarks_relevance_follows_cross_references():
    benches = {b.name: b for b in build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 6, 3))}
    assert set(benches) == {"mlir", "monolingual-en", "monolingual-de", "translation"}
    mlir = benches["mlir"]
    # every language version of both cross-referenced verses is relevant, to queries in every language
    assert mlir.qrels["40.1.1:de"] == {"40.1.2:en": 1, "40.1.2:de": 1, "40.1.3:en": 1, "40.1.3:de": 1}
    assert mlir.exclude_own_group and len(mlir.corpus) == 6 * 2
    assert benches["monolingual-de"].qrels["40.1.4:de"] == {"40.1.5:de": 1}
    assert all(d["lang"] == "de" for d in benches["monolingual-de"].corpus.values())
    tr = benches["translation"]
    q = next(iter(tr.qrels))
    verse, lang = q.split(":")
    assert tr.qrels[q] == {f"{verse}:{other}": 1 for other in LANGS if other != lang}


def test_beir_round_trip(tmp_path):
    bench = build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 6, 3))[0]
    loaded = load_benchmark(write_beir(bench, tmp_path / "mlir"))
    assert (loaded.name, loaded.task, loaded.exclude_own_group) == ("mlir", "mlir", True)
    assert loaded.corpus == bench.corpus and loaded.queries == bench.queries and loaded.qrels == bench.qrels


def _write(folder, name, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def test_mimo_release_format(tmp_path):
    d = tmp_path / "Belebele_test"
    _write(d, "queries.jsonl", [{"_id": "q1", "text": "Wer?", "lang": "de"}])
    _write(d, "corpus.jsonl", [{"d1": {"text": "Er.", "lang": "de"}}, {"d2": {"text": "He.", "lang": "en"}}])
    _write(d, "qrels.jsonl", [{"q1": {"d1": 1, "d2": 1}}])
    b = load_benchmark(d)
    assert b.name == "Belebele_test" and b.task == "mlir"
    assert b.corpus["d2"] == {"text": "He.", "lang": "en"} and b.qrels == {"q1": {"d1": 1, "d2": 1}}


def test_plain_beir_with_title_and_header(tmp_path):
    d = tmp_path / "scifact"
    _write(d, "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "body"}])
    _write(d, "queries.jsonl", [{"_id": "q1", "text": "query"}])
    (d / "qrels").mkdir()
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\n")
    b = load_benchmark(d, task="monolingual")
    assert b.corpus["d1"]["text"] == "T body" and b.qrels == {"q1": {"d1": 2}} and b.task == "monolingual"


def test_qrels_pointing_to_missing_documents_are_named(tmp_path):
    d = tmp_path / "bad"
    _write(d, "corpus.jsonl", [{"_id": "d1", "text": "x"}])
    _write(d, "queries.jsonl", [{"_id": "q1", "text": "y"}])
    (d / "qrels").mkdir()
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td404\t1\n")
    with pytest.raises(MimoInputError, match=r"test.tsv.*query 'q1'.*missing from corpus.jsonl.*'d404'"):
        load_benchmark(d)


def test_broken_lines_name_file_and_row(tmp_path):
    d = tmp_path / "broken"
    _write(d, "queries.jsonl", [{"_id": "q1", "text": "y"}])
    (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{not json\n')
    with pytest.raises(MimoInputError, match=r"corpus.jsonl: row 2: not valid JSON"):
        load_benchmark(d)
    (d / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "\xff"}\n')
    with pytest.raises(MimoInputError, match="not UTF-8"):
        load_benchmark(d)
    with pytest.raises(MimoInputError, match="not a folder"):
        load_benchmark(tmp_path / "nowhere")


def test_a_pool_too_small_for_the_queries_and_targets_is_an_error():
    # 2 query verses (40.1.1 -> 2, 3; 40.1.4 -> 5) need 5 pool verses: 4 cannot hold them.
    with pytest.raises(MimoInputError, match=r"pool_verses: 4 verses cannot hold.*at least 5 verses"):
        build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 4, 3))
    exact = build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 5, 3))[0]
    assert len(exact.corpus) == 5 * 2  # no distractor, and nothing beyond what was asked


def test_a_pool_larger_than_the_held_out_verses_is_an_error():
    with pytest.raises(MimoInputError, match=r"pool_verses: 9 verses exceed the 8 held-out verses"):
        build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 9, 3))
    assert len(build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 8, 3))[0].corpus) == 8 * 2
