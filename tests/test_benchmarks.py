"""Benchmark building (Bible, on toy verses) and loading (BEIR and the MIMO release format)."""

import json

import pytest

from mimo_pipeline import bible
from mimo_pipeline.benchmarks import (Benchmark, BenchmarkConfig, BenchmarkSet, build_benchmark_set,
                                      build_bible_benchmarks, build_translation_benchmark, load_benchmark, write_beir)
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
    with pytest.raises(MimoInputError, match=r"pool_verses: 9 verses exceed the 8 eval verses"):
        build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 9, 3))
    assert len(build_bible_benchmarks(VERSES, REFS, LANGS, BenchmarkConfig(2, 8, 3))[0].corpus) == 8 * 2


# --------------------------------------------------------------------------- dev split, user corpora


def test_dev_sizes_are_a_quarter_unless_set():
    c = BenchmarkConfig(query_verses=80, pool_verses=750, translation_queries=40)
    d = c.dev_sizes()
    assert (d.query_verses, d.pool_verses, d.translation_queries) == (20, 188, 10)
    d = BenchmarkConfig(20, 100, 10, dev_pool_verses=30).dev_sizes()
    assert (d.query_verses, d.pool_verses, d.translation_queries) == (5, 30, 3)
    s = BenchmarkSet("/r", ("mlir", "translation", "dev-mlir", "dev-translation", "/data/beir"))
    assert s.dev_names == ("dev-mlir", "dev-translation") and s.test_names == ("mlir", "translation", "/data/beir")


def test_the_bible_gives_test_and_dev_benchmarks(tmp_path):
    from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached

    corpus = build_parallel_corpus_cached(
        CorpusConfig(languages=("de",), max_train_verses=50, max_dev_verses=120, max_eval_verses=120),
        tmp_path / "corpus")
    res = build_benchmark_set(corpus.path, corpus.languages, tmp_path / "b", BenchmarkConfig(8, 40, 5))
    assert res.names == ("mlir", "monolingual-en", "monolingual-de", "translation",
                         "dev-mlir", "dev-monolingual-en", "dev-monolingual-de", "dev-translation")
    sizes = {b["name"]: b for b in res.summaries}
    assert sizes["dev-mlir"]["queries"] == 2 * 2 and sizes["dev-mlir"]["documents"] == 10 * 2
    assert sizes["mlir"]["queries"] == 8 * 2 and sizes["mlir"]["documents"] == 40 * 2
    dev = res.load("dev-mlir")
    assert all(int(d.split(":")[0].split(".")[0]) in bible.DEV_BOOKS for d in dev.corpus)
    test = res.load("mlir")
    assert all(int(d.split(":")[0].split(".")[0]) >= 40 for d in test.corpus)
    again = build_benchmark_set(corpus.path, corpus.languages, tmp_path / "b", BenchmarkConfig(8, 40, 5))
    assert again.names == res.names and again.root == res.root


def _user_corpus(tmp_path, n=60, split_column=True):
    from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached
    from tests.test_corpus import _write_tsv

    rows = []
    for i in range(n):
        split = "train" if i < n // 2 else ("validation" if i < 3 * n // 4 else "test")
        for lang, word in (("de", "Satz"), ("fr", "phrase")):
            if lang == "fr" and i % 3 == 0:
                continue                              # not every sentence in every language
            rows.append((f"s{i}", split, f"English sentence number {i} here.", f"{word} nummer {i} hier.", lang))
    src = _write_tsv(tmp_path / "c.tsv", ["verse_id", "split", "en", "text", "lang"], rows)
    return build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "corpus")


def test_a_user_corpus_gets_translation_from_its_splits_and_never_reads_the_bible(tmp_path, monkeypatch):
    corpus = _user_corpus(tmp_path)

    def no_bible(*a, **k):
        raise AssertionError("the Bible was read")

    monkeypatch.setattr(bible, "read_cross_references", no_bible)
    monkeypatch.setattr(bible, "bible_db_path", no_bible)
    beir = tmp_path / "mine"
    write_beir(Benchmark("mine", "mlir", {"d1": {"text": "x", "lang": "de"}}, {"q1": {"text": "y", "lang": "en"}},
                         {"q1": {"d1": 1}}), beir)
    res = build_benchmark_set(corpus.path, corpus.languages, tmp_path / "b", BenchmarkConfig(5, 12, 4),
                              user_folders=[beir], user_corpus=True)
    assert res.names == ("translation", "dev-translation", str(beir.resolve()))
    assert "the Bible benchmarks (mlir, monolingual-<lang>) are skipped" in res.notes[0]
    tr = res.load("translation")
    assert {d.split(":")[0] for d in tr.corpus} <= {f"s{i}" for i in range(45, 60)}   # the eval split
    for q, rel in tr.qrels.items():
        v, lang = q.split(":")
        assert rel and all(d.split(":")[0] == v and d.split(":")[1] != lang for d in rel)
        assert all(d in tr.corpus for d in rel)
    dev = res.load("dev-translation")
    assert {d.split(":")[0] for d in dev.corpus} <= {f"s{i}" for i in range(30, 45)}
    assert len({d.split(":")[0] for d in dev.corpus}) == 3            # a quarter of 12


def test_cross_reference_benchmarks_on_a_user_corpus_name_the_cause(tmp_path):
    corpus = _user_corpus(tmp_path)
    with pytest.raises(MimoInputError) as e:
        build_benchmark_set(corpus.path, corpus.languages, tmp_path / "b",
                            BenchmarkConfig(5, 12, 4, bible_benchmarks=True), user_corpus=True)
    msg = str(e.value)
    assert "no cross-reference of the packaged Bible joins two of the" in msg and "Bible ids 'B.C.V'" in msg
    assert "too small" not in msg


def test_a_translation_pool_larger_than_the_split_names_the_setting():
    verses = {f"v{i}": {"en": f"e{i}", "de": f"d{i}"} for i in range(5)}
    with pytest.raises(MimoInputError, match=r"dev_pool_verses: 6 verses exceed the 5 dev sentences"):
        build_translation_benchmark(verses, BenchmarkConfig(1, 6, 2), name="dev-translation", split="dev")
    b = build_translation_benchmark(verses, BenchmarkConfig(1, 5, 2))
    assert len(b.corpus) == 10 and len(b.queries) == 4 and b.task == "translation"


def test_the_profiles_pool_size_shrinks_to_a_small_user_split_with_a_note(tmp_path):
    """Nobody chose the profile's pool sizes (sized for the Bible): on a user corpus whose eval
    split is smaller, the translation pool takes the whole split and a note says so."""
    corpus = _user_corpus(tmp_path)
    res = build_benchmark_set(corpus.path, corpus.languages, tmp_path / "b",
                              BenchmarkConfig(5, 1000, 4, fit_pool=True), user_corpus=True)
    assert {"translation", "dev-translation"} <= set(res.names)
    n_eval = len({d.split(":")[0] for d in res.load("translation").corpus})
    assert 0 < n_eval < 1000
    assert any(f"translation: the pool holds all {n_eval} eval sentences" in n and "pool_verses 1000" in n
               for n in res.notes), res.notes
    assert any("dev-translation: the pool holds all" in n and "dev_pool_verses 250" in n for n in res.notes)
