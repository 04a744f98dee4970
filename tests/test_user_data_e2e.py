"""Your own data end to end (issue 13 items 5 and 6), and the README's examples of it.

`test_full_mimo_on_user_data_only` runs `full_mimo` once, on the smoke profile with the real
packaged models, on three inputs the test writes from a made-up language (a vocabulary of
invented words and two systematic "translations" of it, German- and French-coded; names stay
as they are across languages, as proper nouns do):

- a parallel corpus TSV (`en`, `text`, `lang`, `split`): 300 sentences in de and fr;
- an mMARCO-parallel pairs folder (`datasets.Dataset.save_to_disk`, columns `query_<lang>` and
  `positive_<lang>`, a few French cells empty as in the official file);
- two benchmark folders, one in BEIR form and one in the form of the MIMO release
  (`MMLIR/<name>/` with `qrels.jsonl`).

The run config is the README's "all three in one run_config.yaml" block with its paths swapped
for these files, so the README's example is what runs. The packaged Bible is a tripwire: any call
of `mimo_pipeline.bible.bible_db_path` (through which every read of the Bible's file goes) is
recorded and fails. The run is in process (`execute_in_process` on `defs`, MIMO_HOME and
MIMO_PROFILE in the environment), which is what lets the test hold the tripwire.

The cheap tests (seconds) check every YAML block of the README's "Bring your own" section against
the job's config schema, the made-up inputs through the library's readers, the data half of the
run (parallel_corpus, retrieval_pairs, mlir_benchmarks on the README's config, smoke profile) and
its evaluation half (`run_mlir_eval`, `run_au_analysis` on the user benchmarks, tiny checkpoints).
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
import traceback
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

LANGS = ("de", "fr")
TRAINED = {"stage1", "mimo", "mimo_lambda_0", "mimo_lambda_0.5", "mimo_lambda_1", "infonce", "xlco", "lakda"}
BEIR_NAME, RELEASE_NAME = "toy-beir", "Toy_test"
#: The contract's assets (DESIGN §2) less teacher_model, an observable source asset.
ASSETS = ("parallel_corpus", "retrieval_pairs", "mlir_benchmarks", "student_base", "teacher_embeddings",
          "stage1_checkpoint", "stage2_checkpoint", "baseline_checkpoints", "mlir_eval", "au_analysis")


# --------------------------------------------------------------------------- the README's examples


def byo_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Bring your own")
    return text[start:text.index("\n## ", start + 3)]


def byo_yaml_blocks() -> list[dict]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", byo_section(), flags=re.S)]


def readme_run_config() -> dict:
    """The section's last YAML block: all three inputs in one run_config.yaml."""
    return byo_yaml_blocks()[-1]


def _job():
    from mimo_pipeline.definitions import defs

    return defs.resolve_job_def("full_mimo")


def test_readme_shows_each_input_and_all_three_together():
    blocks = byo_yaml_blocks()
    assert len(blocks) == 4
    assert [set(b["ops"]) for b in blocks[:3]] == [{"parallel_corpus"}, {"retrieval_pairs"}, {"mlir_benchmarks"}]
    together = blocks[3]["ops"]
    assert set(together) == {"parallel_corpus", "retrieval_pairs", "mlir_benchmarks"}
    assert together["parallel_corpus"]["config"]["source_path"]
    assert together["retrieval_pairs"]["config"]["source_path"]
    assert together["mlir_benchmarks"]["config"]["user_folders"]
    section = byo_section()
    assert "dagster job execute -j full_mimo -c run_config.yaml" in section
    assert "build_mmarco_parallel.py" in section and "yjoonjang/mlir-benchmarks" in section


@pytest.mark.parametrize("i", range(4))
def test_readme_run_config_blocks_are_valid_config_of_full_mimo(i):
    """Every key of every example is a config key of its asset (a typo fails here, not in a user's run)."""
    from dagster import validate_run_config

    validate_run_config(_job(), byo_yaml_blocks()[i])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_the_run_configs_in_configs_are_valid_config_of_full_mimo(path):
    """`make run RUN_CONFIG=configs/<file>` (README) fails on a key its asset does not have."""
    from dagster import validate_run_config

    validate_run_config(_job(), yaml.safe_load(path.read_text()))


