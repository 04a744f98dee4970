"""Stage-2 pairs from a user source: the mMARCO-parallel (wide) and long layouts, their errors,
the Bible left unread with a user corpus, and the teacher's texts."""

import csv
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimo_pipeline import bible, pairs
from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached
from mimo_pipeline.errors import MimoInputError
from mimo_pipeline.pairs import COLUMNS, PairsConfig, build_stage2_pairs, build_user_pairs, read_pairs
from mimo_pipeline.teacher import iter_teacher_texts

LANGS = ("en", "de", "dt", "zh")  # mMARCO's code for Dutch is "dt"


def wide_columns(n: int, langs=LANGS) -> dict[str, list[str]]:
    return {f"{side}_{lang}": [f"{side} {lang} number {i}." for i in range(n)]
            for lang in langs for side in ("query", "positive")}


def write_tsv(path, columns: dict[str, list]):
    names = list(columns)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, dialect="excel-tab")
        w.writerow(names)
        w.writerows(zip(*(columns[c] for c in names)))
    return path


def long_columns(n: int, langs=("en", "de", "fr")) -> dict[str, list[str]]:
    rows = [(f"p{i}", lang, f"query {lang} {i}.", f"passage {lang} {i}.") for i in range(n) for lang in langs]
    return {c: [r[k] for r in rows] for k, c in enumerate(("pair_id", "lang", "query", "passage"))}


def _error(config: PairsConfig, tmp_path) -> str:
    with pytest.raises(MimoInputError) as e:
        build_user_pairs(config, tmp_path / "out")
    return str(e.value)


# --------------------------------------------------------------------------- wide (mMARCO parallel)


def test_wide_datasets_folder_gives_the_pairs_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    cols = wide_columns(40)
    cols["query_zh"][3] = ""          # the official file has gaps: zh is absent from that row
    cols["positive_de"][5] = "   "
    datasets.Dataset.from_dict(cols).save_to_disk(str(tmp_path / "mmarco"))
    res = build_user_pairs(PairsConfig(source_path=str(tmp_path / "mmarco")), tmp_path / "out")
    table = pq.read_table(res.path)
    assert tuple(table.column_names) == COLUMNS and table.num_rows == res.n_pairs == 40
    assert res.layout == "wide" and res.rows_read == 40 and res.languages == ("de", "en", "nl", "zh")
    assert res.missing_by_lang == {"zh": 1, "de": 1} and res.dropped == {}
    rows = read_pairs(res.path)
    for i, r in enumerate(rows):
        assert r["q_verse"] == r["p_verse"] == f"r{i + 1}"            # the pair id: the 1-based data row
        assert r["lang_a"] != r["lang_b"]
        assert r["q_en"] == f"query en number {i}." and r["p_en"] == f"positive en number {i}."
        for side, key in (("q", "a"), ("q", "b"), ("p", "a"), ("p", "b"), ("p", "c")):
            lang = r[f"lang_{key}"]
            src = "dt" if lang == "nl" else lang
            assert r[f"{side}_{key}"] == f"{'query' if side == 'q' else 'positive'} {src} number {i}."
    assert "zh" not in {rows[3][k] for k in ("lang_a", "lang_b", "lang_c")}
    assert "de" not in {rows[5][k] for k in ("lang_a", "lang_b", "lang_c")}
    assert sum(res.pairs_by_lang_pair.values()) == 40
    # content-addressed: the same file and config reuse the folder
    again = build_user_pairs(PairsConfig(source_path=str(tmp_path / "mmarco")), tmp_path / "out")
    assert again == res and read_pairs(again.path) == rows


def test_wide_parquet_tsv_and_folder_agree(tmp_path):
    datasets = pytest.importorskip("datasets")
    cols = wide_columns(12)
    pq.write_table(pa.table(cols), tmp_path / "w.parquet")
    write_tsv(tmp_path / "w.tsv", cols)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(cols)}).save_to_disk(str(tmp_path / "dd"))
    got = [read_pairs(build_user_pairs(PairsConfig(source_path=str(tmp_path / name)), tmp_path / "out").path)
           for name in ("w.parquet", "w.tsv", "dd")]
    assert got[0] == got[1] == got[2]


