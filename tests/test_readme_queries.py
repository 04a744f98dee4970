"""The DuckDB queries of the README run and answer correctly on a results file with known rows."""

import re

import pytest

from mimo_pipeline.storage import ResultsDB
from tests.conftest import REPO


def readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


@pytest.fixture()
def db(tmp_path):
    db = ResultsDB(tmp_path / "mimo.duckdb")
    rows = []
    for run, teacher, shift in (("r1", "all-MiniLM-L6-v2", 0.0), ("r2", "all-mpnet-base-v2", 0.05)):
        db.append("checkpoints", [{"model": "mimo", "asset": "stage2_checkpoint", "path": "/m", "teacher": teacher,
                                   "dagster_run_id": run},
                                  {"model": "infonce", "asset": "baseline_checkpoints", "path": "/i",
                                   "dagster_run_id": run}])
        for model, base in (("mimo", 0.5), ("infonce", 0.4), ("teacher_en", 0.9)):
            for lang, delta in (("en", 0.2), ("de", 0.0), ("zh", -0.1), ("all", 0.03)):
                rows.append({"dagster_run_id": run, "model": model, "benchmark": "mlir", "task": "mlir",
                             "query_lang": lang, "metric": "ndcg@10", "value": base + delta + shift})
            rows.append({"dagster_run_id": run, "model": model, "benchmark": "translation", "task": "translation",
                         "query_lang": "all", "metric": "ndcg@10", "value": 1 - base})
        db.append("eval_metrics", rows)
        rows = []
    return db


def test_readme_has_the_four_queries():
    assert len(readme_queries()) == 4


def test_best_model_per_benchmark(db):
    df = db.query(readme_queries()[0])
    best = dict(zip(df.benchmark, df.best_model))
    assert best == {"mlir": "mimo", "translation": "infonce"}  # teacher_en is a reference, never best
    assert df[df.benchmark == "mlir"].ndcg_at_10.item() == pytest.approx(0.58)


def test_language_bias_gap(db):
    df = db.query(readme_queries()[1])
    gap = dict(zip(df.model, df.bias_gap))
    assert gap["mimo"] == pytest.approx(0.2 - (0.0 - 0.1) / 2)


def test_teachers_side_by_side(db):
    df = db.query(readme_queries()[3])
    assert set(df.teacher) == {"all-MiniLM-L6-v2", "all-mpnet-base-v2"}
    mimo = df[df.model == "mimo"].set_index("teacher").mlir_ndcg_at_10
    assert mimo["all-mpnet-base-v2"] - mimo["all-MiniLM-L6-v2"] == pytest.approx(0.05)


def test_cross_minus_within_uniformity(tmp_path):
    db = ResultsDB(tmp_path / "au.duckdb")
    for run, shift in (("old", 5.0), ("new", 0.0)):  # only the latest run counts
        db.append("au_metrics", [{"dagster_run_id": run, "model": m, "lang": lang, "metric": metric, "value": v + shift}
                                 for m, lang, metric, v in (
                                     ("mimo", "within", "uniformity", -1.2), ("mimo", "cross", "uniformity", -1.25),
                                     ("infonce", "within", "uniformity", -1.1), ("infonce", "cross", "uniformity", -1.6),
                                     ("infonce", "all", "alignment", 0.5), ("mimo", "de", "uniformity", -9.0))])
    df = db.query(readme_queries()[2])
    assert list(df.model) == ["infonce", "mimo"]  # the most language-separated first
    assert list(df.cross_minus_within) == pytest.approx([-0.5, -0.05])


def test_readme_documents_the_au_metrics_lang_values():
    text = (REPO / "README.md").read_text()
    for lang in ("`within`", "`cross`", "`all`", "e.g. `de`"):
        assert lang in text.split("`au_metrics` holds")[1].split("```sql")[0]


def test_readme_says_how_to_read_without_blocking_a_run():
    text = (REPO / "README.md").read_text()
    assert "duckdb -readonly data/mimo.duckdb" in text
    assert "read_parquet('data/results/eval_metrics/*.parquet'" in text