def test_the_15_minute_config_drops_what_its_comment_says_and_no_more():
    """configs/fits_15_minutes.yaml: no λ ablation and baselines at Stage 2's steps (the default
    profile's, so the file stays true if that default changes); nothing else set."""
    from mimo_pipeline.settings import get_profile

    stage2_steps = get_profile("default").training.stage2_steps
    config = yaml.safe_load((REPO / "configs" / "fits_15_minutes.yaml").read_text())
    assert config == {"ops": {"stage2_checkpoint": {"config": {"lambda_ablation": False}},
                              "baseline_checkpoints": {"config": {"steps": stage2_steps}}}}


# --------------------------------------------------------------------------- a made-up language

_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
#: Each language rewrites letters by its own table and marks words its own way (systematic, so a
#: model can learn it; different enough that the words are new to the tokenizer).
_STYLE = {"de": (str.maketrans("aeioubdgkpt", "eiouapbtgkd"), "{}en"),
          "fr": (str.maketrans("aeiousztv", "ouaeizsvt"), "le{}")}


class MadeUpLanguage:
    def __init__(self, seed: int = 7, n_words: int = 400, n_names: int = 120):
        self.rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < n_words + n_names:
            words.add("".join(self.rng.choice(_CONSONANTS) + self.rng.choice(_VOWELS)
                              for _ in range(self.rng.randint(2, 3))))
        ordered = sorted(words)
        self.rng.shuffle(ordered)
        self.words, self.names = ordered[:n_words], [w.capitalize() for w in ordered[n_words:]]

    def sentence(self, n_words: tuple[int, int] = (6, 10), include: list[str] | None = None,
                 end: str = ".") -> str:
        words = self.rng.sample(self.words, self.rng.randint(*n_words))
        for w in include or []:
            words.insert(self.rng.randint(0, len(words)), w)
        return f"{self.rng.choice(self.names)} {' '.join(words)}{end}"

    @staticmethod
    def translate(sentence: str, lang: str) -> str:
        table, mark = _STYLE[lang]
        out = []
        for token in sentence.split():
            end = token[-1] if token[-1] in ".?" else ""
            word = token[:-1] if end else token
            out.append((word if word[0].isupper() else mark.format(word.translate(table))) + end)
        return " ".join(out)


def write_corpus(path: Path, lang: MadeUpLanguage, n: int = 300) -> dict[str, int]:
    """``n`` sentences, each in every language of `LANGS`: 2/3 train, 2/15 dev, 1/5 test."""
    splits = {"train": 0, "dev": 0, "test": 0}
    lines = ["en\ttext\tlang\tsplit"]
    seen = set()
    while len(seen) < n:
        en = lang.sentence()
        if en in seen:
            continue
        seen.add(en)
        i = len(seen) - 1
        split = "train" if i < n * 2 // 3 else "dev" if i < n * 4 // 5 else "test"
        splits[split] += 1
        lines += [f"{en}\t{lang.translate(en, x)}\t{x}\t{split}" for x in LANGS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return splits


def _query_and_passage(lang: MadeUpLanguage) -> tuple[str, str]:
    """A query of 3-4 words and a passage that holds them among 6-9 others."""
    query_words = lang.rng.sample(lang.words, lang.rng.randint(3, 4))
    return " ".join(query_words) + "?", lang.sentence((6, 9), include=query_words)


def write_pairs_folder(path: Path, lang: MadeUpLanguage, n: int = 240) -> int:
    """The official mMARCO-parallel layout (build_mmarco_parallel.py): one row per (query,
    positive), query_<lang>/positive_<lang> for en and every language; every 20th row lacks its
    French side (the official file has such gaps). Returns the number of gaps."""
    from datasets import Dataset

    cols: dict[str, list[str]] = {f"{kind}_{x}": [] for x in ("en", *LANGS) for kind in ("query", "positive")}
    gaps = 0
    for i in range(n):
        q, p = _query_and_passage(lang)
        cols["query_en"].append(q)
        cols["positive_en"].append(p)
        for x in LANGS:
            gap = x == "fr" and i % 20 == 7
            gaps += gap
            cols[f"query_{x}"].append("" if gap else lang.translate(q, x))
            cols[f"positive_{x}"].append("" if gap else lang.translate(p, x))
    Dataset.from_dict(cols).save_to_disk(str(path))
    return gaps


def _topics(lang: MadeUpLanguage, n_topics: int, n_distractors: int):
    """Queries in en and every language; documents: every language version of each topic's
    passage (all relevant) and of some distractor passages."""
    queries, docs, qrels = [], [], {}
    for t in range(n_topics + n_distractors):
        q, p = _query_and_passage(lang)
        for x in ("en", *LANGS):
            docs.append((f"d{t}-{x}", p if x == "en" else lang.translate(p, x), x))
            if t < n_topics:
                queries.append((f"q{t}-{x}", q if x == "en" else lang.translate(q, x), x))
    for qid, _, _ in queries:
        t = qid[1:].split("-")[0]
        qrels[qid] = {f"d{t}-{x}": 1 for x in ("en", *LANGS)}
    return queries, docs, qrels


def write_beir_folder(path: Path, lang: MadeUpLanguage, n_topics: int = 12, n_distractors: int = 12) -> int:
    queries, docs, qrels = _topics(lang, n_topics, n_distractors)
    (path / "qrels").mkdir(parents=True)
    (path / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t, "lang": x}) + "\n"
                                               for d, t, x in docs))
    # BEIR's optional extra field "group": the parallel versions of one query (MRC@10, topics)
    (path / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "lang": x,
                                                            "group": q.split("-")[0]}) + "\n"
                                                for q, t, x in queries))
    (path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{s}\n" for q, rel in qrels.items() for d, s in rel.items()))
    return len(queries)


def write_release_folder(path: Path, lang: MadeUpLanguage, n_topics: int = 10, n_distractors: int = 10) -> int:
    """The MIMO release's layout (yjoonjang/mlir-benchmarks, MMLIR/<name>/)."""
    queries, docs, qrels = _topics(lang, n_topics, n_distractors)
    path.mkdir(parents=True)
    (path / "corpus.jsonl").write_text("".join(json.dumps({d: {"text": t, "lang": x}}) + "\n" for d, t, x in docs))
    (path / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "lang": x}) + "\n"
                                                for q, t, x in queries))
    (path / "qrels.jsonl").write_text("".join(json.dumps({q: rel}) + "\n" for q, rel in qrels.items()))
    return len(queries)


