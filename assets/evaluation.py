from typing import List, Optional

from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, MaterializeResult,
                     MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.benchmarks import BenchmarkConfig, BenchmarkSet, build_benchmark_set
from mimo_pipeline.corpus import CorpusResult
from mimo_pipeline.eval_steps import run_au_analysis, run_mlir_eval
from mimo_pipeline.evaluation import EvalConfig, EvalResult
from resources import MimoSettings, MlflowTracking, ModelCatalog, ResultsStore

from ._meta import md_table, path_meta, png_meta
from .teacher import PRECISION_HELP


class BenchmarksConfig(Config):
    """Sizes of the held-out Bible benchmarks (unset = the profile's) and user benchmark folders."""

    query_verses: Optional[int] = Field(default=None, description="Query verses (each in every language).")
    pool_verses: Optional[int] = Field(default=None, description="Pool verses (each in every language).")
    translation_queries: Optional[int] = Field(default=None, description="Verses queried in the translation task.")
    user_folders: List[str] = Field(default_factory=list, description="BEIR or MIMO-release benchmark folders.")
    dev_query_verses: Optional[int] = Field(default=None, description="dev- benchmarks: query verses (unset: a "
                                                                      "quarter of query_verses).")
    dev_pool_verses: Optional[int] = Field(default=None, description="dev- benchmarks: pool verses (unset: a "
                                                                     "quarter of pool_verses).")
    dev_translation_queries: Optional[int] = Field(default=None, description="dev- benchmarks: translation queries "
                                                                             "(unset: a quarter).")
    bible_benchmarks: Optional[bool] = Field(
        default=None, description="Build mlir/monolingual from the packaged Bible's cross-references (unset: yes for "
                                  "the Bible, no for a user corpus, whose verse_id values would have to be Bible ids).")


