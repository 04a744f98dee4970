from typing import Optional

from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, MaterializeResult,
                     MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.corpus import CorpusResult
from mimo_pipeline.pairs import PairsResult
from mimo_pipeline.teacher import TEACHER_SPLITS, build_teacher_embeddings, check_teacher_embeddings, iter_teacher_texts
from resources import MimoSettings, ModelCatalog

from ._meta import path_meta

PRECISION_HELP = ("Encoding precision: auto (bf16 on CPUs with AMX/AVX512-BF16 and bf16 GPUs, else fp32), fp32 or "
                  "bf16. Unset = the profile's (auto). Part of the cache key: two precisions never mix.")


class TeacherEmbeddingsConfig(Config):
    precision: Optional[str] = Field(default=None, description=PRECISION_HELP)


@asset(
    group_name="teacher",
    code_version="2",
    deps=["teacher_model"],
    description="The teacher's vectors of every English sentence training reads (the corpus' train and dev "
                "splits, the retrieval pairs' English query and passage), streamed in chunks, cached as Parquet in "
                "MIMO_HOME/teacher_cache/<teacher fingerprint>/ keyed by text hash: a re-run encodes "
                "only what is missing, a teacher swap writes a new cache beside the old one. bf16 vectors "
                "(precision auto on bf16 hardware, or bf16) go to <teacher fingerprint>-bf16/.",
    check_specs=[AssetCheckSpec("all_texts_cached_and_finite", asset="teacher_embeddings")],
    io_manager_key="artifacts",
)
def teacher_embeddings(context: AssetExecutionContext, config: TeacherEmbeddingsConfig, parallel_corpus: CorpusResult,
                       retrieval_pairs: PairsResult, settings: MimoSettings, catalog: ModelCatalog):
    s = settings.resolve()

    def texts():
        return iter_teacher_texts(parallel_corpus.path, TEACHER_SPLITS, retrieval_pairs)

    result = build_teacher_embeddings(texts(), catalog.resolve_teacher(), s.teacher_cache_dir,
                                      batch_size=s.profile.encode_batch_size,
                                      precision=s.encode_precision(config.precision))
    r = result.report
    context.log.info(f"teacher cache: {r.hits} hits, {r.misses} misses, "
                     f"{r.sentences_per_s:.1f} sentences/s, {r.cache_bytes / 1e6:.1f} MB")
    check = check_teacher_embeddings(result, texts())
    return MaterializeResult(
        value=result,
        metadata={
            "path": path_meta(r.path), "teacher": result.teacher_ref, "fingerprint": result.fingerprint,
            "dim": result.dim, "precision": result.precision, "texts": r.n_texts, "hits": r.hits, "misses": r.misses,
            "sentences_per_s": MetadataValue.float(round(r.sentences_per_s, 1)),
            "encode_seconds": MetadataValue.float(round(r.seconds, 2)),
            "cache_rows": r.cache_rows, "cache_mb": MetadataValue.float(round(r.cache_bytes / 1e6, 2)),
        },
        check_results=[AssetCheckResult(check_name="all_texts_cached_and_finite", passed=check.ok,
                                        metadata={"missing": check.missing, "non_finite": check.non_finite})],
    )
