"""The summary ``make run`` prints: corpus size, teacher cache figures and results tables.

Everything is read back from what the pipeline wrote (the manifests of the latest
materialisations and DuckDB), so the printout shows what is on disk, not what a
process remembers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from .settings import Settings
from .storage import ResultsDB

MODEL_ORDER = ("base_student", "stage1", "mimo", "mimo_lambda_0", "mimo_lambda_0.5", "mimo_lambda_1", "infonce",
               "xlco", "lakda", "use_m", "teacher_en")


def load_manifest(settings: Settings, asset: str):
    """The handle of the latest materialisation of an asset (see resources.ArtifactIOManager)."""
    path = settings.home / "manifests" / settings.profile.name / f"{asset}.pkl"
    return pickle.loads(path.read_bytes()) if path.exists() else None


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def results_table(db: ResultsDB, dagster_run_id: str | None = None) -> str:
    """`evaluation.comparison_table` of a run's rows in DuckDB (the latest run's by default), markdown,
    with its legend (intervals and the paired comparison against mimo from ``eval_compare``; with
    several seeds of a model, the mean over seeds and their standard deviation).

    Rows of older runs (no interval, no comparison: NULL columns) give plain values."""
    from .evaluation import TABLE_LEGEND, EvalResult, comparison_table

    run = dagster_run_id or next(iter(db.query(
        "SELECT dagster_run_id FROM eval_metrics ORDER BY created_at DESC LIMIT 1").dagster_run_id), None)
    df = db.query("SELECT model, seed, benchmark, task, query_lang, metric, value, ci_low, ci_high FROM eval_metrics "
                  "WHERE dagster_run_id = ?", [run])
    if df.empty:
        return "(no evaluation results yet)"
    compare = db.query("SELECT model, reference, benchmark, query_lang, metric, seed, p_holm FROM eval_compare "
                       "WHERE dagster_run_id = ?", [run])
    present = set(df.model)
    models = tuple(m for m in MODEL_ORDER if m in present) + tuple(sorted(present - set(MODEL_ORDER)))
    header, rows = comparison_table(EvalResult(tuple(df.to_dict("records")), (), models, 0.0,
                                               compare=tuple(compare.to_dict("records"))))
    return markdown_table(header, rows) + "\n\n" + TABLE_LEGEND


def print_summary(settings: Settings, dagster_run_id: str | None = None) -> None:
    """Print what a run of full_mimo produced."""
    print(f"\nMIMO_HOME={settings.home}  profile={settings.profile.name}  "
          f"teacher={settings.teacher}  student={settings.student}")
    corpus = load_manifest(settings, "parallel_corpus")
    if corpus is not None:
        per_lang: dict[str, dict[str, int]] = {}
        for (lang, split), n in corpus.rows_by_lang_split.items():
            per_lang.setdefault(lang, {})[split] = n
        print(f"\nparallel corpus ({corpus.path}):")
        print(markdown_table(["lang", "train", "eval"],
                             [(k, v.get("train", 0), v.get("eval", 0)) for k, v in sorted(per_lang.items())]))
    teacher = load_manifest(settings, "teacher_embeddings")
    if teacher is not None:
        r = teacher.report
        print(f"\nteacher cache {r.path}: {r.n_texts} texts, {r.hits} hits, {r.misses} misses, "
              f"{r.sentences_per_s:.1f} sentences/s, {r.cache_rows} rows, {r.cache_bytes / 1e6:.1f} MB")
    db_path = Path(settings.home) / "mimo.duckdb"
    if db_path.exists():
        db = ResultsDB(db_path)
        ckpts = db.query("SELECT model, seed, path FROM checkpoints WHERE dagster_run_id = ? ORDER BY model, seed",
                         [dagster_run_id or ""])
        if not ckpts.empty:
            print("\ncheckpoints:")
            from .evaluation import _seed

            print(markdown_table(["model", "seed", "path"], [(m, "" if _seed(s) is None else _seed(s), p)
                                                              for m, s, p in ckpts.itertuples(index=False)]))
        print("\nresults (query_lang = all; mean over benchmarks of a task):")
        print(results_table(db, dagster_run_id))
    au = load_manifest(settings, "au_analysis")
    if au is not None and getattr(au, "rows", None):
        from .eval_steps import au_markdown

        print("\nalignment and uniformity (MLIR pool; DuckDB au_metrics):")
        print(au_markdown(au))
    if au is not None and getattr(au, "claims_md", ""):
        print("\nthe paper's claims on this run:")
        print(au.claims_md)
    print(f"\nquery the results: duckdb -readonly {db_path}  (views checkpoints, eval_metrics, eval_compare, "
          f"au_metrics)")