def test_ordered_language_pairs_are_drawn_uniformly(tmp_path):
    n = 3000
    pq.write_table(pa.table(wide_columns(n, ("en", "de", "fr"))), tmp_path / "w.parquet")
    res = build_user_pairs(PairsConfig(source_path=str(tmp_path / "w.parquet"), seed=5), tmp_path / "out")
    counts = res.pairs_by_lang_pair
    assert set(counts) == {(a, b) for a in ("de", "en", "fr") for b in ("de", "en", "fr") if a != b}
    expected, sd = n / 6, (n * (1 / 6) * (5 / 6)) ** 0.5
    assert all(abs(k - expected) < 4 * sd for k in counts.values()), counts
    rows = read_pairs(res.path)
    c = Counter(r["lang_c"] for r in rows)
    assert all(abs(k - n / 3) < 4 * (n * 2 / 9) ** 0.5 for k in c.values()), c  # c uniform
    # LaKDA's passage language c is drawn independently of (a, b), as in the official cached_lakda.py: a
    # chi-square test of the 6 × 3 table of (a, b) against c; c = b on every row (the old draw) fails it.
    from scipy.stats import chi2_contingency

    def table(key):
        pairs, langs = sorted(counts), sorted(c)
        joint = Counter((r["lang_a"], r["lang_b"], key(r)) for r in rows)
        return np.array([[joint[(a, b, x)] for x in langs] for a, b in pairs])

    assert chi2_contingency(table(lambda r: r["lang_c"])).pvalue > 1e-3
    assert chi2_contingency(table(lambda r: r["lang_b"])).pvalue < 1e-6  # the test can tell dependence
    assert abs(sum(r["lang_c"] == r["lang_b"] for r in rows) / n - 1 / 3) < 0.05
    other = build_user_pairs(PairsConfig(source_path=str(tmp_path / "w.parquet"), seed=6), tmp_path / "out")
    assert read_pairs(other.path) != read_pairs(res.path)


