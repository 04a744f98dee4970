from typing import List, Optional

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Config,
                     MaterializeResult, MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.corpus import CorpusResult, build_parallel_corpus_cached
from mimo_pipeline.pairs import PairsConfig, PairsResult, build_stage2_pairs
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


class RetrievalPairsConfig(Config):
    """Where Stage 2's query–passage pairs come from (unset = the profile's)."""

    source_path: Optional[str] = Field(
        default=None, description="Your own pairs instead of the Bible's cross-references: the mMARCO-parallel layout "
                                  "(query_<lang> and positive_<lang> columns; 'dt' read as Dutch 'nl'), e.g. the "
                                  "MIMO release's datasets folder, or the long layout (pair_id, lang, query, "
                                  "passage); a datasets folder, Parquet or TSV, streamed.")
    languages: Optional[List[str]] = Field(default=None, description="With source_path: the non-English languages "
                                                                     "to use (default: all the file has).")
    max_pairs: Optional[int] = Field(default=None, description="Seeded sample cap on pairs (default: the profile's).")
    seed: Optional[int] = Field(default=None, description="Seed of the sample and the language draws.")
    bible_cross_references: Optional[bool] = Field(
        default=None, description="With a user corpus and no source_path: pair its training verses by the packaged "
                                  "Bible's cross-references (its verse_id values must be Bible ids 'B.C.V').")


@asset(
    group_name="data",
    code_version="3",
    description="Stage-2 query–passage pairs: an Old Testament training verse and one of its cross-references (never "
                "dev or eval), or the user's pairs (source_path: mMARCO-parallel or long layout); each side in both "
                "languages of an ordered language pair (a ≠ b) drawn uniformly, the passage also in a language c "
                "drawn independently (LaKDA), plus the English versions the teacher embeds.",
    check_specs=[AssetCheckSpec("pairs_cross_languages", asset="retrieval_pairs")],
    io_manager_key="artifacts",
)
def retrieval_pairs(context: AssetExecutionContext, config: RetrievalPairsConfig, parallel_corpus: CorpusResult,
                    settings: MimoSettings):
    s = settings.resolve()
    base = s.profile.pairs
    pairs_config = PairsConfig(
        max_pairs=config.max_pairs if config.max_pairs is not None else base.max_pairs,
        seed=config.seed if config.seed is not None else base.seed,
        source_path=config.source_path if config.source_path is not None else base.source_path,
        languages=tuple(config.languages) if config.languages else base.languages)
    result: PairsResult = build_stage2_pairs(parallel_corpus, s.home / "corpus" / "pairs", pairs_config,
                                             bible_cross_references=config.bible_cross_references)
    same = sum(n for (a, b), n in result.pairs_by_lang_pair.items() if a == b)
    context.log.info(f"retrieval pairs {result.path}: {result.n_pairs} pairs from {result.source} "
                     f"({result.layout}); dropped {result.dropped or 'none'}")
    metadata = {"path": path_meta(result.path), "dagster/row_count": MetadataValue.int(result.n_pairs),
                "source": MetadataValue.text(result.source), "layout": MetadataValue.text(result.layout),
                "languages": MetadataValue.text(" ".join(result.languages)),
                "language_pairs": md_table(["lang_a", "lang_b", "pairs"],
                                           [(a, b, n) for (a, b), n in sorted(result.pairs_by_lang_pair.items())])}
    if result.layout != "bible":
        metadata["rows_read"] = MetadataValue.int(result.rows_read)
        metadata["dropped"] = MetadataValue.json(result.dropped)
        metadata["rows_missing_a_language"] = md_table(["lang", "rows"], sorted(result.missing_by_lang.items()))
    return MaterializeResult(
        value=result, metadata=metadata,
        check_results=[AssetCheckResult(check_name="pairs_cross_languages", passed=result.n_pairs > 0 and same == 0,
                                        metadata={"pairs": result.n_pairs, "same_language": same})],
    )
