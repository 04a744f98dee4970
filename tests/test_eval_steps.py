"""The evaluation assets' library functions end to end on tiny checkpoints: rows in DuckDB, one MLflow
run per model and seed, tables, A–U from the cached vectors, the claims file, and make run's summary."""

import contextlib
import pickle
from types import SimpleNamespace

import pandas as pd
import pytest

from mimo_pipeline.eval_steps import run_au_analysis, run_mlir_eval
from mimo_pipeline.evaluation import EvalConfig
from mimo_pipeline.stages import TrainedSet
from mimo_pipeline.storage import ResultsDB
from tests.conftest import build_tiny_bert
from tests.test_evaluation import AllBenches, TextCounter, benches


class FakeTracker:
    """What `tracking.Tracker` offers the steps, recorded."""

    def __init__(self):
        self.runs = []

    @contextlib.contextmanager
    def run(self, name, *, dagster_run_id, params=None, tags=None):
        rec = SimpleNamespace(name=name, tags=dict(tags or {}), metrics={}, artifacts=[], set_tags={})
        self.runs.append(rec)
        yield SimpleNamespace(log_metrics=lambda m, step=None: rec.metrics.update(m),
                              log_artifact=lambda path, where=None: rec.artifacts.append(str(path)),
                              set_tag=lambda k, v: rec.set_tags.update({k: v}))


class WithDev(AllBenches):
    """The toy benchmarks plus a development copy of mlir (``dev-mlir``)."""

    def __init__(self):
        super().__init__()
        dev = benches()["mlir"]
        dev.name = "dev-mlir"
        self.benches["dev-mlir"] = dev
        self.names = (*self.names, "dev-mlir")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    words = sorted({d["text"] for b in benches().values() for d in b.corpus.values()})
    ckpt = {}
    for name, seed in (("base", 0), ("stage1", 1), ("mimo", 2), ("mimo14", 5), ("lam1", 3), ("xlco", 4)):
        folder = build_tiny_bert(root / name, words, seed=seed)
        ckpt[name] = SimpleNamespace(path=str(folder), fingerprint=f"tiny-{name}")

    def trained(name, seed, steps=12):  # the default's steps: Stage 1 24, Stage 2 12, baselines 36, 16 rows each
        return SimpleNamespace(checkpoint=ckpt[name], seed=seed, steps=steps,
                               config={"stage": {"train": {"batch_size": 16}}})

    return {"student_base": ckpt["base"],
            "stage1": TrainedSet({"stage1": {13: trained("stage1", 13, steps=24)}}),
            "stage2": TrainedSet({"mimo": {13: trained("mimo", 13), 14: trained("mimo14", 14)},
                                  "mimo_lambda_1": {13: trained("lam1", 13)}}),
            "baselines": TrainedSet({"xlco": {13: trained("xlco", 13, steps=36)}})}