def test_max_pairs_is_a_seeded_sample_and_languages_select(tmp_path):
    pq.write_table(pa.table(wide_columns(50)), tmp_path / "w.parquet")
    cfg = PairsConfig(source_path=str(tmp_path / "w.parquet"), max_pairs=7, languages=("nl",))
    res = build_user_pairs(cfg, tmp_path / "out")
    rows = read_pairs(res.path)
    assert res.n_pairs == 7 and res.dropped == {"max_pairs": 43} and res.languages == ("en", "nl")
    assert {r["lang_a"] for r in rows} | {r["lang_b"] for r in rows} <= {"en", "nl"}
    ids = [int(r["q_verse"][1:]) for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 7
    assert read_pairs(build_user_pairs(cfg, tmp_path / "out2").path) == rows   # seeded


def test_rows_with_english_only_are_dropped_and_counted(tmp_path):
    cols = wide_columns(6, ("en", "de"))
    cols["query_de"][2] = None
    pq.write_table(pa.table(cols), tmp_path / "w.parquet")
    res = build_user_pairs(PairsConfig(source_path=str(tmp_path / "w.parquet")), tmp_path / "out")
    assert res.n_pairs == 5 and res.dropped == {"no_translation": 1} and res.missing_by_lang == {"de": 1}
    assert "r3" not in {r["q_verse"] for r in read_pairs(res.path)}


# --------------------------------------------------------------------------- long


def test_long_layout_in_three_containers_and_any_row_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    cols = long_columns(8)
    write_tsv(tmp_path / "l.tsv", cols)
    pq.write_table(pa.table(cols), tmp_path / "l.parquet")
    datasets.Dataset.from_dict(cols).save_to_disk(str(tmp_path / "lds"))
    order = np.argsort([f"{lang}{pid}" for pid, lang in zip(cols["pair_id"], cols["lang"])], kind="stable")
    write_tsv(tmp_path / "scattered.tsv", {c: [v[i] for i in order] for c, v in cols.items()})
    got = {}
    for name in ("l.tsv", "l.parquet", "lds", "scattered.tsv"):
        res = build_user_pairs(PairsConfig(source_path=str(tmp_path / name)), tmp_path / "out")
        assert res.layout == "long" and res.n_pairs == 8 and res.rows_read == 24
        got[name] = read_pairs(res.path)
    assert got["l.tsv"] == got["l.parquet"] == got["lds"]
    # scattered rows are grouped (in memory, with a warning): the same pairs, in order of first appearance
    assert sorted(got["scattered.tsv"], key=lambda r: r["q_verse"]) == sorted(got["l.tsv"], key=lambda r: r["q_verse"])
    r = got["l.tsv"][0]
    assert r["q_verse"] == r["p_verse"] == "p0" and r["q_en"] == "query en 0." and r["p_en"] == "passage en 0."


# --------------------------------------------------------------------------- errors


def test_wide_errors_name_file_column_row_and_remedy(tmp_path):
    cols = wide_columns(3)
    del cols["query_en"], cols["positive_en"]
    pq.write_table(pa.table(cols), tmp_path / "noen.parquet")
    msg = _error(PairsConfig(source_path=str(tmp_path / "noen.parquet")), tmp_path)
    assert "noen.parquet: no English columns query_en and positive_en" in msg and "add them" in msg

    cols = wide_columns(3)
    del cols["positive_zh"]
    pq.write_table(pa.table(cols), tmp_path / "half.parquet")
    msg = _error(PairsConfig(source_path=str(tmp_path / "half.parquet")), tmp_path)
    assert "column query_zh has no positive_zh" in msg

    cols = wide_columns(3)
    cols["query_xx"], cols["positive_xx"] = cols["query_de"], cols["positive_de"]
    pq.write_table(pa.table(cols), tmp_path / "xx.parquet")
    msg = _error(PairsConfig(source_path=str(tmp_path / "xx.parquet")), tmp_path)
    assert "xx.parquet: column query_xx: unknown language code 'xx'" in msg

    cols = wide_columns(3)
    cols["query_nl"], cols["positive_nl"] = cols["query_dt"], cols["positive_dt"]
    pq.write_table(pa.table(cols), tmp_path / "both.parquet")
    assert "are both language 'nl'" in _error(PairsConfig(source_path=str(tmp_path / "both.parquet")), tmp_path)

    cols = wide_columns(4)
    cols["positive_en"][2] = ""
    write_tsv(tmp_path / "w.tsv", cols)
    msg = _error(PairsConfig(source_path=str(tmp_path / "w.tsv")), tmp_path)
    assert msg.startswith(f"{tmp_path / 'w.tsv'}: row 3: empty English passage (positive_en)")
    assert "fill it in or delete the row" in msg

    cols = wide_columns(2)
    cols["query_de"] = [1, 2]
    pq.write_table(pa.table(cols), tmp_path / "int.parquet")
    assert "row 1: column query_de holds int 1, not text" in _error(
        PairsConfig(source_path=str(tmp_path / "int.parquet")), tmp_path)

    pq.write_table(pa.table({"question": ["a"], "answer": ["b"]}), tmp_path / "other.parquet")
    msg = _error(PairsConfig(source_path=str(tmp_path / "other.parquet")), tmp_path)
    assert "not a pairs file: found columns question, answer" in msg and "pair_id, lang, query, passage" in msg

    pq.write_table(pa.table(wide_columns(2)), tmp_path / "w2.parquet")
    msg = _error(PairsConfig(source_path=str(tmp_path / "w2.parquet"), languages=("ko",)), tmp_path)
    assert "languages ko have no query_<lang>/positive_<lang> columns" in msg
    assert "no such file or folder" in _error(PairsConfig(source_path=str(tmp_path / "missing")), tmp_path)


def test_long_errors_name_file_row_and_remedy(tmp_path):
    cols = long_columns(3)
    cols["lang"][5] = "de"                                   # p1 has two de rows (rows 5 and 6)
    write_tsv(tmp_path / "dup.tsv", cols)
    msg = _error(PairsConfig(source_path=str(tmp_path / "dup.tsv")), tmp_path)
    assert "dup.tsv: row 6: pair_id 'p1' has two rows for language 'de' (rows 5 and 6)" in msg

    cols = long_columns(3)
    cols["lang"][3] = "fr"                                   # p1's en row is now a second fr row
    cols["lang"][5] = "de"
    cols["lang"][4] = "es"
    write_tsv(tmp_path / "noen.tsv", cols)
    msg = _error(PairsConfig(source_path=str(tmp_path / "noen.tsv")), tmp_path)
    assert "noen.tsv: row 4: pair_id 'p1' has no English row (lang en)" in msg and "add its en row" in msg

    cols = long_columns(2)
    cols["passage"][1] = " "
    write_tsv(tmp_path / "empty.tsv", cols)
    msg = _error(PairsConfig(source_path=str(tmp_path / "empty.tsv")), tmp_path)
    assert "empty.tsv: row 2: empty passage (column passage); fill it in or delete the row" in msg

    cols = long_columns(2)
    cols["lang"][2] = "french"
    write_tsv(tmp_path / "lang.tsv", cols)
    assert "lang.tsv: row 3: ill-formed language code 'french'" in _error(
        PairsConfig(source_path=str(tmp_path / "lang.tsv")), tmp_path)


def test_a_user_corpus_without_pairs_never_reads_the_bible(tmp_path, monkeypatch):
    from tests.test_corpus import _rows, _write_tsv

    src = _write_tsv(tmp_path / "c.tsv", ["en", "text", "lang"], _rows())
    corpus = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "corpus")

    def no_bible(*a, **k):
        raise AssertionError("the Bible was read")

    monkeypatch.setattr(bible, "read_cross_references", no_bible)
    monkeypatch.setattr(bible, "bible_db_path", no_bible)
    with pytest.raises(MimoInputError) as e:
        build_stage2_pairs(corpus, tmp_path / "pairs", PairsConfig())
    msg = str(e.value)
    assert msg.startswith("retrieval_pairs: source_path: the parallel corpus is your own")
    assert "query_<lang> and positive_<lang>" in msg and "bible_cross_references: true" in msg
    pq.write_table(pa.table(wide_columns(5)), tmp_path / "w.parquet")
    res = build_stage2_pairs(corpus, tmp_path / "pairs", PairsConfig(source_path=str(tmp_path / "w.parquet")))
    assert res.n_pairs == 5


