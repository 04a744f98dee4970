from typing import List, Optional

from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, MaterializeResult,
                     MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.benchmarks import BenchmarkConfig, BenchmarkSet, build_benchmark_set
from mimo_pipeline.corpus import CorpusResult
from mimo_pipeline.evaluation import (TABLE_LEGEND, EvalConfig, EvalResult, alignment_uniformity,
                                      comparison_table, evaluate_models)
from mimo_pipeline.models import evaluation_models
from mimo_pipeline.report import markdown_table
from resources import MimoSettings, MlflowTracking, ModelCatalog, ResultsStore

from ._meta import md_table, path_meta, png_meta
from .teacher import PRECISION_HELP


class BenchmarksConfig(Config):
    """Sizes of the held-out Bible benchmarks (unset = the profile's) and user benchmark folders."""

    query_verses: Optional[int] = Field(default=None, description="Query verses (each in every language).")
    pool_verses: Optional[int] = Field(default=None, description="Pool verses (each in every language).")
    translation_queries: Optional[int] = Field(default=None, description="Verses queried in the translation task.")
    user_folders: List[str] = Field(default_factory=list, description="BEIR or MIMO-release benchmark folders.")


@asset(
    group_name="evaluation",
    code_version="1",
    description="Held-out benchmarks from the New Testament in BEIR form: mlir (queries in every language, one "
                "mixed pool), monolingual-<lang>, translation; plus any user BEIR folders.",
    check_specs=[AssetCheckSpec("every_benchmark_has_queries", asset="mlir_benchmarks")],
    io_manager_key="artifacts",
)
def mlir_benchmarks(context: AssetExecutionContext, config: BenchmarksConfig, parallel_corpus: CorpusResult,
                    settings: MimoSettings):
    s = settings.resolve()
    bench_config = s.with_benchmarks(query_verses=config.query_verses, pool_verses=config.pool_verses,
                                     translation_queries=config.translation_queries)
    result = build_benchmark_set(parallel_corpus.path, parallel_corpus.languages, s.home / "benchmarks",
                                 bench_config, user_folders=config.user_folders)
    cols = ["name", "task", "documents", "queries", "qrels", "languages"]
    empty = [b["name"] for b in result.summaries if not b["queries"]]
    return MaterializeResult(
        value=result,
        metadata={"path": path_meta(result.root), "benchmarks": md_table(cols, [[b[c] for c in cols]
                                                                              for b in result.summaries]),
                  "dagster/row_count": MetadataValue.int(sum(b["queries"] for b in result.summaries))},
        check_results=[AssetCheckResult(check_name="every_benchmark_has_queries", passed=not empty,
                                        metadata={"empty": MetadataValue.text(" ".join(empty) or "none")})],
    )


class MlirEvalConfig(Config):
    index: str = Field(default="flat", description="faiss index: flat (exact), ivf or hnsw (large pools).")
    k: int = Field(default=100, description="Ranking depth.")
    batch_size: int = Field(default=64, description="Encoding batch size.")
    n_resamples: int = Field(default=2000, description="Bootstrap resamples and randomisation-test draws of the "
                                                       "intervals over topics and the tests against mimo (>= 1000).")
    precision: Optional[str] = Field(default=None, description=PRECISION_HELP)


class AuConfig(Config):
    precision: Optional[str] = Field(
        default=None, description=PRECISION_HELP + " Use mlir_eval's, so its cached vectors are reused.")