@pytest.fixture(scope="module")
def ran(checkpoints, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setattr("mimo_pipeline.models.UseEmbedder", lambda: TextCounter("use_m", "toy-use"))
    db, tracker = ResultsDB(home / "mimo.duckdb"), FakeTracker()
    c = checkpoints
    bench_set = WithDev()
    ev = run_mlir_eval(c["student_base"], c["stage1"], c["stage2"], c["baselines"], None, bench_set,
                       cache_root=home / "embed_cache", config=EvalConfig(batch_size=16, n_resamples=1000),
                       precision="fp32", db=db, tracker=tracker, dagster_run_id="run-1")
    au = run_au_analysis(c["student_base"], c["stage1"], c["stage2"], c["baselines"], bench_set, ev.result,
                         cache_root=home / "embed_cache", plots_dir=home / "plots", precision="fp32", db=db,
                         tracker=tracker, dagster_run_id="run-1", teacher_name="tiny-teacher")
    mp.undo()
    return SimpleNamespace(home=home, db=db, tracker=tracker, ev=ev, au=au)


def test_mlir_eval_rows_seeds_and_one_mlflow_run_per_model_and_seed(ran):
    df = ran.db.query("SELECT DISTINCT model, seed FROM eval_metrics WHERE dagster_run_id = 'run-1'")
    pairs = {(m, None if pd.isna(s) else int(s)) for m, s in df.itertuples(index=False)}
    assert pairs == {("base_student", None), ("stage1", 13), ("mimo", 13), ("mimo", 14), ("mimo_lambda_1", 13),
                     ("xlco", 13), ("use_m", None)}
    assert ran.ev.result.models == ("base_student", "stage1", "mimo", "mimo_lambda_1", "xlco", "use_m")
    compare = ran.db.query("SELECT model, seed FROM eval_compare WHERE dagster_run_id = 'run-1' "
                           "AND benchmark = 'mlir' AND metric = 'ndcg@10'")
    # seed 13 against mimo@13; the seedless models against mimo's mean over its two seeds
    assert sorted(map(str, compare.model)) == ["base_student", "mimo_lambda_1", "stage1", "use_m", "xlco"]
    eval_runs = [r for r in ran.tracker.runs if r.tags.get("asset") == "mlir_eval"]
    assert sorted(r.name for r in eval_runs) == sorted([
        "eval base_student · no teacher", "eval stage1 · seed 13 · no teacher", "eval mimo · seed 13 · no teacher",
        "eval mimo · seed 14 · no teacher", "eval mimo_lambda_1 · seed 13 · no teacher",
        "eval xlco · seed 13 · no teacher", "eval use_m · no teacher"])
    xlco = next(r for r in eval_runs if r.tags["model"] == "xlco")
    assert {"mlir/ndcg@10", "mlir/ndcg@10/ci_low", "mlir/ndcg@10/delta_vs_mimo",
            "mlir/own_lang@10"} <= set(xlco.metrics)
    assert ran.ev.result.loads == {k: 1 for k in ran.ev.result.loads if k != "use_m"} | {"use_m": 0}
    assert ran.ev.precision == "fp32" and ran.ev.out_of_range == 0


def test_mlir_eval_tables_keep_dev_apart(ran):
    assert "dev-" not in ran.ev.table_md.split("\n\n")[0] and "sd " in ran.ev.table_md  # mimo has two seeds
    assert ran.ev.dev_table_md.startswith("| model | mlir ndcg@10")
    mimo_row = next(line for line in ran.ev.table_md.splitlines() if line.startswith("| mimo |"))
    assert "(n=2)" in mimo_row


def test_au_analysis_reuses_vectors_writes_rows_plots_and_claims(ran):
    au = ran.au.result
    assert (au.texts_encoded, au.loads) == (0, 0)
    rows = ran.db.query("SELECT model, lang, metric FROM au_metrics WHERE dagster_run_id = 'run-1'")
    assert {"within", "cross", "all", "en", "de", "fr"} == set(rows.lang)
    assert set(rows.metric) == {"alignment", "uniformity"}
    assert len(rows[(rows.model == "mimo") & (rows.lang == "cross")]) == 1  # two seeds: one row, their mean
    assert au.lambda_plot.endswith("lambda_ablation.png")  # mimo (λ = 0.2) and mimo_lambda_1
    claims = (ran.home / "plots" / "claims.md").read_text()
    assert claims.strip() == ran.au.claims_md == au.claims_md
    assert set(ran.au.claims.verdicts()) == {"a", "b", "c", "d"}
    run = next(r for r in ran.tracker.runs if r.tags.get("asset") == "au_analysis")
    assert {"mimo/cross/uniformity", "claim_a_holds"} <= set(run.metrics)
    assert any(a.endswith("claims.md") for a in run.artifacts) and set(run.set_tags) == {
        "claim_a", "claim_b", "claim_c", "claim_d"}
    assert "| model | alignment ↓ | uniformity within ↓ |" in ran.au.au_table_md


def test_make_run_summary_prints_the_claims_and_the_readonly_command(ran, capsys):
    from mimo_pipeline.report import print_summary
    from mimo_pipeline.settings import Settings

    settings = Settings.resolve(home=str(ran.home), profile="smoke", env={})
    manifests = ran.home / "manifests" / "smoke"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "au_analysis.pkl").write_bytes(pickle.dumps(ran.au.result))
    print_summary(settings, "run-1")
    out = capsys.readouterr().out
    assert f"duckdb -readonly {ran.home / 'mimo.duckdb'}" in out
    assert "the paper's claims on this run:" in out and ran.au.claims_md in out
    assert "alignment and uniformity" in out and "| mimo |" in out
    # the claims end with the budget line: xlco's 36 steps against mimo's 24 + 12 (both seeds start from Stage 1's)
    assert ran.au.claims_md.endswith("training budgets matched: mimo (Stage 1 + Stage 2) and each baseline saw "
                                     "576 rows (steps × batch size)")


