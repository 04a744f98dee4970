import dataclasses
from typing import List, Optional

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Config,
                     MaterializeResult, MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.corpus import (DEFAULT_LANGUAGES, FILTER_PRESETS, SPLITS, CorpusResult,
                                  build_parallel_corpus_cached)
from mimo_pipeline.pairs import PairsConfig, PairsResult, build_stage2_pairs
from resources import MimoSettings

from ._meta import md_table, path_meta


class ParallelCorpusConfig(Config):
    """Overrides of the profile's corpus settings (unset = the profile's value)."""

    languages: Optional[List[str]] = Field(
        default=None, description="Non-English ISO 639-1 codes (default: de fr es ru ar zh ko; for a user corpus, "
                                  "the languages the file has).")
    extra_languages: List[str] = Field(default_factory=list, description="Languages added to the set.")
    source_path: Optional[str] = Field(
        default=None, description="A user corpus (TSV/Parquet/datasets folder with en, text, lang, optional split, "
                                  "verse_id) instead of the packaged Bible; read in streamed batches.")
    max_train_verses: Optional[int] = Field(default=None, description="Cap on training verses (seeded sample).")
    max_dev_verses: Optional[int] = Field(default=None, description="Cap on dev verses (seeded sample).")
    max_eval_verses: Optional[int] = Field(default=None, description="Cap on evaluation verses (seeded sample).")
    filter_preset: Optional[str] = Field(
        default=None, description="Filter settings by name: 'pipeline' (the default: script-aware length units "
                                  "10-1000, ratio <= 3, English de-duplicated per language, no language cap) or "
                                  "'official' (the MIMO release's Stage-1 preparation: 10-512 characters, ratio <= 3, "
                                  "English de-duplicated across languages, 500,000 pairs per language). The fields "
                                  "below override single settings.")
    min_chars: Optional[int] = Field(default=None, description="Shortest side, at least (length_unit).")
    max_chars: Optional[int] = Field(default=None, description="Longest side, at most (length_unit).")
    max_length_ratio: Optional[float] = Field(default=None, description="Longest/shortest side, at most.")
    length_unit: Optional[str] = Field(default=None, description="'units' (script-aware: a Han ideograph 3.5) or "
                                                                 "'chars' (code points, the official count).")
    english_dedup: Optional[str] = Field(default=None, description="'language' (an English sentence once per "
                                                                   "language) or 'corpus' (once in the whole "
                                                                   "training split, the official way).")
    max_per_language: Optional[int] = Field(default=None, description="Cap on training pairs per language (the "
                                                                      "first ones kept); official: 500,000.")
    eval_fraction: Optional[float] = Field(default=None, description="User corpus without a split: share of "
                                                                     "sentences held out as eval.")
    dev_fraction: Optional[float] = Field(default=None, description="User corpus without a split: share of "
                                                                    "sentences held out as dev.")
    seed: Optional[int] = None


@asset(
    group_name="data",
    code_version="2",
    description="English–X parallel pairs from the packaged Bible (or a user corpus, streamed), filtered and split "
                "by book: Old Testament = train, less seven whole dev books (Ruth, Esther, Proverbs, Ecclesiastes, "
                "Joel, Micah, Malachi) = dev, New Testament = eval (test only). Parquet under MIMO_HOME/corpus. "
                "Metadata: rows kept and dropped per language, split and reason; the filter settings in force.",
    check_specs=[AssetCheckSpec("every_language_has_pairs", asset="parallel_corpus")],
    io_manager_key="artifacts",
)
def parallel_corpus(context: AssetExecutionContext, config: ParallelCorpusConfig, settings: MimoSettings):
    s = settings.resolve()
    if config.languages:
        languages = tuple(dict.fromkeys((*config.languages, *config.extra_languages)))
    elif config.source_path is not None:
        # a user corpus: every language the file has, whatever the profile (DEFAULT_LANGUAGES says "all" to the
        # library); extra_languages cannot add to that, and merged in they would turn "all" into a filter
        languages = DEFAULT_LANGUAGES
        if config.extra_languages:
            context.log.info(f"extra_languages {config.extra_languages} ignored: without `languages`, a user corpus "
                             "keeps every language its file has")
    else:
        languages = tuple(dict.fromkeys((*s.profile.corpus.languages, *config.extra_languages)))
    base = s.with_corpus(languages=languages, source_path=config.source_path)
    if config.filter_preset is not None:
        base = base.with_preset(config.filter_preset)
    overrides = {k: getattr(config, k) for k in (
        "max_train_verses", "max_dev_verses", "max_eval_verses", "min_chars", "max_chars", "max_length_ratio",
        "length_unit", "english_dedup", "max_per_language", "eval_fraction", "dev_fraction", "seed")}
    corpus_config = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    result = build_parallel_corpus_cached(corpus_config, s.corpus_dir)

    per_lang = {}
    for (lang, split), n in sorted(result.rows_by_lang_split.items()):
        per_lang.setdefault(lang, {})[split] = n
    empty = sorted(lang for lang in result.languages if not sum(per_lang.get(lang, {}).values()))
    filters = result.filters or corpus_config.filter_settings()
    context.log.info(f"parallel corpus {result.path}: {result.n_rows} rows; filters {filters}; verses per split "
                     f"{result.n_verses_by_split}")
    return MaterializeResult(
        value=result,
        metadata={
            "path": path_meta(result.path),
            "dagster/row_count": MetadataValue.int(result.n_rows),
            "source": MetadataValue.text(result.source),
            "languages": MetadataValue.text(" ".join(result.languages)),
            "rows_per_language": md_table(
                ["lang", *SPLITS], [(lang, *(d.get(sp, 0) for sp in SPLITS)) for lang, d in sorted(per_lang.items())]),
            "verses_per_split": MetadataValue.json(result.n_verses_by_split),
            "filter_settings": MetadataValue.json(filters),
            "filter_presets": MetadataValue.json(FILTER_PRESETS),
            "filters": md_table(["lang", *result.stats_columns], result.stats_rows),
            "filters_by_split": md_table(["lang", "split", *result.stats_columns], result.stats_by_split),
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
