"""The paper's claims, decided on this run's figures.

Each claim is a set of comparisons "system vs other on a measure"; a comparison *holds* when
the difference goes the claimed way and its Holm-corrected p-value is below 0.05. A claim
holds when every comparison it has holds, does not hold when one fails, and is "not
tested" when none of its models are there (a comparison that has figures but no test, e.g.
MRC@10 without per-group figures, leaves it "undecided"). Nothing here is tuned: the
thresholds are the conventional 0.05 and the direction the paper states.

- (a) mimo above every teacher-free baseline (infonce, xlco, lakda) on MLIR nDCG@10:
  ``eval_compare`` (paired sign-flip test over topics, Holm across the models compared
  with mimo on that figure); difference = mimo − baseline > 0.
- (b) distillation improves cross-lingual alignment: stage1 vs base_student, and
  mimo_lambda_0 (distillation only) vs mimo_lambda_1 (contrastive only) when trained;
  alignment over every cross-language translation pair of the MLIR pool's verses (lower =
  better aligned), paired sign-flip test over verses, Holm within the claim.
- (c) the contrastive term improves uniformity: mimo_lambda_1 vs mimo_lambda_0, and xlco vs
  base_student; within-language uniformity (lower = more uniform; the pooled figure would
  also reward separating languages, see `analysis`), paired bootstrap over verses
  (`stats.bootstrap_difference`), Holm within the claim.
- (d) MIMO reduces language bias: mimo vs infonce, xlco, lakda on MLIR MRC@10 (higher =
  rankings agree across the languages of a query) and own_lang@10 (the share of the top 10
  in the query's language, lower = less bias); ``eval_compare`` as in (a).

Budgets: (a) and (d) assume each baseline trained on as many rows as mimo's Stage 1 and Stage 2
together (the default's matched budget). `training_rows` counts them from the training assets'
outputs and `budget_note` says in one line, under the report, whether they match.

Seeds: a comparison is made per training seed (a model of seed s against the other of seed
s, or against the other's only run); each is a row of the table, and a claim needs every
seed. Where a comparison has several seeds the table adds their mean ± sd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .evaluation import EvalResult, _seed
from .evaluation import _number as _num
from .stats import N_RESAMPLES, bootstrap_difference, holm, paired_test

SIGNIFICANCE = 0.05
REFERENCE = "mimo"
TEACHER_FREE = ("infonce", "xlco", "lakda")
MLIR = "mlir"


@dataclass(frozen=True)
class Comparison:
    """``system`` vs ``other`` on ``measure``: ``diff`` = system − other (and its interval)."""

    claim: str
    system: str
    other: str
    seed: int | None
    measure: str
    better: str  # "higher" or "lower": the direction the claim needs
    value: float | None
    other_value: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    holds: bool | None  # None: no test to decide it


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    basis: str
    comparisons: tuple[Comparison, ...]
    missing: tuple[str, ...] = ()  # comparisons the claim names whose models this run lacks

    @property
    def verdict(self) -> str:
        decided = [c.holds for c in self.comparisons]
        if not decided:
            return "not tested"
        if any(h is False for h in decided):
            return "does not hold"
        return "holds" if all(h is True for h in decided) else "undecided"


@dataclass(frozen=True)
class ClaimsReport:
    claims: tuple[Claim, ...]

    def verdicts(self) -> dict[str, str]:
        return {c.key: c.verdict for c in self.claims}

    def markdown(self) -> str:
        return claims_markdown(self)


def _absent(comps: Sequence[Comparison], pairs: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The pairs "system vs other" a claim names that have no comparison on this run."""
    done = {(c.system, c.other) for c in comps}
    return tuple(f"{a} vs {b}" for a, b in pairs if (a, b) not in done)


def _holds(diff: float | None, p_holm: float | None, better: str) -> bool | None:
    if diff is None or p_holm is None or not math.isfinite(diff):
        return None
    return (diff > 0 if better == "higher" else diff < 0) and p_holm < SIGNIFICANCE


# ------------------------------------------------------------------ from eval_compare: (a), (d)


