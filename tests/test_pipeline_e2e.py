"""End to end on the smoke profile with the real packaged models, through the CLI users run.

full_mimo runs twice against one MIMO_HOME and DAGSTER_HOME (conftest `smoke`): first the
user's own `dagster job execute -j full_mimo` in an activated shell, which builds everything,
then `dg launch --job full_mimo`, which finds every cache full (teacher cache: 0 misses;
checkpoints: reused).
"""

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import instance_of, materializations

pytestmark = pytest.mark.e2e

TRAINED = {"stage1", "mimo", "mimo_lambda_0", "mimo_lambda_0.5", "mimo_lambda_1", "infonce", "xlco", "lakda"}
MODELS = TRAINED | {"base_student", "use_m", "teacher_en"}


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
    assert set(ckpts.model) == TRAINED
    seeds = db.query("SELECT DISTINCT seed FROM checkpoints")
    assert list(seeds.seed) == [13]  # the default seed list has one seed
    ev = db.query("SELECT * FROM eval_metrics")
    assert set(ev.model) == MODELS
    assert {"mlir", "monolingual", "translation"} <= set(ev.task)
    assert set(ev[ev.task == "mlir"].query_lang) == {"en", "de", "zh", "all"}
    ir = ev[~ev.metric.isin(["mrc@10"])]
    assert ir.value.between(0, 1).all() and ev[ev.metric == "mrc@10"].value.between(-100, 100).all()
    assert ev.dagster_run_id.nunique() >= 2  # both runs recorded, append-only
    au = db.query("SELECT * FROM au_metrics")
    assert {"alignment", "uniformity"} == set(au.metric) and np.isfinite(au.value).all()


def test_the_claims_say_the_baselines_trained_on_mimos_budget(smoke):
    """The real training assets' outputs carry what `claims.training_rows` counts: the claims report
    (au_analysis' metadata, claims.md) ends with the budget line, matched as the profile sets it."""
    from mimo_pipeline.settings import get_profile

    t = get_profile("smoke").training
    rows = (t.stage1_steps + t.stage2_steps) * t.batch_size
    line = f"training budgets matched: mimo (Stage 1 + Stage 2) and each baseline saw {rows} rows (steps × batch size)"
    claims = materializations(instance_of(smoke), "au_analysis")[0].metadata["claims"].value
    assert claims.endswith(line), claims[-300:]
    assert (smoke["home"] / "plots" / "claims.md").read_text().rstrip().endswith(line)


def test_artifacts_layout_and_no_half_written_files(smoke):
    home = smoke["home"]
    for sub in ("corpus", "teacher_cache", "models", "plots", "mlartifacts"):
        assert (home / sub).is_dir(), sub
    assert (home / "mlflow.db").exists() and (home / "mimo.duckdb").exists()
    assert (home / "plots" / "alignment_uniformity.png").stat().st_size > 1000
    assert len(list((home / "teacher_cache").glob("*/part-*.parquet"))) >= 1
    assert smoke["half_written"] == [], smoke["half_written"]  # as the two runs left the home


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
    # what ran on this machine: the profile's `auto` resolved, and autocast following it
    assert mimo.data.params["precision"] in ("fp32", "bf16")
    assert mimo.data.params["bf16"] == str(mimo.data.params["precision"] == "bf16")


def test_checkpoint_model_card_names_recipe_teacher_data_seed_and_heldout(smoke):
    from mimo_pipeline.storage import ResultsDB

    paths = ResultsDB(smoke["home"] / "mimo.duckdb").query(
        "SELECT model, any_value(path) AS path FROM checkpoints"
        " WHERE teacher IS NULL OR teacher = 'all-MiniLM-L6-v2' GROUP BY model")  # not the teacher swap's
    for model, path in zip(paths.model, paths.path):
        card = Path(path, "README.md").read_text()
        section = card[card.index("## MIMO pipeline"):]
        assert f"`{model}`" in section and "recipe:" in section and "seed 13" in section
        assert "held-out en↔X translation P@1" in section, model
        assert ("all-MiniLM-L6-v2" in section) == (model == "stage1" or model.startswith("mimo")), model


