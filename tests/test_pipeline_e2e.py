"""End to end on the smoke profile with the real packaged models, through the CLI users run.

full_mimo runs twice against one MIMO_HOME and DAGSTER_HOME (conftest `smoke`): first the
user's own `dagster job execute -j full_mimo` in an activated shell, which builds everything,
then `dg launch --job full_mimo`, which finds every cache full (teacher cache: 0 misses;
checkpoints: reused).
"""

import numpy as np
import pytest

from tests.conftest import REPO, instance_of, materializations

pytestmark = pytest.mark.e2e

MODELS = {"base_student", "stage1", "mimo", "infonce", "xlco", "lakda", "use_m", "teacher_en"}


def test_second_run_encodes_nothing_and_trains_nothing(smoke):
    instance = instance_of(smoke)
    first, second = materializations(instance, "teacher_embeddings")[:2]
    assert first.metadata["misses"].value > 0
    assert second.metadata["misses"].value == 0
    assert second.metadata["hits"].value == first.metadata["texts"].value
    for key in ("stage1_checkpoint", "stage2_checkpoint"):
        mats = materializations(instance, key)
        assert [m.metadata["reused"].value for m in mats[:2]] == [False, True]
        assert mats[1].metadata["path"].value == mats[0].metadata["path"].value


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
    assert ev.dagster_run_id.nunique() >= 2  # both runs recorded, append-only
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