@asset(
    group_name="evaluation",
    code_version="2",
    description="Held-out benchmarks from the New Testament in BEIR form: mlir (queries in every language, one "
                "mixed pool), monolingual-<lang>, translation; the same, a quarter the size, from the dev books "
                "(dev-mlir, dev-monolingual-<lang>, dev-translation); plus any user BEIR folders. With a user "
                "corpus: translation and dev-translation from its eval and dev splits, the Bible unread.",
    check_specs=[AssetCheckSpec("every_benchmark_has_queries", asset="mlir_benchmarks")],
    io_manager_key="artifacts",
)
def mlir_benchmarks(context: AssetExecutionContext, config: BenchmarksConfig, parallel_corpus: CorpusResult,
                    settings: MimoSettings):
    s = settings.resolve()
    bench_config = s.with_benchmarks(query_verses=config.query_verses, pool_verses=config.pool_verses,
                                     translation_queries=config.translation_queries,
                                     dev_query_verses=config.dev_query_verses, dev_pool_verses=config.dev_pool_verses,
                                     dev_translation_queries=config.dev_translation_queries,
                                     bible_benchmarks=config.bible_benchmarks,
                                     # the profile's pool sizes (nobody chose them) shrink to a small split
                                     fit_pool=config.pool_verses is None and config.dev_pool_verses is None)
    result = build_benchmark_set(parallel_corpus.path, parallel_corpus.languages, s.home / "benchmarks",
                                 bench_config, user_folders=config.user_folders,
                                 user_corpus=not getattr(parallel_corpus, "is_bible", True))
    for note in result.notes:
        context.log.info(note)
    cols = ["name", "task", "documents", "queries", "qrels", "languages"]
    empty = [b["name"] for b in result.summaries if not b["queries"]]
    return MaterializeResult(
        value=result,
        metadata={"path": path_meta(result.root), "benchmarks": md_table(cols, [[b[c] for c in cols]
                                                                              for b in result.summaries]),
                  "notes": MetadataValue.text("; ".join(result.notes) or "none"),
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
    n_resamples: int = Field(default=1000, description="Bootstrap resamples of the verses behind the uniformity "
                                                       "comparisons of the claims (>= 1000).")
    max_verses: int = Field(default=500, description="MLIR pool verses (each in every language) A–U is computed on.")


@asset(
    group_name="evaluation",
    code_version="2",
    deps=["teacher_model"],
    description="Every model (base_student, stage1, mimo and the λ ablation, infonce, xlco, lakda, use_m, every "
                "training seed; teacher_en on the English pool as a reference) on every benchmark: nDCG@10/@20, "
                "Recall@10/@100, MRR@10, MAP@100 per query language and all, MRC@10, PEER@100, own_lang@10, with "
                "intervals over topics and paired tests against mimo. Rows go to DuckDB eval_metrics and "
                "eval_compare, one MLflow run per model and seed.",
    check_specs=[AssetCheckSpec("metrics_in_range", asset="mlir_eval")],
    io_manager_key="artifacts",
)
def mlir_eval(context: AssetExecutionContext, config: MlirEvalConfig, mlir_benchmarks: BenchmarkSet,
              student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints, settings: MimoSettings,
              catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    report = run_mlir_eval(
        student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints, catalog.resolve_teacher(),
        mlir_benchmarks, cache_root=s.home / "embed_cache",
        config=EvalConfig(k=config.k, index=config.index, batch_size=config.batch_size,
                          n_resamples=config.n_resamples),
        precision=s.encode_precision(config.precision), db=results.db(), tracker=tracking.tracker(),
        dagster_run_id=context.run.run_id)
    result = report.result
    metadata = {"comparison": MetadataValue.md(report.table_md),
                "comparisons_vs_mimo": MetadataValue.int(len(result.compare)),
                "dagster/row_count": MetadataValue.int(len(result.rows)),
                "models": MetadataValue.text(" ".join(result.models)),
                "seeds": MetadataValue.json(report.seeds),
                "benchmarks": MetadataValue.text(" ".join(result.benchmarks)),
                "precision": MetadataValue.text(report.precision),
                "texts_encoded": MetadataValue.json(dict(result.encoded)),
                "model_loads": MetadataValue.json(dict(result.loads)),
                # benchmarks whose figures an earlier run computed from the same vectors (read, not recomputed)
                "benchmarks_kept": MetadataValue.json(dict(result.kept)),
                "seconds": MetadataValue.float(round(result.encode_seconds, 1))}
    if report.dev_table_md:
        metadata["comparison_dev"] = MetadataValue.md(report.dev_table_md)
    return MaterializeResult(
        value=result, metadata=metadata,
        check_results=[AssetCheckResult(check_name="metrics_in_range",
                                        passed=bool(result.rows) and not report.out_of_range,
                                        metadata={"out_of_range": report.out_of_range, "rows": len(result.rows)})],
    )


@asset(
    group_name="evaluation",
    code_version="3",
    description="Alignment and uniformity (Wang & Isola 2020) per model on the MLIR pool's verses, from the vectors "
                "mlir_eval cached: alignment over translation pairs (with English per language, all language pairs "
                "under 'all'), uniformity within each language, across languages and pooled; plots of alignment vs "
                "each uniformity, the λ ablation and per-language MLIR nDCG@10 under MIMO_HOME/plots. Then the "
                "claims report: whether the paper's claims (a)-(d) hold on this run, with the figures, intervals "
                "and p-values that decide them, and whether the baselines trained on mimo's budget. Rows go to "
                "DuckDB au_metrics.",
    check_specs=[AssetCheckSpec("figures_finite", asset="au_analysis")],
    io_manager_key="artifacts",
)
def au_analysis(context: AssetExecutionContext, config: AuConfig, mlir_benchmarks: BenchmarkSet,
                mlir_eval: EvalResult, student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints,
                settings: MimoSettings, catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    report = run_au_analysis(
        student_base, stage1_checkpoint, stage2_checkpoint, baseline_checkpoints, mlir_benchmarks, mlir_eval,
        cache_root=s.home / "embed_cache", plots_dir=s.home / "plots", precision=s.encode_precision(config.precision),
        db=results.db(), tracker=tracking.tracker(), dagster_run_id=context.run.run_id,
        teacher_name=catalog.resolve_teacher().name, n_resamples=config.n_resamples, max_verses=config.max_verses)
    result = report.result
    metadata = {"alignment_uniformity": MetadataValue.md(report.au_table_md),
                "claims": MetadataValue.md(report.claims_md),
                "claims_path": path_meta(report.claims_path),
                "verdicts": MetadataValue.json(report.claims.verdicts()),
                "au_plot": path_meta(result.au_plot), "au_plot_image": png_meta(result.au_plot),
                "dagster/row_count": MetadataValue.int(len(result.rows)),
                "verses": MetadataValue.int(result.n_verses),
                "texts_encoded": MetadataValue.int(result.texts_encoded),
                "model_loads": MetadataValue.int(result.loads),
                "precision": MetadataValue.text(report.precision)}
    for key, plot in (("ndcg_plot", result.ndcg_plot), ("lambda_plot", result.lambda_plot)):
        if plot:
            metadata[key] = path_meta(plot)
            metadata[f"{key}_image"] = png_meta(plot)
    return MaterializeResult(value=result, metadata=metadata,
                             check_results=[AssetCheckResult(check_name="figures_finite", passed=not report.non_finite,
                                                             metadata={"non_finite": report.non_finite})])