def test_training_assets_show_loss_curves_and_heldout_p1(smoke):
    """What a user opens a training asset for (Dagster metadata): its loss curve and held-out P@1."""
    instance = instance_of(smoke)
    for key in ("stage1_checkpoint", "stage2_checkpoint", "baseline_checkpoints"):
        md = materializations(instance, key)[0].metadata
        curves = [k for k in md if k.endswith("loss_curve")]
        assert curves and all("](data:image/png;base64," in md[k].value for k in curves), (key, curves)
        assert any(k.endswith("translation_p@1") for k in md), key


def test_every_checkpoint_records_the_models_it_comes_from(smoke):
    """Model identity is never silent: DuckDB's checkpoints, MLflow's tags and the model card name
    the base student and the teacher with their source (hub, catalog, local) and fingerprint."""
    from mlflow.tracking import MlflowClient

    from mimo_pipeline.storage import ResultsDB
    from mimo_pipeline.tracking import Tracker

    rows = ResultsDB(smoke["home"] / "mimo.duckdb").query("SELECT * FROM checkpoints")
    assert rows.student_base.nunique() == 1 and rows.student_base_fingerprint.nunique() == 1  # Stage 2 included
    assert set(rows.student_base_source) == {"catalog"}
    taught = rows[rows.asset != "baseline_checkpoints"]
    assert set(taught.teacher_source) == {"catalog"} and taught.teacher_fingerprint.notna().all()
    assert rows[rows.asset == "baseline_checkpoints"].teacher.isna().all()
    base, fp = rows.student_base[0], rows.student_base_fingerprint[0]
    for path in taught.path.unique():
        assert f"- base student: `{base} (catalog, fingerprint {fp})`" in Path(path, "README.md").read_text()
    tracker = Tracker(str(smoke["home"]))
    runs = MlflowClient(tracker.tracking_uri).search_runs([tracker.experiment_id()], "tags.kind = 'model'",
                                                          max_results=500)
    trained = [r for r in runs if r.info.run_name == "mimo · all-MiniLM-L6-v2"]  # not the eval runs
    assert trained
    for mimo in trained:
        assert mimo.data.tags["student_base_source"] == "catalog"
        assert mimo.data.tags["student_base_fingerprint"] == fp
        assert mimo.data.tags["teacher_source"] == "catalog" and len(mimo.data.tags["teacher_fingerprint"]) == 16


def test_mlflow_gets_per_step_loss_terms_lr_grad_norm_rows_per_s(smoke):
    from mlflow.tracking import MlflowClient

    from mimo_pipeline.tracking import Tracker

    tracker = Tracker(str(smoke["home"]))
    client = MlflowClient(tracker.tracking_uri)
    runs = [r for r in client.search_runs([tracker.experiment_id()], "tags.kind = 'model'", max_results=500)
            if r.info.run_name == "mimo · all-MiniLM-L6-v2"]
    # the first smoke run trained mimo (the second reused it and logged only its final figures)
    mimo = max(runs, key=lambda r: len(client.get_metric_history(r.info.run_id, "loss")))
    for key in ("loss", "xlco", "distill", "lr", "grad_norm", "rows_per_s"):
        history = client.get_metric_history(mimo.info.run_id, key)
        assert len(history) >= 2, key  # one value per logged step
    assert float(mimo.data.params["batch_size"]) > 0 and "mini_batch_size" in mimo.data.params


def test_failing_stage1_gate_stops_stage2(smoke):
    """The blocking quality gate, provoked as a user would: Stage 1 at an absurd learning rate (1.0,
    10,000× the paper's) wrecks the student, its held-out translation P@1 falls below the base
    student's, the gate fails with what to change, and Stage 2 in the same run does not run."""
    import os

    from dagster import AssetKey

    from mimo_pipeline.definitions import defs

    instance = instance_of(smoke)
    before = len(materializations(instance, "stage2_checkpoint"))
    env = {k: smoke["env"][k] for k in ("MIMO_HOME", "MIMO_PROFILE")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = defs.get_job_def("full_mimo").execute_in_process(
            instance=instance, raise_on_error=False,
            asset_selection=[AssetKey("stage1_checkpoint"), AssetKey("stage2_checkpoint")],
            run_config={"ops": {"stage1_checkpoint": {"config": {"lr": 1.0}}}})
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    gate = next(e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate")
    assert not gate.passed and "fell below the base student's" in gate.description
    assert "Lower stage1_checkpoint's lr" in gate.description  # what to change
    assert len(materializations(instance, "stage2_checkpoint")) == before  # Stage 2 did not run
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [AssetKey("stage1_checkpoint")]
