"""Faults a user meets: a corrupted Parquet file, a full disk, the MLflow UI open during a run.

(A user's DuckDB session holding ``mimo.duckdb`` is in tests/test_storage.py.)
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimo_pipeline import fileio
from mimo_pipeline.embedding_cache import EmbeddingCache, fill_cache, text_key
from mimo_pipeline.fileio import CorruptFileError, DiskFullError

DIM = 8


def _vec(texts: list[str]) -> np.ndarray:
    """A deterministic 'encoder': the same text always gets the same vector."""
    out = np.empty((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i] = np.random.default_rng(int(text_key(t)[:8], 16)).standard_normal(DIM)
    return out


class CountingEncoder:
    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, batch: list[str]) -> np.ndarray:
        self.seen += batch
        return _vec(batch)


TEXTS = [f"sentence number {i}" for i in range(30)]


def _filled(tmp_path) -> tuple[EmbeddingCache, list[Path]]:
    cache = EmbeddingCache(tmp_path / "cache", "fp", dim=DIM)
    fill_cache(cache, TEXTS, CountingEncoder(), chunk_size=10)
    shards = cache.shards()
    assert len(shards) == 3
    return cache, shards


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":  # a flipped byte inside a data page: only the page checksum sees it
        first_page = pq.ParquetFile(path).metadata.row_group(0).column(1).data_page_offset
        data[first_page + 40] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a parquet file at all")


def _shard_texts(shard: Path) -> set[str]:
    keys = set(pq.read_table(shard, columns=["text_hash"]).column(0).to_pylist())
    return {t for t in TEXTS if text_key(t) in keys}


# --------------------------------------------------------------------------- corruption heals


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage"])
def test_a_corrupt_cache_shard_is_moved_aside_and_only_its_texts_are_re_encoded(tmp_path, caplog, how):
    _, shards = _filled(tmp_path)
    lost = _shard_texts(shards[1])
    _corrupt(shards[1], how)
    caplog.set_level(logging.WARNING)

    cache = EmbeddingCache(tmp_path / "cache", "fp", dim=DIM)  # a later run opens the cache
    missing = cache.missing([text_key(t) for t in TEXTS])
    assert set(missing) == {text_key(t) for t in lost}
    aside = list(shards[1].parent.glob(f"{shards[1].name}.corrupt-*"))
    assert len(aside) == 1 and not shards[1].exists()
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert shards[1].name in warning and aside[0].name in warning and "re-encodes" in warning

    enc = CountingEncoder()
    report = fill_cache(cache, TEXTS, enc, chunk_size=10)
    assert set(enc.seen) == lost and report.misses == len(lost) == 10 and report.hits == 20
    np.testing.assert_array_equal(cache.get([text_key(t) for t in TEXTS]), _vec(TEXTS))
    enc2 = CountingEncoder()  # healed: a third run encodes nothing
    fill_cache(EmbeddingCache(tmp_path / "cache", "fp", dim=DIM), TEXTS, enc2)
    assert enc2.seen == []


def test_a_shard_damaged_after_indexing_fails_get_clearly_and_the_next_build_heals(tmp_path, caplog):
    cache, shards = _filled(tmp_path)
    keys = [text_key(t) for t in TEXTS]
    assert cache.missing(keys) == []  # indexed in this process
    lost = _shard_texts(shards[0])
    _corrupt(shards[0], "flip")
    caplog.set_level(logging.WARNING)
    with pytest.raises(KeyError, match="re-encoded by the next build"):
        cache.get(keys)
    assert list(shards[0].parent.glob(f"{shards[0].name}.corrupt-*"))
    enc = CountingEncoder()
    fill_cache(cache, TEXTS, enc, chunk_size=10)
    assert set(enc.seen) == lost
    np.testing.assert_array_equal(cache.get(keys), _vec(TEXTS))


def test_parquet_written_by_the_pipeline_carries_page_checksums(tmp_path):
    path = fileio.write_parquet(pa.table({"x": np.arange(50_000, dtype=np.int64)}), tmp_path / "a.parquet")
    _corrupt_first_page = bytearray(path.read_bytes())
    offset = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    _corrupt_first_page[offset + 60] ^= 0x01
    path.write_bytes(bytes(_corrupt_first_page))
    with pytest.raises(CorruptFileError, match="a.parquet"):
        fileio.read_parquet(path)
    assert fileio.check_parquet(path) is not None
    with pytest.raises(FileNotFoundError):
        fileio.read_parquet(tmp_path / "absent.parquet")
    good = fileio.write_parquet(pa.table({"x": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(Exception) as e:  # a column the file lacks is the caller's error, not corruption
        fileio.read_parquet(good, columns=["nope"])
    assert not isinstance(e.value, CorruptFileError)


def test_a_corrupt_corpus_is_moved_aside_and_rebuilt(tmp_path, caplog):
    from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached
    from tests.test_corpus import DE, EN, ZH, _write_tsv

    rows = [(EN[i], t, lang) for i in range(len(EN)) for lang, t in (("de", DE[i]), ("zh", ZH[i]))]
    src = _write_tsv(tmp_path / "pairs.tsv", ["en", "text", "lang"], rows)
    config = CorpusConfig(source_path=str(src))
    first = build_parallel_corpus_cached(config, tmp_path / "corpus")
    before = pq.read_table(first.path)
    _corrupt(Path(first.path), "truncate")
    caplog.set_level(logging.WARNING)
    again = build_parallel_corpus_cached(config, tmp_path / "corpus")
    assert again.path == first.path and pq.read_table(again.path).equals(before)
    folder = Path(first.path).parent
    assert len(list(folder.parent.glob(f"{folder.name}.corrupt-*"))) == 1
    assert any("rebuilt" in r.getMessage() and folder.name in r.getMessage() for r in caplog.records)


def test_corrupt_retrieval_pairs_are_moved_aside_and_rebuilt(tmp_path):
    from mimo_pipeline.pairs import build_retrieval_pairs, read_pairs

    verses = {f"v{i}": {"en": f"english {i}", "de": f"deutsch {i}", "fr": f"francais {i}"} for i in range(6)}
    refs = [("v0", "v1"), ("v2", "v3"), ("v4", "v5"), ("v1", "v4")]
    first = build_retrieval_pairs(verses, refs, ["de", "fr"], tmp_path / "pairs")
    rows = read_pairs(first.path)
    _corrupt(Path(first.path), "garbage")
    with pytest.raises(CorruptFileError):
        read_pairs(first.path)
    again = build_retrieval_pairs(verses, refs, ["de", "fr"], tmp_path / "pairs")
    assert read_pairs(again.path) == rows and again.pairs_by_lang_pair == first.pairs_by_lang_pair
    assert list(Path(first.path).parent.glob("pairs.parquet.corrupt-*"))


# --------------------------------------------------------------------------- a full disk


def _fill_then_fail(nbytes: int, message_only: bool = False):
    def write_table(table, where, **kwargs):
        Path(where).write_bytes(b"\0" * nbytes)  # the part that fit
        if message_only:  # how pyarrow reports it: errno only in the text
            raise OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
        raise OSError(errno.ENOSPC, "No space left on device")
    return write_table


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("message_only", [False, True])
def test_a_full_disk_fails_a_parquet_write_cleanly(tmp_path, monkeypatch, message_only):
    monkeypatch.setattr(fileio.pq, "write_table", _fill_then_fail(12_345, message_only))
    table = pa.table({"x": np.arange(100_000, dtype=np.float64)})
    with pytest.raises(DiskFullError) as e:
        fileio.write_parquet(table, tmp_path / "out" / "part.parquet")
    msg = str(e.value)
    assert str(tmp_path / "out") in msg and "800.0 KB" in msg and "12.3 KB were written" in msg
    assert " free on that file system" in msg and e.value.errno == errno.ENOSPC
    assert _leftovers(tmp_path / "out") == []  # no partial file, no temporary file


def test_a_full_disk_fails_json_and_folder_writes_cleanly(tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def full(self, text, *a, **k):
        real_write_text(self, text[:3], *a, **k)
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match=r"needed about \d+ B") as e:
        fileio.write_json({"a": "b" * 100}, tmp_path / "j" / "x.json")
    assert e.value.errno == errno.EDQUOT and _leftovers(tmp_path / "j") == []
    monkeypatch.undo()

    with pytest.raises(DiskFullError, match=str(tmp_path / "d")):
        with fileio.atomic_dir(tmp_path / "d" / "model") as tmp:
            (tmp / "weights.bin").write_bytes(b"1" * 5000)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _leftovers(tmp_path / "d") == []


def test_a_full_disk_loses_no_cache_shard_and_no_result_row(tmp_path, monkeypatch):
    from mimo_pipeline.storage import ResultsDB

    cache, _ = _filled(tmp_path)
    db = ResultsDB(tmp_path / "mimo.duckdb")
    db.append("au_metrics", [{"model": "mimo", "lang": "de", "metric": "alignment", "value": 0.1}])
    before = _leftovers(tmp_path)
    monkeypatch.setattr(fileio.pq, "write_table", _fill_then_fail(100))
    with pytest.raises(DiskFullError):
        cache.put(["k"], np.zeros((1, DIM), np.float32))
    with pytest.raises(DiskFullError):
        db.append("au_metrics", [{"model": "xlco", "lang": "de", "metric": "alignment", "value": 0.2}])
    monkeypatch.undo()
    assert _leftovers(tmp_path) == before
    assert db.query("SELECT model FROM au_metrics").model.tolist() == ["mimo"]
    assert EmbeddingCache(tmp_path / "cache", "fp", dim=DIM).missing([text_key(t) for t in TEXTS]) == []


# --------------------------------------------------------------------------- MLflow UI open during a run


def test_a_reader_holding_mlflow_db_open_costs_the_run_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    from mimo_pipeline.tracking import Tracker

    tracker = Tracker(str(tmp_path))
    tracker.experiment_id()  # the database exists, as when the UI is opened on it
    holding, release = threading.Event(), threading.Event()

    def reader():  # what a UI does between two page loads, held open for the whole run
        con = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM runs").fetchone()
        holding.set()
        release.wait(120)
        con.execute("SELECT count(*) FROM metrics").fetchone()
        con.execute("COMMIT")
        con.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert holding.wait(30)
        t0 = time.perf_counter()
        with tracker.run("mimo · teacher", dagster_run_id="run-with-ui", params={"lr": 2e-5}) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            run.log_metrics({"ndcg@10": 0.3})
        seconds = time.perf_counter() - t0
    finally:
        release.set()
        t.join(60)
    got = MlflowClient(tracker.tracking_uri).get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.metrics["ndcg_at_10"] == pytest.approx(0.3)
    assert seconds < 10, f"the run waited {seconds:.1f} s for the reader"


def test_an_existing_rollback_journal_mlflow_db_is_switched_to_wal(tmp_path):
    from mimo_pipeline import tracking

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (x)")
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert tracking.ensure_wal(db)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_file_lock_makes_a_second_holder_wait_says_so_and_is_freed_when_its_holder_dies(tmp_path, caplog):
    """The one flock that training, cache fills, results appends and store creation queue on."""
    import subprocess
    import sys

    lock = tmp_path / "sub" / "x.lock"
    with fileio.file_lock(lock) as waited:
        assert waited is None and lock.exists()  # free: no wait, folder and file created
    # Another process takes it and is killed while holding it, after a moment.
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from mimo_pipeline.fileio import file_lock\n"
                               f"with file_lock({str(lock)!r}):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        threading.Timer(0.5, holder.kill).start()
        with caplog.at_level(logging.INFO, logger="mimo_pipeline.fileio"):
            with fileio.file_lock(lock, waiting="x.lock: someone holds it; waiting") as waited:
                assert waited is not None and waited >= 0.3
        assert "x.lock: someone holds it; waiting" in caplog.text
    finally:
        holder.kill()
        holder.wait()