@asset(
    group_name="evaluation",
    code_version="1",
    deps=["teacher_model"],
    description="Every model (base_student, stage1, mimo, infonce, xlco, lakda, use_m; teacher_en on the English "
                "pool as a reference) on every benchmark: nDCG@10/@20, Recall@10/@100, MRR@10, MAP@100 per "
                "query language and all, MRC@10, PEER@100. Rows go to DuckDB eval_metrics, headlines to MLflow.",
    check_specs=[AssetCheckSpec("metrics_in_range", asset="mlir_eval")],
    io_manager_key="artifacts",
)
def mlir_eval(context: AssetExecutionContext, config: MlirEvalConfig, mlir_benchmarks: BenchmarkSet,
              student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints, settings: MimoSettings,
              catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    precision = s.encode_precision(config.precision)
    models, only = evaluation_models(student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints,
                                     catalog.resolve_teacher(), batch_size=config.batch_size, precision=precision)
    result = evaluate_models(models, mlir_benchmarks, s.home / "embed_cache",
                             EvalConfig(k=config.k, index=config.index, batch_size=config.batch_size,
                                        n_resamples=config.n_resamples), only=only)
    run_id = context.run.run_id
    teacher = catalog.resolve_teacher()
    db = results.db()
    db.append("eval_metrics", [{**r, "dagster_run_id": run_id} for r in result.rows])
    db.append("eval_compare", [{**r, "dagster_run_id": run_id} for r in result.compare])
    tracker = tracking.tracker()
    for model in result.models:
        with tracker.run(f"eval {model} · {teacher.name}", dagster_run_id=run_id,
                         tags={"model": model, "teacher": teacher.name, "asset": "mlir_eval"}) as run:
            run.log_metrics({f"{r['benchmark']}/{r['metric']}": r["value"] for r in result.rows
                             if r["model"] == model and r["query_lang"] == "all"})
    header, rows = comparison_table(result)
    bad = [r for r in result.rows if r["metric"] != "mrc@10" and not 0.0 <= r["value"] <= 1.0]
    return MaterializeResult(
        value=result,
        metadata={"comparison": MetadataValue.md(markdown_table(header, rows) + "\n\n" + TABLE_LEGEND),
                  "comparisons_vs_mimo": MetadataValue.int(len(result.compare)),
                  "dagster/row_count": MetadataValue.int(len(result.rows)),
                  "models": MetadataValue.text(" ".join(result.models)),
                  "benchmarks": MetadataValue.text(" ".join(result.benchmarks)),
                  "precision": MetadataValue.text(_resolved(models)),
                  "seconds": MetadataValue.float(round(result.encode_seconds, 1))},
        check_results=[AssetCheckResult(check_name="metrics_in_range", passed=bool(result.rows) and not bad,
                                        metadata={"out_of_range": len(bad), "rows": len(result.rows)})],
    )


@asset(
    group_name="evaluation",
    code_version="1",
    description="Alignment and uniformity (Wang & Isola 2020) per model, per language (vs English) and across "
                "languages, on the MLIR pool's verses; plots of uniformity vs alignment and per-language MLIR "
                "nDCG@10 under MIMO_HOME/plots. Rows go to DuckDB au_metrics.",
    check_specs=[AssetCheckSpec("figures_finite", asset="au_analysis")],
    io_manager_key="artifacts",
)
def au_analysis(context: AssetExecutionContext, config: AuConfig, mlir_benchmarks: BenchmarkSet,
                mlir_eval: EvalResult, student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints,
                settings: MimoSettings, catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    models, _ = evaluation_models(student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints, None,
                                  precision=s.encode_precision(config.precision))
    result = alignment_uniformity(models, mlir_benchmarks.load("mlir"), s.home / "embed_cache", s.home / "plots",
                                  mlir_eval)
    run_id = context.run.run_id
    results.db().append("au_metrics", [{**r, "dagster_run_id": run_id} for r in result.rows])
    with tracking.tracker().run(f"au_analysis · {catalog.resolve_teacher().name}", dagster_run_id=run_id,
                                tags={"asset": "au_analysis"}) as run:
        run.log_metrics({f"{r['model']}/{r['lang']}/{r['metric']}": r["value"] for r in result.rows})
        for plot in (result.au_plot, result.ndcg_plot):
            if plot:
                run.log_artifact(plot, "plots")
    table = [[m, f"{a:.4f}", f"{u:.4f}"] for m, a, u in _all_rows(result.rows)]
    metadata = {"alignment_uniformity": md_table(["model", "alignment", "uniformity"], table),
                "au_plot": path_meta(result.au_plot), "dagster/row_count": MetadataValue.int(len(result.rows)),
                "au_plot_image": png_meta(result.au_plot), "precision": MetadataValue.text(_resolved(models))}
    if result.ndcg_plot:
        metadata["ndcg_plot"] = path_meta(result.ndcg_plot)
        metadata["ndcg_plot_image"] = png_meta(result.ndcg_plot)
    import math
    bad = [r for r in result.rows if not math.isfinite(r["value"])]
    return MaterializeResult(value=result, metadata=metadata,
                             check_results=[AssetCheckResult(check_name="figures_finite", passed=not bad,
                                                             metadata={"non_finite": len(bad)})])


def _resolved(models) -> str:
    """The resolved precision of the checkpoint models (use_m has none: it is numpy fp32)."""
    return " ".join(sorted({m.precision for m in models.values() if hasattr(m, "precision")})) or "fp32"


def _all_rows(rows):
    by_model = {}
    for r in rows:
        if r["lang"] == "all":
            by_model.setdefault(r["model"], {})[r["metric"]] = r["value"]
    return [(m, v.get("alignment", float("nan")), v.get("uniformity", float("nan"))) for m, v in by_model.items()]