def _versus_reference(claim: str, rows: Sequence[Mapping], compare: Sequence[Mapping], other: str, metric: str,
                      measure: str, better: str, benchmark: str) -> list[Comparison]:
    """mimo vs ``other`` from the eval_compare rows of ``other`` (delta = other − mimo, flipped)."""
    figures = EvalResult(tuple(rows), (), (), 0.0)

    def figure(model, seed):  # seed None: the mean over the model's seeds (a model without seeds: its figure)
        return figures.value(model, benchmark, metric, seed=seed)

    out = []
    found = [c for c in compare if c["model"] == other and c.get("reference", REFERENCE) == REFERENCE
             and c["benchmark"] == benchmark and c["metric"] == metric and c.get("query_lang", "all") == "all"]
    ref_seeds = {_seed(r.get("seed")) for r in rows if r["model"] == REFERENCE and r["benchmark"] == benchmark
                 and r["metric"] == metric and r["query_lang"] == "all"}
    for c in found:
        seed = _seed(c.get("seed"))
        delta, low, high = _num(c.get("delta")), _num(c.get("ci_low")), _num(c.get("ci_high"))
        ref_seed = seed if seed in ref_seeds else (next(iter(ref_seeds)) if len(ref_seeds) == 1 else None)
        diff = None if delta is None else -delta
        p_holm = _num(c.get("p_holm"))
        out.append(Comparison(claim, REFERENCE, other, seed, measure, better, figure(REFERENCE, ref_seed),
                              figure(other, seed), diff,
                              None if high is None else -high, None if low is None else -low,
                              _num(c.get("p_value")), p_holm, _holds(diff, p_holm, better)))
    if not found:  # figures without a test (e.g. MRC@10 without complete groups): shown, undecided
        mine, theirs = figure(REFERENCE, None), figure(other, None)
        if mine is not None and theirs is not None:
            out.append(Comparison(claim, REFERENCE, other, None, measure, better, mine, theirs, mine - theirs,
                                  None, None, None, None, None))
    return out


def _on(benchmark: str) -> str:
    """How a measure names its benchmark: nothing for the Bible's mlir, else ' (<name>)'."""
    return "" if benchmark == MLIR else f" ({benchmark})"


def claim_a(rows: Sequence[Mapping], compare: Sequence[Mapping], benchmark: str = MLIR) -> Claim:
    comps = [c for other in TEACHER_FREE
             for c in _versus_reference("a", rows, compare, other, "ndcg@10", f"MLIR nDCG@10{_on(benchmark)}",
                                        "higher", benchmark)]
    return Claim("a", "mimo above every teacher-free baseline (infonce, xlco, lakda) on MLIR nDCG@10",
                 "eval_compare: paired sign-flip test over topics; Holm across the models compared with mimo",
                 tuple(comps), _absent(comps, [(REFERENCE, o) for o in TEACHER_FREE]))


def claim_d(rows: Sequence[Mapping], compare: Sequence[Mapping], benchmark: str = MLIR) -> Claim:
    comps = []
    for other in TEACHER_FREE:
        comps += _versus_reference("d", rows, compare, other, "mrc@10", f"MLIR MRC@10{_on(benchmark)}", "higher",
                                   benchmark)
        comps += _versus_reference("d", rows, compare, other, "own_lang@10",
                                   f"MLIR own-language share of the top 10{_on(benchmark)}", "lower", benchmark)
    return Claim("d", "MIMO reduces language bias: higher MRC@10 and a lower own-language share of the top 10 "
                      "than every teacher-free baseline",
                 "eval_compare: paired sign-flip test over topics (MRC@10: per query verse); Holm across the models "
                 "compared with mimo", tuple(comps), _absent(comps, [(REFERENCE, o) for o in TEACHER_FREE]))


# ------------------------------------------------------------------ from A–U: (b), (c)


def _pairs(au_models: Sequence, system: str, other: str) -> list[tuple]:
    """(system model, other model) per seed of the system: the other of the same seed, or its only run."""
    mine = [m for m in au_models if m.name == system]
    theirs = [m for m in au_models if m.name == other]
    out = []
    for m in mine:
        same = [o for o in theirs if o.seed == m.seed]
        partner = same[0] if same else (theirs[0] if len(theirs) == 1 else None)
        if partner is not None:
            out.append((m, partner))
    return out