def test_bible_pairs_come_from_train_only_and_missing_links_are_named(tmp_path):
    corpus = build_parallel_corpus_cached(
        CorpusConfig(languages=("de",), max_train_verses=200, max_dev_verses=100, max_eval_verses=100),
        tmp_path / "corpus")
    res = build_stage2_pairs(corpus, tmp_path / "pairs", PairsConfig())
    books = {int(r[k].split(".")[0]) for r in read_pairs(res.path) for k in ("q_verse", "p_verse")}
    assert books and books <= set(range(1, 40)) - set(bible.DEV_BOOKS)
    with pytest.raises(MimoInputError) as e:
        pairs.make_pairs({"u1": {"en": "a", "de": "b"}}, [("1.1.1", "1.1.2")], ["de"])
    assert "no cross-reference of the packaged Bible joins two of the 1 training verses" in str(e.value)
    assert "'u1'" in str(e.value) and "too small" not in str(e.value)


def test_teacher_texts_cover_train_dev_and_the_pairs_english_once(tmp_path):
    rows = [(f"v{i}", s, f"English sentence {i} is here.", f"Deutscher Satz {i} ist hier.", "de")
            for i, s in enumerate(["train"] * 5 + ["dev"] * 2 + ["eval"] * 3)]
    from tests.test_corpus import _write_tsv

    src = _write_tsv(tmp_path / "c.tsv", ["verse_id", "split", "en", "text", "lang"], rows)
    corpus = build_parallel_corpus_cached(CorpusConfig(source_path=str(src)), tmp_path / "corpus")
    cols = wide_columns(3, ("en", "de"))
    cols["query_en"][0] = "English sentence 0 is here."            # already in the corpus: once
    pq.write_table(pa.table(cols), tmp_path / "w.parquet")
    p = build_user_pairs(PairsConfig(source_path=str(tmp_path / "w.parquet")), tmp_path / "out")
    chunks = list(iter_teacher_texts(corpus.path, ("train", "dev"), p, batch_rows=2))
    texts = [t for c in chunks for t in c]
    assert len(chunks) > 1 and len(texts) == len(set(texts))
    assert set(texts) == {f"English sentence {i} is here." for i in range(7)} | set(cols["query_en"]) | \
        set(cols["positive_en"])
    assert not {f"English sentence {i} is here." for i in (7, 8, 9)} & set(texts)   # eval: test only
    meta = json.loads((tmp_path / "out" / p.path.split("/")[-2] / "pairs.json").read_text())
    assert meta["layout"] == "wide" and meta["n_pairs"] == 3
