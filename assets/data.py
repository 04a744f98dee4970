from typing import List, Optional

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Config,
                     MaterializeResult, MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.corpus import build_parallel_corpus_cached
from resources import MimoSettings

from ._meta import md_table, path_meta


class ParallelCorpusConfig(Config):
    """Overrides of the profile's corpus settings (unset = the profile's value)."""

    languages: Optional[List[str]] = Field(
        default=None, description="Non-English ISO 639-1 codes (default: de fr es ru ar zh ko).")
    extra_languages: List[str] = Field(default_factory=list, description="Languages added to the set.")
    source_path: Optional[str] = Field(
        default=None, description="A user corpus (TSV/Parquet/datasets folder with en, text, lang) "
                                  "instead of the packaged Bible.")
    max_train_verses: Optional[int] = Field(default=None, description="Cap on training verses (seeded sample).")
    max_eval_verses: Optional[int] = Field(default=None, description="Cap on evaluation verses (seeded sample).")
    max_length_ratio: Optional[float] = Field(default=None, description="Longest/shortest side, at most.")
    seed: Optional[int] = None


@asset(
    group_name="data",
    code_version="1",
    description="English–X parallel pairs from the packaged Bible (or a user corpus), filtered and split "
                "by book: Old Testament = train, New Testament = eval. Parquet under MIMO_HOME/corpus.",
    check_specs=[AssetCheckSpec("every_language_has_pairs", asset="parallel_corpus")],
    io_manager_key="artifacts",
)
def parallel_corpus(context: AssetExecutionContext, config: ParallelCorpusConfig, settings: MimoSettings):
    s = settings.resolve()
    languages = tuple(config.languages) if config.languages else s.profile.corpus.languages
    languages = tuple(dict.fromkeys((*languages, *config.extra_languages)))
    corpus_config = s.with_corpus(
        languages=languages, source_path=config.source_path, max_train_verses=config.max_train_verses,
        max_eval_verses=config.max_eval_verses, max_length_ratio=config.max_length_ratio, seed=config.seed)
    result = build_parallel_corpus_cached(corpus_config, s.corpus_dir)

    rows = sorted(result.rows_by_lang_split.items())
    per_lang = {}
    for (lang, split), n in rows:
        per_lang.setdefault(lang, {})[split] = n
    empty = sorted(lang for lang in result.languages if not sum(per_lang.get(lang, {}).values()))
    return MaterializeResult(
        value=result,
        metadata={
            "path": path_meta(result.path),
            "dagster/row_count": MetadataValue.int(result.n_rows),
            "languages": MetadataValue.text(" ".join(result.languages)),
            "rows_per_language": md_table(
                ["lang", "train", "eval"],
                [(lang, d.get("train", 0), d.get("eval", 0)) for lang, d in sorted(per_lang.items())]),
            "filters": md_table(["lang", *result.stats_columns], result.stats_rows),
        },
        check_results=[AssetCheckResult(
            check_name="every_language_has_pairs", passed=not empty, severity=AssetCheckSeverity.ERROR,
            metadata={"languages_without_pairs": MetadataValue.text(" ".join(empty) or "none")})],
    )