def _au_comparisons(claim: str, au_models: Sequence, pairs: Sequence[tuple[str, str]], kind: str, *,
                    n_resamples: int, stats_seed: int) -> list[Comparison]:
    raw = []
    for system, other in pairs:
        for m, o in _pairs(au_models, system, other):
            if kind == "alignment":
                res = paired_test(m.alignment_topics, o.alignment_topics, n_resamples=n_resamples, seed=stats_seed)
                value, other_value = m.table["all"]["alignment"], o.table["all"]["alignment"]
                measure = "alignment, cross-language translation pairs"
            else:
                value, other_value = m.table["within"]["uniformity"], o.table["within"]["uniformity"]
                res = bootstrap_difference(value - other_value, m.replicates["within"] - o.replicates["within"])
                measure = "within-language uniformity"
            raw.append((m, o, measure, value, other_value, res))
    p_holm = holm([res.p_value for *_, res in raw])
    return [Comparison(claim, m.name, o.name, m.seed, measure, "lower", value, other_value, res.delta, res.ci_low,
                       res.ci_high, res.p_value, ph, _holds(res.delta, ph, "lower"))
            for (m, o, measure, value, other_value, res), ph in zip(raw, p_holm)]


def claim_b(au_models: Sequence, *, n_resamples: int = N_RESAMPLES, stats_seed: int = 0) -> Claim:
    pairs = [("stage1", "base_student"), ("mimo_lambda_0", "mimo_lambda_1")]
    comps = _au_comparisons("b", au_models, pairs, "alignment", n_resamples=n_resamples, stats_seed=stats_seed)
    return Claim("b", "distillation improves cross-lingual alignment (stage1 vs base_student; mimo_lambda_0 vs "
                      "mimo_lambda_1)",
                 "alignment per verse (MLIR pool); paired sign-flip test over verses; Holm within the claim",
                 tuple(comps), _absent(comps, pairs))


def claim_c(au_models: Sequence, *, n_resamples: int = N_RESAMPLES, stats_seed: int = 0) -> Claim:
    pairs = [("mimo_lambda_1", "mimo_lambda_0"), ("xlco", "base_student")]
    comps = _au_comparisons("c", au_models, pairs, "uniformity", n_resamples=n_resamples, stats_seed=stats_seed)
    return Claim("c", "the contrastive term improves uniformity (mimo_lambda_1 vs mimo_lambda_0; xlco vs "
                      "base_student)",
                 "within-language uniformity (MLIR pool); paired bootstrap over verses (percentile interval, "
                 "p from its inversion); Holm within the claim", tuple(comps), _absent(comps, pairs))


def evaluate_claims(rows: Sequence[Mapping], compare: Sequence[Mapping], au_models: Sequence = (), *,
                    benchmark: str = MLIR, n_resamples: int = N_RESAMPLES, stats_seed: int = 0) -> ClaimsReport:
    """The four claims from eval_metrics rows, eval_compare rows and the A–U models
    (`evaluation.AUModel`: per-verse alignment and uniformity replicates)."""
    return ClaimsReport((claim_a(rows, compare, benchmark),
                         claim_b(au_models, n_resamples=n_resamples, stats_seed=stats_seed),
                         claim_c(au_models, n_resamples=n_resamples, stats_seed=stats_seed),
                         claim_d(rows, compare, benchmark)))


# ------------------------------------------------------------------ the table


def _f(x, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _p(x) -> str:
    if x is None:
        return "—"
    return f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}"


def _holds_cell(h: bool | None) -> str:
    return {True: "yes", False: "no", None: "undecided"}[h]


CLAIMS_LEGEND = (f"difference = first − second model, 95% interval; holds = the difference goes the claimed way "
                 f"(better: higher or lower) and p (Holm) < {SIGNIFICANCE}. A claim holds when every comparison "
                 f"holds (every seed). With several seeds, a row 'mean over n seeds' gives the mean ± sd of the "
                 f"difference.")