def write_user_data(root: Path) -> dict:
    lang = MadeUpLanguage()
    root.mkdir(parents=True, exist_ok=True)
    data = {"corpus": root / "opus_en_x.tsv", "pairs": root / "mmarco_parallel",
            "release": root / "mlir-benchmarks" / "MMLIR" / RELEASE_NAME, "beir": root / BEIR_NAME}
    data["splits"] = write_corpus(data["corpus"], lang)
    data["pair_gaps"] = write_pairs_folder(data["pairs"], lang)
    data["queries"] = {RELEASE_NAME: write_release_folder(data["release"], lang),
                       BEIR_NAME: write_beir_folder(data["beir"], lang)}
    return data


def user_run_config(data: dict) -> dict:
    """The README's run_config.yaml with its paths swapped for the test's files."""
    cfg = readme_run_config()
    ops = cfg["ops"]
    ops["parallel_corpus"]["config"]["source_path"] = str(data["corpus"])
    ops["retrieval_pairs"]["config"]["source_path"] = str(data["pairs"])
    ops["mlir_benchmarks"]["config"]["user_folders"] = [str(data["release"]), str(data["beir"])]
    return cfg


def test_the_made_up_data_reads_as_a_user_corpus_pairs_and_benchmarks(tmp_path):
    """The inputs of the end-to-end test, through the library's readers (seconds): so that a
    failure of the long test is never the test's own data."""
    from mimo_pipeline.benchmarks import load_benchmark
    from mimo_pipeline.corpus import load_user_corpus
    from mimo_pipeline.pairs import PairsConfig, build_user_pairs

    data = write_user_data(tmp_path / "in")
    corpus = load_user_corpus(data["corpus"])
    assert corpus.num_rows == 600 and set(corpus.column("lang").to_pylist()) == set(LANGS)
    assert data["splits"] == {"train": 200, "dev": 40, "test": 60}
    pairs = build_user_pairs(PairsConfig(source_path=str(data["pairs"]), max_pairs=200), tmp_path / "pairs")
    assert pairs.layout == "wide" and pairs.n_pairs == 200 and set(pairs.languages) >= set(LANGS)
    assert pairs.missing_by_lang.get("fr") == data["pair_gaps"]
    for name, folder in ((RELEASE_NAME, data["release"]), (BEIR_NAME, data["beir"])):
        bench = load_benchmark(folder)
        assert bench.name == name and len(bench.queries) == data["queries"][name]
        assert {q["lang"] for q in bench.queries.values()} == {"en", *LANGS}
    text = data["corpus"].read_text()
    assert "God" not in text and "Jesus" not in text


