"""End to end on the smoke profile with the real packaged models, through the CLI users run.

`dagster job execute -m mimo_pipeline.definitions -j full_mimo` runs twice against one
MIMO_HOME and DAGSTER_HOME: the first run builds everything, the second finds every
cache full (teacher cache: 0 misses; checkpoints: reused).
"""

import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

MODELS = {"base_student", "stage1", "mimo", "infonce", "xlco", "lakda", "use_m", "teacher_en"}


def _execute(env, log_path):
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [str(REPO / ".venv" / "bin" / "dagster"), "job", "execute", "-m", "mimo_pipeline.definitions",
             "-j", "full_mimo"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1500)
    return proc.returncode, time.perf_counter() - t0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, repo_env):
    root = tmp_path_factory.mktemp("e2e")
    env = {**repo_env, "MIMO_HOME": str(root / "home"), "MIMO_PROFILE": "smoke",
           "DAGSTER_HOME": str(root / "dagster_home")}
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text("")
    runs = [_execute(env, root / f"run{i}.log") for i in (1, 2)]
    for i, (rc, _) in enumerate(runs, 1):
        if rc != 0:
            sys.stderr.write((root / f"run{i}.log").read_text()[-6000:])
        assert rc == 0, f"run {i} of full_mimo failed, log: {root / f'run{i}.log'}"
    return {"root": root, "env": env, "home": root / "home", "seconds": [s for _, s in runs]}


def _instance(smoke):
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(smoke["env"]["DAGSTER_HOME"]))


def _materializations(instance, key):
    from dagster import AssetKey, DagsterEventType, EventRecordsFilter

    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(key)), ascending=True)
    return [r.event_log_entry.asset_materialization for r in records]


def test_second_run_encodes_nothing_and_trains_nothing(smoke):
    instance = _instance(smoke)
    first, second = _materializations(instance, "teacher_embeddings")[-2:]
    assert first.metadata["misses"].value > 0
    assert second.metadata["misses"].value == 0
    assert second.metadata["hits"].value == first.metadata["texts"].value
    for key in ("stage1_checkpoint", "stage2_checkpoint"):
        mats = _materializations(instance, key)
        assert [m.metadata["reused"].value for m in mats[-2:]] == [False, True]
        assert mats[-1].metadata["path"].value == mats[-2].metadata["path"].value


def test_results_in_duckdb(smoke):
    from mimo_pipeline.storage import ResultsDB

    db = ResultsDB(smoke["home"] / "mimo.duckdb")
    ckpts = db.query("SELECT DISTINCT model FROM checkpoints")
    assert set(ckpts.model) == {"stage1", "mimo", "infonce", "xlco", "lakda"}
    ev = db.query("SELECT * FROM eval_metrics")
    assert set(ev.model) == MODELS
    assert {"mlir", "monolingual", "translation"} <= set(ev.task)
    assert set(ev[ev.task == "mlir"].query_lang) == {"en", "de", "zh", "all"}
    ir = ev[~ev.metric.isin(["mrc@10"])]
    assert ir.value.between(0, 1).all() and ev[ev.metric == "mrc@10"].value.between(-100, 100).all()
    assert ev.dagster_run_id.nunique() == 2  # both runs recorded, append-only
    au = db.query("SELECT * FROM au_metrics")
    assert {"alignment", "uniformity"} == set(au.metric) and np.isfinite(au.value).all()


def test_artifacts_layout_and_no_half_written_files(smoke):
    home = smoke["home"]
    for sub in ("corpus", "teacher_cache", "models", "plots", "mlartifacts"):
        assert (home / sub).is_dir(), sub
    assert (home / "mlflow.db").exists() and (home / "mimo.duckdb").exists()
    assert (home / "plots" / "alignment_uniformity.png").stat().st_size > 1000
    assert len(list((home / "teacher_cache").glob("*/part-*.parquet"))) >= 1
    leftovers = [p for p in home.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".work-")]
    assert not leftovers, leftovers


def test_checkpoint_loads_with_sentence_transformers_and_transformers(smoke):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from mimo_pipeline.encoder import pool
    from mimo_pipeline.storage import ResultsDB

    path = ResultsDB(smoke["home"] / "mimo.duckdb").query(
        "SELECT path FROM checkpoints WHERE model = 'mimo' LIMIT 1").path[0]
    st = SentenceTransformer(path, device="cpu")
    assert st.prompts == {"query": "query: ", "document": "passage: "}
    texts = ["In the beginning God created the heavens and the earth.", "Am Anfang schuf Gott Himmel und Erde."]
    a = st.encode(texts, prompt_name="query")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        b = pool(model(**batch).last_hidden_state, batch["attention_mask"]).numpy()
    assert a.shape == (2, 384) and np.allclose(a, b, atol=1e-4)


def test_mlflow_runs_are_nested_and_named(smoke):
    from mlflow.tracking import MlflowClient

    from mimo_pipeline.tracking import Tracker

    tracker = Tracker(str(smoke["home"]))
    client = MlflowClient(tracker.tracking_uri)
    runs = client.search_runs([tracker.experiment_id()], "tags.kind = 'model'", max_results=500)
    names = {r.info.run_name for r in runs}
    assert "mimo · all-MiniLM-L6-v2" in names and "stage1 · all-MiniLM-L6-v2" in names
    mimo = next(r for r in runs if r.info.run_name == "mimo · all-MiniLM-L6-v2")
    assert "mlflow.parentRunId" in mimo.data.tags and "final_loss" in mimo.data.metrics
    assert float(mimo.data.params["lr"]) == 2e-5