def training_rows(stage1=None, stage2=None, baselines=None) -> dict[tuple[str, int], int]:
    """Rows each trained model's training saw (optimizer steps × batch size) by (model, seed), from the
    training assets' `stages.TrainedSet`s; a Stage-2 model's rows include the Stage 1 it starts from
    (`stages.TrainedSet.own_or_first`, as `stage2_checkpoint` picks it), as the baselines' matched budget
    counts them."""
    def rows(t) -> int:
        return t.steps * t.config["stage"]["train"]["batch_size"]

    out = {}
    for trained in (stage1, baselines):
        out.update({(name, seed): rows(t) for name, seed, t in (trained.all() if trained else ())})
    for name, seed, t in (stage2.all() if stage2 else ()):
        out[(name, seed)] = rows(t) + (rows(stage1.own_or_first("stage1", seed)) if stage1 else 0)
    return out


def budget_note(rows: dict[tuple[str, int], int]) -> str | None:
    """One line on whether each teacher-free baseline saw as many training rows as mimo (Stage 1 +
    Stage 2) of its seed, which claims (a) and (d) assume; None without mimo or a baseline."""
    mimo = {seed: n for (name, seed), n in rows.items() if name == REFERENCE}
    baselines = sorted(((TEACHER_FREE.index(name), seed, n) for (name, seed), n in rows.items()
                        if name in TEACHER_FREE), key=lambda x: x[:2])
    pairs = [(TEACHER_FREE[i], seed, n, mimo.get(seed, mimo[min(mimo)])) for i, seed, n in baselines] if mimo else []
    if not pairs:
        return None
    several = len({seed for _, seed, _, _ in pairs} | set(mimo)) > 1
    figures = ", ".join(f"{name}{f' (seed {seed})' if several else ''} {n:,}" for name, seed, n, _ in pairs)
    reference = " or ".join(f"{m:,}" for m in sorted({m for *_, m in pairs}))
    if all(n == m for *_, n, m in pairs):
        return f"training budgets matched: mimo (Stage 1 + Stage 2) and each baseline saw {reference} rows " \
               "(steps × batch size)"
    return (f"training budgets NOT matched: mimo (Stage 1 + Stage 2) saw {reference} rows, {figures} "
            "(steps × batch size): claims (a) and (d) compare mimo with baselines trained on other budgets")


def claims_markdown(report: ClaimsReport) -> str:
    """Two markdown tables: the verdict per claim, then every comparison with its figures."""
    from .report import markdown_table

    summary = []
    for c in report.claims:
        n_yes = sum(x.holds is True for x in c.comparisons)
        absent = f" (not on this run: {', '.join(c.missing)})" if c.missing else ""
        summary.append([f"({c.key}) {c.text}", f"**{c.verdict}**", f"{n_yes}/{len(c.comparisons)}{absent}", c.basis])
    detail = []
    for c in report.claims:
        groups: dict[tuple, list[Comparison]] = {}
        for x in c.comparisons:
            groups.setdefault((x.system, x.other, x.measure), []).append(x)
        for (system, other, measure), xs in groups.items():
            for x in xs:
                seed = "" if x.seed is None else f" (seed {x.seed})"
                interval = f" [{_f(x.ci_low, True)}, {_f(x.ci_high, True)}]" if x.ci_low is not None else ""
                detail.append([f"({c.key})", f"{system} − {other}{seed}", f"{measure} ({x.better} = better)",
                               f"{_f(x.value)} vs {_f(x.other_value)}", f"{_f(x.diff, True)}{interval}",
                               _p(x.p_value), _p(x.p_holm), _holds_cell(x.holds)])
            diffs = [x.diff for x in xs if x.diff is not None]
            if len(xs) > 1 and len(diffs) > 1:
                detail.append([f"({c.key})", f"{system} − {other}, mean over {len(diffs)} seeds",
                               f"{measure} ({xs[0].better} = better)", "",
                               f"{np.mean(diffs):+.4f} ± {np.std(diffs, ddof=1):.4f} (sd)", "", "",
                               f"{sum(x.holds is True for x in xs)}/{len(xs)} seeds"])
    parts = [markdown_table(["claim", "verdict", "comparisons holding", "decided by"], summary)]
    if detail:
        parts.append(markdown_table(["claim", "comparison", "measure", "figures", "difference [95% CI]", "p",
                                     "p (Holm)", "holds"], detail))
    parts.append(CLAIMS_LEGEND)
    return "\n\n".join(parts)
