"""What the evaluation assets do, one function each: `run_mlir_eval` and `run_au_analysis`.

Each takes the trained models' handles, the results store and the MLflow tracker (passed in
by the asset: this module never imports Dagster), evaluates, writes the rows to DuckDB and the
runs to MLflow, and returns a report with the markdown tables and figures the asset shows.

- `run_mlir_eval`: `models.evaluation_models` -> `evaluation.evaluate_models` -> rows into
  ``eval_metrics`` and ``eval_compare``; one MLflow run per model and seed; the comparison
  table (test benchmarks; development benchmarks ``dev-*`` in a table of their own).
- `run_au_analysis`: the same models' cached vectors -> `evaluation.alignment_uniformity`
  (rows into ``au_metrics``, plots), then `claims.evaluate_claims` on the evaluation's rows
  and the A–U figures, with the training-budget line last (`claims.budget_note`); one MLflow run
  with the figures, plots and ``claims.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from .claims import ClaimsReport, budget_note, evaluate_claims, training_rows
from .evaluation import (TABLE_LEGEND, AUResult, EvalConfig, EvalResult, alignment_uniformity, au_points,
                         comparison_table, evaluate_models)
from .fileio import atomic_path
from .models import evaluation_models
from .report import markdown_table


@dataclass(frozen=True)
class MlirEvalReport:
    """What `run_mlir_eval` did: the result (what the asset hands on) and what it shows."""

    result: EvalResult
    table_md: str  # the comparison table of the test benchmarks, with its legend
    dev_table_md: str  # the same over the development benchmarks ("" when there are none)
    out_of_range: int  # figures outside [0, 1] (MRC@10 is in [-100, 100] and not counted)
    precision: str  # the resolved precision of the checkpoint models
    seeds: dict  # model key -> training seed (None: not trained or not known)


@dataclass(frozen=True)
class AUReport:
    """What `run_au_analysis` did: the A–U result (its ``claims_md`` set) and what the asset shows."""

    result: AUResult
    au_table_md: str
    claims: ClaimsReport
    claims_md: str
    claims_path: str
    non_finite: int
    precision: str


def _resolved(models) -> str:
    """The resolved precision of the checkpoint models (use_m has none: it is numpy fp32)."""
    return " ".join(sorted({m.precision for m in models.values() if hasattr(m, "precision")})) or "fp32"


def _run_name(model: str, seed, teacher: str) -> str:
    return f"eval {model}" + ("" if seed is None else f" · seed {seed}") + f" · {teacher}"


def run_mlir_eval(student_base, stage1, stage2, baselines, teacher, benchmark_set, *, cache_root: str | Path,
                  config: EvalConfig, precision: str, db, tracker, dagster_run_id: str) -> MlirEvalReport:
    """Evaluate every model (`models.evaluation_models`; ``teacher``, a ResolvedModel or None,
    adds ``teacher_en`` on the English pool) on every benchmark of ``benchmark_set``; write
    ``eval_metrics`` and ``eval_compare`` rows (``db``: `storage.ResultsDB`) and one MLflow run
    per model and seed (``tracker``: `tracking.Tracker`): its figures at query_lang ``all``,
    their interval bounds, and its differences from mimo."""
    em = evaluation_models(student_base, stage1, stage2, baselines, teacher, batch_size=config.batch_size,
                           precision=precision)
    result = evaluate_models(em.models, benchmark_set, cache_root, config, only=em.only, seeds=em.seeds)
    db.append("eval_metrics", [{**r, "dagster_run_id": dagster_run_id} for r in result.rows])
    db.append("eval_compare", [{**r, "dagster_run_id": dagster_run_id} for r in result.compare])
    teacher_name = teacher.name if teacher is not None else "no teacher"
    metrics: dict[tuple, dict[str, float]] = {}  # (model, seed) -> MLflow metrics, in the rows' order
    for r in result.rows:
        m = metrics.setdefault((r["model"], r["seed"]), {})
        if r["query_lang"] == "all":
            m[f"{r['benchmark']}/{r['metric']}"] = r["value"]
            if r["ci_low"] is not None:
                m[f"{r['benchmark']}/{r['metric']}/ci_low"] = r["ci_low"]
                m[f"{r['benchmark']}/{r['metric']}/ci_high"] = r["ci_high"]
    for c in result.compare:
        m = metrics[(c["model"], c["seed"])]
        m[f"{c['benchmark']}/{c['metric']}/delta_vs_{c['reference']}"] = c["delta"]
        m[f"{c['benchmark']}/{c['metric']}/p_holm_vs_{c['reference']}"] = c["p_holm"]
    for (model, seed), m in metrics.items():
        tags = {"model": model, "teacher": teacher_name, "asset": "mlir_eval"}
        if seed is not None:
            tags["seed"] = str(seed)
        with tracker.run(_run_name(model, seed, teacher_name), dagster_run_id=dagster_run_id, tags=tags) as run:
            run.log_metrics(m)
    header, rows = comparison_table(result)
    table = markdown_table(header, rows) + "\n\n" + TABLE_LEGEND
    dev_header, dev_rows = comparison_table(result, dev=True)
    dev_table = markdown_table(dev_header, dev_rows) if len(dev_header) > 1 else ""
    bad = sum(1 for r in result.rows if r["metric"] != "mrc@10" and not 0.0 <= r["value"] <= 1.0)
    return MlirEvalReport(result, table, dev_table, bad, _resolved(em.models), dict(em.seeds))


AU_LEGEND = ("alignment: mean ‖f(x) − f(y)‖² over translation pairs of two different languages (lower = better "
             "aligned). Uniformity log E exp(−2‖f(x) − f(y)‖²), lower = more uniform: within = mean over languages "
             "of each language's own figure; cross = pairs of different verses in different languages (below "
             "within: the languages sit apart); pooled = all languages together (also lower when languages "
             "separate, so it rewards language bias). DuckDB au_metrics: lang <xx> (alignment with English, "
             "uniformity within xx), all (alignment; pooled uniformity), within, cross.")


def au_markdown(result: AUResult) -> str:
    """Per model: alignment, within / cross / pooled uniformity and cross − within, with the legend."""
    rows = []
    for model, p in au_points(result.rows).items():
        gap = p["cross"] - p["within"] if "cross" in p and "within" in p else None
        rows.append([model, *(f"{p[k]:.4f}" if k in p else "" for k in ("alignment", "within", "cross", "all")),
                     "" if gap is None else f"{gap:+.4f}"])
    return markdown_table(["model", "alignment ↓", "uniformity within ↓", "uniformity cross", "uniformity pooled",
                           "cross − within"], rows) + "\n\n" + AU_LEGEND


#: The benchmark whose pool A–U reads, in order of preference: both pools hold every verse in every
#: language; a user corpus has translation only (its mlir needs the Bible's cross-references).
AU_BENCHMARKS = ("mlir", "translation")


def au_benchmark(benchmark_set) -> str:
    """The first of `AU_BENCHMARKS` that ``benchmark_set`` has (an error naming them when none)."""
    from .errors import MimoInputError

    found = next((name for name in AU_BENCHMARKS if name in benchmark_set.names), None)
    if found is None:
        raise MimoInputError(f"alignment–uniformity reads the pool of one of {AU_BENCHMARKS} (every verse in every "
                             f"language); this run has only {list(benchmark_set.names)}", source="mlir_benchmarks")
    return found


def claims_benchmark(eval_result: EvalResult) -> str:
    """The MLIR benchmark claims (a) and (d) read: ``mlir`` (the Bible's) when the run has it, else
    the first test benchmark of task ``mlir`` (a user folder, e.g. the MIMO release's Belebele_test)."""
    from .benchmarks import is_dev_benchmark

    tasks = {r["benchmark"]: r["task"] for r in eval_result.rows}
    mlir = [b for b in eval_result.benchmarks if tasks.get(b) == "mlir" and not is_dev_benchmark(b)]
    return "mlir" if "mlir" in mlir or not mlir else mlir[0]


def run_au_analysis(student_base, stage1, stage2, baselines, benchmark_set, eval_result: EvalResult, *,
                    cache_root: str | Path, plots_dir: str | Path, precision: str, db, tracker, dagster_run_id: str,
                    teacher_name: str = "", n_resamples: int = 1000, max_verses: int = 500) -> AUReport:
    """Alignment–uniformity of every evaluated model on the MLIR pool's verses (the translation
    pool's without an mlir benchmark, see `au_benchmark`; the vectors come from the
    evaluation's cache: give the evaluation's ``precision``), rows into
    ``au_metrics``, then the claims report (`claims`) from ``eval_result`` and the A–U figures,
    with a last line on whether the baselines' training budget matches mimo's (`claims.budget_note`),
    written to ``plots_dir/claims.md``; one MLflow run with the figures, plots and claims."""
    budget = budget_note(training_rows(stage1, stage2, baselines))  # do (a) and (d) compare matched budgets?
    em = evaluation_models(student_base, stage1, stage2, baselines, None, precision=precision)
    au = alignment_uniformity(em.models, benchmark_set.load(au_benchmark(benchmark_set)), cache_root, plots_dir,
                              eval_result, seeds=em.seeds, max_verses=max_verses, n_resamples=n_resamples)
    claims = evaluate_claims(eval_result.rows, eval_result.compare, au.models, benchmark=claims_benchmark(eval_result))
    claims_md = claims.markdown() + (f"\n\n{budget}" if budget else "")
    claims_path = Path(plots_dir) / "claims.md"
    with atomic_path(claims_path) as tmp:
        Path(tmp).write_text(claims_md + "\n")
    au = replace(au, claims_md=claims_md)
    db.append("au_metrics", [{**r, "dagster_run_id": dagster_run_id} for r in au.rows])
    with tracker.run(f"au_analysis · {teacher_name}", dagster_run_id=dagster_run_id,
                     tags={"asset": "au_analysis", "teacher": teacher_name}) as run:
        run.log_metrics({f"{r['model']}/{r['lang']}/{r['metric']}": r["value"] for r in au.rows})
        run.log_metrics({f"claim_{c.key}_holds": 1.0 if c.verdict == "holds" else 0.0 for c in claims.claims})
        for claim in claims.claims:
            run.set_tag(f"claim_{claim.key}", claim.verdict)
        for plot in (au.au_plot, au.ndcg_plot, au.lambda_plot, str(claims_path)):
            if plot:
                run.log_artifact(plot, "plots")
    bad = sum(1 for r in au.rows if not math.isfinite(r["value"]))
    return AUReport(au, au_markdown(au), claims, claims_md, str(claims_path), bad, _resolved(em.models))