# --------------------------------------------------------------------------- end to end


@pytest.fixture()
def bible_tripwire(monkeypatch):
    """Every read of the packaged Bible goes through `bible.bible_db_path`: record and refuse it."""
    from mimo_pipeline import bible

    calls: list[str] = []

    def tripwire(*args, **kwargs):
        calls.append("".join(traceback.format_stack(limit=12)))
        raise AssertionError("the packaged Bible was read in a run on the user's own data")

    monkeypatch.setattr(bible, "bible_db_path", tripwire)
    return calls


def test_the_data_assets_on_the_readme_run_config_under_the_smoke_profile(tmp_path, monkeypatch, bible_tripwire):
    """The data half of the end-to-end run, in seconds: the README's run config (paths swapped)
    through parallel_corpus, retrieval_pairs and mlir_benchmarks on the smoke profile. The
    profile's languages (de, zh) and pool sizes (here 100 verses) are the Bible's: a corpus of your
    own keeps its own languages (de, fr) unless `languages` says otherwise, and its smaller eval
    split (60 sentences) makes the whole translation pool, with a note. Nothing reads the Bible."""
    from dagster import materialize, mem_io_manager

    from assets.data import parallel_corpus, retrieval_pairs
    from assets.evaluation import mlir_benchmarks
    from resources import MimoSettings

    from dataclasses import replace

    from mimo_pipeline import settings

    monkeypatch.setenv("MIMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MIMO_PROFILE", "smoke")
    # a profile pool of 100 verses, above the corpus' 60 eval sentences (the smoke profile's 50 are below)
    smoke = settings.PROFILES["smoke"]
    monkeypatch.setitem(settings.PROFILES, "smoke",
                        replace(smoke, benchmarks=replace(smoke.benchmarks, pool_verses=100)))
    data = write_user_data(tmp_path / "in")
    run_config = user_run_config(data)
    res = materialize([parallel_corpus, retrieval_pairs, mlir_benchmarks], run_config=run_config,
                      resources={"settings": MimoSettings(), "artifacts": mem_io_manager})
    assert res.success
    md = {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
          for e in res.get_asset_materialization_events()}
    assert md["parallel_corpus"]["languages"].value == "de fr"
    assert md["retrieval_pairs"]["layout"].value == "wide" and md["retrieval_pairs"]["dagster/row_count"].value == 200
    notes = md["mlir_benchmarks"]["notes"].value
    assert "skipped" in notes and "translation: the pool holds all 60 eval sentences" in notes, notes
    table = md["mlir_benchmarks"]["benchmarks"].value
    for name in ("translation", "dev-translation", RELEASE_NAME, BEIR_NAME):
        assert f"| {name} |" in table, table

    run_config["ops"]["parallel_corpus"]["config"]["languages"] = ["fr"]
    res = materialize([parallel_corpus], run_config={"ops": {"parallel_corpus": run_config["ops"]["parallel_corpus"]}},
                      resources={"settings": MimoSettings(), "artifacts": mem_io_manager})
    assert res.get_asset_materialization_events()[0].event_specific_data.materialization.metadata[
        "languages"].value == "fr"
    # extra_languages on a user corpus without `languages` leave it every language its file has
    corpus_config = {**run_config["ops"]["parallel_corpus"]["config"], "extra_languages": ["ko"]}
    corpus_config.pop("languages")
    res = materialize([parallel_corpus], run_config={"ops": {"parallel_corpus": {"config": corpus_config}}},
                      resources={"settings": MimoSettings(), "artifacts": mem_io_manager})
    assert res.get_asset_materialization_events()[0].event_specific_data.materialization.metadata[
        "languages"].value == "de fr"
    assert not bible_tripwire, bible_tripwire[0]


class FakeUse:
    """Stands in for the off-the-shelf use_m: a random vector per text."""

    name, fingerprint, dim, loads = "use_m", "fake-use", 16, 0

    def prefix(self, prompt):
        return ""

    def encode(self, texts, prompt):
        import hashlib

        import numpy as np

        return np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16))
                         .standard_normal(self.dim).astype(np.float32) for t in texts])