def test_au_reads_the_mlir_pool_or_else_the_translation_pool():
    from mimo_pipeline.errors import MimoInputError
    from mimo_pipeline.eval_steps import au_benchmark

    assert au_benchmark(SimpleNamespace(names=("mlir", "translation", "dev-mlir"))) == "mlir"
    # a user corpus: translation only (mlir needs the Bible's cross-references)
    assert au_benchmark(SimpleNamespace(names=("translation", "dev-translation"))) == "translation"
    with pytest.raises(MimoInputError, match="one of"):
        au_benchmark(SimpleNamespace(names=("dev-mlir", "/data/my-beir")))


def test_the_claims_read_mlir_or_else_a_user_mlir_benchmark():
    """With the Bible's benchmarks the claims read mlir; with a user corpus and the MIMO release's
    folders, the first test benchmark of task mlir (named in the claims' measures)."""
    from mimo_pipeline.claims import claim_a
    from mimo_pipeline.eval_steps import claims_benchmark

    def result(*benches):
        rows = tuple({"benchmark": b, "task": t, "model": "mimo", "seed": 13, "query_lang": "all",
                      "metric": "ndcg@10", "value": 0.5} for b, t in benches)
        return SimpleNamespace(rows=rows, benchmarks=tuple(b for b, _ in benches))

    assert claims_benchmark(result(("mlir", "mlir"), ("translation", "translation"), ("Belebele_test", "mlir"))) \
        == "mlir"
    user = result(("translation", "translation"), ("dev-translation", "translation"), ("dev-x", "mlir"),
                  ("Belebele_test", "mlir"), ("XQuAD_test", "mlir"))
    assert claims_benchmark(user) == "Belebele_test"
    assert claims_benchmark(result(("translation", "translation"))) == "mlir"  # none: the claims say absent
    rows = [*user.rows, {**user.rows[3], "model": "xlco", "value": 0.4}]
    compare = [{"model": "xlco", "reference": "mimo", "benchmark": "Belebele_test", "metric": "ndcg@10",
                "query_lang": "all", "seed": 13, "delta": -0.1, "ci_low": -0.2, "ci_high": -0.05,
                "p_value": 0.01, "p_holm": 0.02}]
    claim = claim_a(rows, compare, "Belebele_test")
    assert [c.measure for c in claim.comparisons] == ["MLIR nDCG@10 (Belebele_test)"]
    assert claim.comparisons[0].holds is True


def test_trained_models_reads_every_shape_a_training_asset_hands_on(checkpoints):
    from mimo_pipeline.models import evaluation_models, trained_models

    ck = checkpoints["stage1"].models["stage1"][13].checkpoint
    old = SimpleNamespace(checkpoint=ck, config={"stage": {"train": {"seed": 7}}})  # a TrainedModel before `seed`
    assert trained_models(old, "stage1") == [("stage1", 7, old)]
    assert trained_models({"xlco": old, "lakda": [old, old]}, "x") == [("xlco", 7, old), ("lakda", 7, old),
                                                                       ("lakda", 7, old)]
    assert [(n, s) for n, s, _ in trained_models(checkpoints["stage2"], "mimo")] == [
        ("mimo", 13), ("mimo", 14), ("mimo_lambda_1", 13)]
    assert trained_models(None, "x") == []
    with pytest.raises(TypeError):
        trained_models(42, "x")
    em = evaluation_models(checkpoints["student_base"], checkpoints["stage1"], checkpoints["stage2"],
                           checkpoints["baselines"], None)
    # the report's order; a name with several seeds gets one key per seed
    assert list(em.models) == ["base_student", "stage1", "mimo@13", "mimo@14", "mimo_lambda_1", "xlco", "use_m"]
    assert em.seeds == {"base_student": None, "stage1": 13, "mimo@13": 13, "mimo@14": 14, "mimo_lambda_1": 13,
                        "xlco": 13, "use_m": None}
    assert {k: e.name for k, e in em.models.items()}["mimo@14"] == "mimo"
    with pytest.raises(ValueError, match="twice"):
        evaluation_models(checkpoints["student_base"], [checkpoints["stage1"], checkpoints["stage1"]], None, None, None)