def test_the_evaluation_half_on_user_benchmarks_with_tiny_models(tmp_path, monkeypatch, bible_tripwire):
    """The evaluation half of the end-to-end run, in seconds: the benchmarks of the user data
    (translation from the corpus, the two user folders) through `run_mlir_eval` and
    `run_au_analysis` with tiny random checkpoints: eval_metrics holds the user benchmarks per
    query language, A-U reads the translation pool, the claims read the first user MLIR benchmark."""
    from types import SimpleNamespace

    from mimo_pipeline.benchmarks import BenchmarkConfig, build_benchmark_set
    from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached
    from mimo_pipeline.eval_steps import run_au_analysis, run_mlir_eval
    from mimo_pipeline.evaluation import EvalConfig
    from mimo_pipeline.storage import ResultsDB
    from tests.conftest import build_tiny_bert
    from mimo_pipeline.stages import TrainedSet
    from tests.test_eval_steps import FakeTracker

    data = write_user_data(tmp_path / "in")
    corpus = build_parallel_corpus_cached(CorpusConfig(source_path=str(data["corpus"])), tmp_path / "corpus")
    smoke = BenchmarkConfig(query_verses=20, pool_verses=100, translation_queries=10, fit_pool=True)
    bench_set = build_benchmark_set(corpus.path, corpus.languages, tmp_path / "benchmarks", smoke,
                                    user_folders=[str(data["release"]), str(data["beir"])], user_corpus=True)
    texts = [d["text"] for name in bench_set.names for b in [bench_set.load(name)]
             for d in [*b.corpus.values(), *b.queries.values()]]
    ckpt = {name: SimpleNamespace(path=str(build_tiny_bert(tmp_path / "ckpt" / name, texts, seed=i)),
                                  fingerprint=f"tiny-{name}")
            for i, name in enumerate(("base", "stage1", "mimo", "lam0", "lam1", "xlco"))}

    def trained(name, steps=12):  # the default's steps (Stage 1 24, Stage 2 12, baselines 36) of 16 rows
        return {13: SimpleNamespace(checkpoint=ckpt[name], seed=13, steps=steps,
                                    config={"stage": {"train": {"batch_size": 16}}})}

    stage1 = TrainedSet({"stage1": trained("stage1", 24)})
    stage2 = TrainedSet({"mimo": trained("mimo"), "mimo_lambda_0": trained("lam0"), "mimo_lambda_1": trained("lam1")})
    baselines = TrainedSet({"xlco": trained("xlco", 36)})
    monkeypatch.setattr("mimo_pipeline.models.UseEmbedder", FakeUse)
    home = tmp_path / "home"
    db, tracker = ResultsDB(home / "mimo.duckdb"), FakeTracker()
    ev = run_mlir_eval(ckpt["base"], stage1, stage2, baselines, None, bench_set, cache_root=home / "embed_cache",
                       config=EvalConfig(batch_size=16, n_resamples=1000), precision="fp32", db=db, tracker=tracker,
                       dagster_run_id="r")
    au = run_au_analysis(ckpt["base"], stage1, stage2, baselines, bench_set, ev.result,
                         cache_root=home / "embed_cache", plots_dir=home / "plots", precision="fp32", db=db,
                         tracker=tracker, dagster_run_id="r", teacher_name="none")
    assert set(ev.result.benchmarks) == {"translation", "dev-translation", RELEASE_NAME, BEIR_NAME}
    rows = db.query("SELECT * FROM eval_metrics WHERE metric = 'ndcg@10'")
    for name in (RELEASE_NAME, BEIR_NAME):
        mine = rows[rows.benchmark == name]
        assert set(mine.task) == {"mlir"} and set(mine.query_lang) == {"en", *LANGS, "all"}, name
        assert {"mimo", "xlco", "base_student", "use_m"} <= set(mine.model), name
    assert set(LANGS) <= set(db.query("SELECT DISTINCT lang FROM au_metrics").lang)
    assert f"MLIR nDCG@10 ({RELEASE_NAME})" in au.claims_md
    assert au.claims_md.endswith("training budgets matched: mimo (Stage 1 + Stage 2) and each baseline saw 576 rows "
                                 "(steps × batch size)")
    assert not bible_tripwire, bible_tripwire[0]


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_full_mimo_on_user_data_only(tmp_path, monkeypatch, bible_tripwire):
    from dagster import AssetKey, DagsterEventType, DagsterInstance

    from mimo_pipeline.definitions import defs
    from mimo_pipeline.storage import ResultsDB

    data = write_user_data(tmp_path / "in")
    home = tmp_path / "home"
    monkeypatch.setenv("MIMO_HOME", str(home))
    monkeypatch.setenv("MIMO_PROFILE", "smoke")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for var in ("MIMO_TEACHER", "MIMO_STUDENT"):
        monkeypatch.delenv(var, raising=False)
    run_config = user_run_config(data)
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(run_config))  # what a user would pass with -c

    t0 = time.perf_counter()
    result = defs.resolve_job_def("full_mimo").execute_in_process(
        run_config=run_config, instance=DagsterInstance.ephemeral(), raise_on_error=False)
    wall = time.perf_counter() - t0
    sys.stderr.write(f"full_mimo on user data: {wall:.0f}s\n")
    failures = [f"{e.step_key}: {e.event_specific_data.error.to_string()}" for e in result.all_events
                if e.is_step_failure]
    assert result.success, "\n".join(failures)[-6000:]
    assert not bible_tripwire, bible_tripwire[0]

    # every asset materialised once; the teacher (an observable source) observed
    observed = {e.asset_key for e in result.all_events if e.event_type == DagsterEventType.ASSET_OBSERVATION}
    materialised = sorted(e.asset_key.to_user_string() for e in result.get_asset_materialization_events())
    assert AssetKey("teacher_model") in observed
    assert materialised == sorted(ASSETS)
    checks = [e.event_specific_data for e in result.all_events
              if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
    failed = [f"{c.asset_key.to_user_string()}:{c.check_name}" for c in checks
              if not c.passed and c.severity.value == "ERROR"]
    assert checks and not failed, failed

    meta = {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}
    corpus = meta["parallel_corpus"]
    assert corpus["source"].value == str(data["corpus"])
    assert corpus["languages"].value.split() == list(LANGS)  # every language of the file, whatever the profile
    pairs = meta["retrieval_pairs"]
    assert pairs["source"].value == str(data["pairs"]) and pairs["layout"].value == "wide"
    assert pairs["dagster/row_count"].value == 200  # the smoke profile's max_pairs
    bench = meta["mlir_benchmarks"]
    assert "skipped" in bench["notes"].value
    names = meta["mlir_eval"]["benchmarks"].value.split()
    assert set(names) == {"translation", "dev-translation", RELEASE_NAME, BEIR_NAME}

    # no Bible row anywhere: the corpus' ids are the user's rows, no book
    from mimo_pipeline.fileio import read_parquet

    table = read_parquet(corpus["path"].value)
    assert set(table.column("book").to_pylist()) == {0}
    assert all(v.startswith("u") for v in table.column("verse_id").to_pylist())

    # eval_metrics holds the user benchmarks' figures, every model, every query language
    db = ResultsDB(home / "mimo.duckdb")
    ev = db.query("SELECT * FROM eval_metrics WHERE dagster_run_id = ?", [result.run_id])
    for name in (RELEASE_NAME, BEIR_NAME):
        rows = ev[ev.benchmark == name]
        assert set(rows.task) == {"mlir"}, name
        assert TRAINED | {"base_student"} <= set(rows.model), (name, sorted(set(rows.model)))
        ndcg = rows[rows.metric == "ndcg@10"]
        assert set(ndcg.query_lang) == {"en", *LANGS, "all"}, name
        assert ndcg.value.between(0, 1).all(), name
        overall = ndcg[(ndcg.query_lang == "all") & (ndcg.model == "mimo")]
        assert len(overall) == 1 and overall.n_topics.item() > 0, name
        assert ndcg[ndcg.model == "base_student"].value.max() > 0, name  # the pool is findable at all
    assert {"translation", "dev-translation"} <= set(ev.benchmark)
    compare = db.query("SELECT DISTINCT benchmark FROM eval_compare WHERE dagster_run_id = ?", [result.run_id])
    assert {RELEASE_NAME, BEIR_NAME} <= set(compare.benchmark)
    au = db.query("SELECT DISTINCT lang FROM au_metrics WHERE dagster_run_id = ?", [result.run_id])
    assert set(LANGS) <= set(au.lang)
    # no Bible mlir benchmark: the claims (a) and (d) read the first user MLIR benchmark
    assert f"MLIR nDCG@10 ({RELEASE_NAME})" in meta["au_analysis"]["claims"].value
