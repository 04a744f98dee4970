from typing import List, Optional

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Config,
                     MaterializeResult, MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.analysis import loss_curve_plot
from mimo_pipeline.corpus import CorpusResult
from mimo_pipeline.pairs import PairsResult
from mimo_pipeline.probe import inspect_checkpoint
from mimo_pipeline.stages import (ABLATION_LAMBDAS, BASELINES, DEFAULT_SEED, LAMBDA, P1_MARGIN, P1_SPLIT, STAGE1_LR,
                                  STAGE2_LR, StageConfig, TrainedModel, TrainedSet, lambda_model_name, stage1_gate)
from mimo_pipeline.student import ModelCheckpoint
from mimo_pipeline.teacher import TeacherEmbeddings
from mimo_pipeline.trainer import TrainConfig
from resources import MimoSettings, MlflowTracking, ModelCatalog, ResultsStore
from resources.launcher import launch_distributed

from ._meta import path_meta, png_meta


class StageSettings(Config):
    """Training settings. Defaults are the library's (`mimo_pipeline.stages`, `trainer.TrainConfig`: the
    paper's, DESIGN §1); unset sizes come from the profile."""

    steps: Optional[int] = Field(default=None, description="Optimizer steps (profile's default when unset).")
    batch_size: Optional[int] = Field(
        default=None, description="Rows per optimizer step; every row is an in-batch negative of every other "
                                  "(paper: 128 Stage 1, 2048 Stage 2 and baselines).")
    mini_batch_size: Optional[int] = Field(
        default=None, description="Rows per forward/backward chunk of gradient caching: bounds memory, leaves the "
                                  "weights unchanged (e.g. 64 on a GPU at batch 2048). Unset = the profile's.")
    max_length: Optional[int] = Field(default=None, description="Max tokens per text.")
    lr: float = Field(default=STAGE2_LR, description="Peak learning rate (paper: 2e-5 Stage 2 and baselines).")
    warmup_ratio: float = Field(default=TrainConfig.warmup_ratio, description="Linear warmup share of the steps.")
    seeds: List[int] = Field(default=[DEFAULT_SEED], description="Training seeds (row order, dropout, W's init): "
                                                                 "every seed is its own checkpoint and evaluation.")
    precision: Optional[str] = Field(default=None, description="Gradient caching's no-gradient pass and the P@1 "
                                                               "probe: auto, fp32 or bf16 (unset: the profile's).")
    distill: str = Field(default=StageConfig.distill, description="Distillation distance: cosine, mse or l2.")
    lam: float = Field(default=StageConfig.lam, description="λ: weight of the cross-lingual InfoNCE in Stage 2.")
    alpha: float = Field(default=StageConfig.alpha, description="α: weight of LaKDA's KL term.")
    freeze_word_embeddings: bool = Field(default=TrainConfig.freeze_word_embeddings,
                                         description="Freeze the word embeddings (CPU default; false on a GPU).")
    bf16: Optional[bool] = Field(default=TrainConfig.bf16, description="bf16 autocast for the whole training step "
                                 "(the official recipe's --bf16); unset: on where precision resolves to bf16.")
    translation_p1: bool = Field(default=True, description="Measure held-out en↔X translation P@1.")
    world_size: int = Field(default=1, description="Processes for data-parallel training: >1 launches torchrun "
                                                   "(gloo on CPU, nccl on GPU) through Dagster Pipes.")


class Stage1Settings(StageSettings):
    lr: float = Field(default=STAGE1_LR, description="Peak learning rate (paper: 1e-4).")
    projection_init: str = Field(
        default=StageConfig.projection_init,
        description="W's start: 'lstsq' (least squares on the frozen student; keeps short CPU runs from collapsing "
                    "the student) or 'random' (the paper, for full epochs).")
    projection_fit_rows: int = Field(default=StageConfig.projection_fit_rows,
                                     description="'lstsq': training rows the fit uses (rows training never draws).")
    projection_ridge: float = Field(default=StageConfig.projection_ridge, description="'lstsq': ridge penalty.")
    english_share: Optional[float] = Field(
        default=StageConfig.english_share,
        description="Share of English identity rows (English, English); unset = one per English sentence, as "
                    "the official data preparation does.")
    p1_margin: float = Field(default=P1_MARGIN, description="Quality gate: Stage 1 may not fall below the base "
                                                            "student's held-out translation P@1 by more than this.")


def _stage_config(cfg: StageSettings, s, steps_default: int, seed: int, lam: float | None = None) -> StageConfig:
    sizes = s.profile.training
    steps = cfg.steps or steps_default
    extra = {k: getattr(cfg, k) for k in ("projection_init", "projection_fit_rows", "projection_ridge",
                                          "english_share") if hasattr(cfg, k)}
    return StageConfig(
        train=TrainConfig(steps=steps, batch_size=cfg.batch_size or sizes.batch_size,
                          mini_batch_size=cfg.mini_batch_size or sizes.mini_batch_size,
                          lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, max_length=cfg.max_length or sizes.max_length,
                          seed=seed, freeze_word_embeddings=cfg.freeze_word_embeddings, bf16=cfg.bf16,
                          precision=s.encode_precision(cfg.precision),
                          checkpoint_every=sizes.checkpoint_every, log_every=max(1, steps // 20)),
        distill=cfg.distill, lam=cfg.lam if lam is None else lam, alpha=cfg.alpha, **extra)


def _seeds(cfg: StageSettings) -> list[int]:
    from mimo_pipeline.errors import MimoInputError

    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise MimoInputError(f"seeds {cfg.seeds!r}: give a non-empty list of distinct integers, e.g. [13, 14, 15]",
                             source="seeds")
    return list(cfg.seeds)


def _identity(teacher: TeacherEmbeddings | None, student: ModelCheckpoint) -> dict:
    """The models a checkpoint comes from, each with where its files came from (hub, catalog, local) and its
    fingerprint: DuckDB's checkpoints row, MLflow's tags and the model card all record these."""
    return {"teacher": teacher.teacher_ref if teacher else None,
            "teacher_source": (teacher.teacher_source or None) if teacher else None,
            "teacher_fingerprint": (teacher.teacher_fingerprint or None) if teacher else None,
            "student_base": student.source_ref, "student_base_source": student.source or None,
            "student_base_fingerprint": student.fingerprint}


def _train_tracked(context, name, tracking: MlflowTracking, catalog: ModelCatalog, cfg: StageConfig,
                   function: str, args: tuple, kwargs: dict, world_size: int, identity: dict):
    """Run a `mimo_pipeline.stages` training function inside an MLflow run named after model and teacher;
    ``world_size > 1`` runs it under torchrun (`resources.launcher`)."""
    from mimo_pipeline import stages

    teacher = catalog.resolve_teacher().name
    # precision and bf16 as they run on this machine, not `auto` and unset
    params = {**cfg.train.resolved().result_settings(), "distill": cfg.distill, "lam": cfg.lam, "alpha": cfg.alpha,
              "world_size": world_size}
    with tracking.tracker().run(f"{name} · {teacher}", dagster_run_id=context.run.run_id, params=params,
                                tags={"model": name, "teacher": teacher,
                                      **{k: v for k, v in identity.items() if k != "teacher" and v}}) as run:
        if world_size > 1:
            trained = launch_distributed(context, function, args, world_size,
                                         {"home": tracking.tracker().home, "run_id": run.run_id}, kwargs)
        else:
            trained = getattr(stages, function)(*args, **kwargs, on_log=lambda rec: run.log_metrics(
                {k: v for k, v in rec.items() if k != "step"}, step=int(rec["step"])))
        run.log_metrics({**{f"final_{k}": v for k, v in trained.final_terms.items()},
                         "rows_per_s": trained.rows_per_s, "wall_s": trained.wall_s}, step=trained.steps)
        if trained.translation_p1:
            run.log_metrics({f"translation_p@1/{k}": v for k, v in trained.translation_p1.items()}, step=trained.steps)
        run.set_tag("checkpoint", trained.checkpoint.path)
        return trained, run.run_id


def _checks(asset_name, model=None, gate: str | None = None):
    prefix = f"{model}_" if model else ""
    specs = [AssetCheckSpec(f"{prefix}{n}", asset=asset_name) for n in ("loss_went_down", "reloads_and_embeds")]
    return specs + [AssetCheckSpec(f"{prefix}{gate or 'no_nan'}", asset=asset_name, blocking=True,
                                   description="Blocking: a failure stops everything downstream.")]


def _kwargs(s, corpus: CorpusResult, p1: bool, identity: dict) -> dict:
    def named(who: str) -> str | None:
        return (f"{identity[who]} ({identity[who + '_source'] or 'source unknown'}, fingerprint "
                f"{identity[who + '_fingerprint']})") if identity[who] else None

    return {"p1_corpus": corpus.path if p1 else None,
            "card": {"teacher": named("teacher") or "none (teacher-free)", "student_base": named("student_base"),
                     "p1_pairs": s.profile.translation_p1_pairs}}


def _record(context, trained: TrainedModel, asset_name, s, results: ResultsStore, run_id, identity: dict) -> dict:
    """Record a trained model in DuckDB (its folder is complete by now); its metadata and check figures."""
    import math

    ckpt = trained.checkpoint
    results.db().append("checkpoints", [{
        "model": ckpt.model, "asset": asset_name, "path": ckpt.path, **identity, "seed": trained.seed,
        "dagster_run_id": context.run.run_id, "mlflow_run_id": run_id}])
    plot = loss_curve_plot(trained.history, s.home / "plots" / f"loss_{ckpt.model}_{ckpt.fingerprint}.png",
                           f"{ckpt.model} (seed {trained.seed}) loss")
    report = inspect_checkpoint(ckpt, None)
    losses = [h["loss"] for h in trained.history if "loss" in h]
    train = trained.config.get("stage", {}).get("train", {})
    md = {
        "path": path_meta(ckpt.path), "fingerprint": ckpt.fingerprint, "mlflow_run_id": run_id,
        "steps": trained.steps, "rows_per_s": MetadataValue.float(round(trained.rows_per_s, 2)),
        "wall_s": MetadataValue.float(round(trained.wall_s, 1)), "reused": trained.reused,
        "resumed_from_step": trained.resumed_from_step,
        "batch": MetadataValue.json({k: train.get(k) for k in ("batch_size", "mini_batch_size", "lr", "seed",
                                                               "precision")}),
        "final_terms": MetadataValue.json({k: round(v, 5) for k, v in trained.final_terms.items()}),
    }
    if plot is not None:
        md["loss_curve"] = png_meta(plot, "loss")
        md["loss_curve_path"] = path_meta(plot)
    if trained.translation_p1:
        md["translation_p@1"] = MetadataValue.json({k: round(v, 4) for k, v in trained.translation_p1.items()})
    return {"metadata": md, "went_down": len(losses) >= 2 and losses[-1] < losses[0],
            "first": losses[0] if losses else float("nan"), "last": losses[-1] if losses else float("nan"),
            "reloads": report.ok, "dim": report.dim,
            "finite": all(math.isfinite(v) for v in trained.final_terms.values())}


def _summary_checks(prefix: str, recs: dict) -> list[AssetCheckResult]:
    """One result per check over every model and seed of an asset: passed where all passed."""
    check = f"{prefix}_" if prefix else ""
    bad_down = [k for k, r in recs.items() if not r["went_down"]]
    bad_nan = [k for k, r in recs.items() if not r["finite"]]
    return [
        # A warning: over a handful of steps (smoke profile) batch noise can outweigh progress.
        AssetCheckResult(check_name=f"{check}loss_went_down", passed=not bad_down, severity=AssetCheckSeverity.WARN,
                         metadata={k: MetadataValue.text(f"{r['first']:.4f} -> {r['last']:.4f}")
                                   for k, r in recs.items()}),
        AssetCheckResult(check_name=f"{check}reloads_and_embeds", passed=all(r["reloads"] for r in recs.values()),
                         metadata={"dim": next(iter(recs.values()))["dim"]}),
        AssetCheckResult(check_name=f"{check}no_nan", passed=not bad_nan,
                         description=f"non-finite loss terms in {bad_nan}: lower the learning rate" if bad_nan
                         else "every loss term finite"),
    ]


def _key(name: str, seed: int, seeds: list[int]) -> str:
    return name if len(seeds) == 1 else f"{name}@{seed}"


@asset(
    group_name="training", code_version="3",
    description="Stage 1: the student distilled through a training-only projection onto the teacher's English "
                "vectors of parallel sentences and English identity rows (sentence-transformers' EmbedDistillLoss "
                "on SentenceTransformerTrainer), one checkpoint per seed under "
                "MIMO_HOME/models/stage1/<fingerprint>/. Blocking gate: finite, and held-out translation P@1 not "
                "below the base student's by more than p1_margin.",
    check_specs=_checks("stage1_checkpoint", gate="quality_gate"), io_manager_key="artifacts",
)
def stage1_checkpoint(context: AssetExecutionContext, config: Stage1Settings, student_base: ModelCheckpoint,
                      parallel_corpus: CorpusResult, teacher_embeddings: TeacherEmbeddings, settings: MimoSettings,
                      catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    seeds = _seeds(config)
    base = inspect_checkpoint(student_base, parallel_corpus.path if config.translation_p1 else None,
                              per_language=s.profile.translation_p1_pairs, split=P1_SPLIT)
    out, metadata, recs, verdicts = {}, {}, {}, {}
    identity = _identity(teacher_embeddings, student_base)
    for seed in seeds:
        cfg = _stage_config(config, s, s.profile.training.stage1_steps, seed)
        trained, run_id = _train_tracked(context, "stage1", tracking, catalog, cfg, "train_stage1",
                                         (student_base, parallel_corpus.path, teacher_embeddings, cfg, s.models_dir),
                                         _kwargs(s, parallel_corpus, config.translation_p1, identity),
                                         config.world_size, identity)
        key = _key("stage1", seed, seeds)
        rec = _record(context, trained, "stage1_checkpoint", s, results, run_id, identity)
        metadata.update({f"{key}/{k}" if len(seeds) > 1 else k: v for k, v in rec["metadata"].items()})
        recs[key], out[seed] = rec, trained
        verdicts[key] = stage1_gate(trained, base.translation_p1, config.p1_margin)
    failed = {k: v for k, v in verdicts.items() if not v.passed}
    gate = AssetCheckResult(
        check_name="quality_gate", passed=not failed,
        description=" | ".join(f"{k}: {v.message}" for k, v in (failed or verdicts).items()),
        metadata={"margin": config.p1_margin, "base_p@1": MetadataValue.float(float(base.translation_p1.get("all",
                                                                                 float("nan")))),
                  **{f"{k}_p@1": MetadataValue.float(float(v.p1 if v.p1 is not None else float("nan")))
                     for k, v in verdicts.items()}})
    metadata["base_student_translation_p@1"] = MetadataValue.json({k: round(v, 4)
                                                                   for k, v in base.translation_p1.items()})
    checks = [c for c in _summary_checks("", recs) if c.check_name != "no_nan"] + [gate]
    return MaterializeResult(value=TrainedSet({"stage1": out}), metadata=metadata, check_results=checks)


class Stage2Settings(StageSettings):
    lambda_ablation: bool = Field(
        default=True, description=f"Also train Stage 2 with λ ∈ {list(ABLATION_LAMBDAS)} from the same Stage-1 "
                                  "checkpoint and W (models mimo_lambda_0, mimo_lambda_0.5, mimo_lambda_1).")


@asset(
    group_name="training", code_version="3",
    description="Stage 2, the MIMO model: from Stage 1 and its projection, λ·cross-lingual InfoNCE + "
                f"(1-λ)·distillation onto the teacher's cached English vectors of query and passage (λ = {LAMBDA}), "
                "gradient-cached on SentenceTransformerTrainer; plus the λ ablation (mimo_lambda_0, _0.5, _1) from "
                "the same Stage-1 checkpoint and W. Checkpoints under MIMO_HOME/models/<model>/<fingerprint>/.",
    check_specs=_checks("stage2_checkpoint"), io_manager_key="artifacts",
)
def stage2_checkpoint(context: AssetExecutionContext, config: Stage2Settings, stage1_checkpoint: TrainedSet,
                      student_base: ModelCheckpoint, retrieval_pairs: PairsResult, teacher_embeddings: TeacherEmbeddings,
                      parallel_corpus: CorpusResult, settings: MimoSettings, catalog: ModelCatalog,
                      results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    seeds = _seeds(config)
    variants = [("mimo", config.lam)] + ([(lambda_model_name(lam), lam) for lam in ABLATION_LAMBDAS]
                                         if config.lambda_ablation else [])
    out, metadata, recs = {}, {}, {}
    identity = _identity(teacher_embeddings, student_base)
    for seed in seeds:
        stage1 = stage1_checkpoint.own_or_first("stage1", seed)
        for name, lam in variants:
            cfg = _stage_config(config, s, s.profile.training.stage2_steps, seed, lam=lam)
            trained, run_id = _train_tracked(context, name, tracking, catalog, cfg, "train_stage2",
                                             (stage1.checkpoint, stage1.projection_path, retrieval_pairs.path,
                                              teacher_embeddings, cfg, s.models_dir),
                                             {**_kwargs(s, parallel_corpus, config.translation_p1, identity),
                                              "name": name}, config.world_size, identity)
            key = _key(name, seed, seeds)
            rec = _record(context, trained, "stage2_checkpoint", s, results, run_id, identity)
            metadata.update({f"{key}/{k}" if key != "mimo" else k: v for k, v in rec["metadata"].items()})
            recs[key] = rec
            out.setdefault(name, {})[seed] = trained
    return MaterializeResult(value=TrainedSet(out), metadata=metadata, check_results=_summary_checks("", recs))


class BaselineSettings(StageSettings):
    steps: Optional[int] = Field(
        default=None, description="Optimizer steps; unset = Stage 1's + Stage 2's steps of the profile (a budget "
                                  "matched to mimo's: as many steps of as many rows).")


@asset(
    group_name="training", code_version="3",
    description="Teacher-free baselines from the base student, gradient-cached, with mimo's budget (as many steps "
                "of as many rows as Stage 1 and Stage 2 together): infonce (same-language pairs), xlco "
                "(cross-lingual InfoNCE), lakda ((1-α)·DPR + α·KL). Checkpoints under "
                "MIMO_HOME/models/<model>/<fingerprint>/.",
    check_specs=[spec for name in BASELINES for spec in _checks("baseline_checkpoints", name)],
    io_manager_key="artifacts",
)
def baseline_checkpoints(context: AssetExecutionContext, config: BaselineSettings, student_base: ModelCheckpoint,
                         retrieval_pairs: PairsResult, parallel_corpus: CorpusResult, settings: MimoSettings,
                         catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    seeds = _seeds(config)
    sizes = s.profile.training
    out, metadata, checks = {}, {}, []
    identity = _identity(None, student_base)
    for name in BASELINES:
        recs = {}
        for seed in seeds:
            cfg = _stage_config(config, s, sizes.stage1_steps + sizes.stage2_steps, seed)
            trained, run_id = _train_tracked(context, name, tracking, catalog, cfg, "train_baseline",
                                             (name, student_base, retrieval_pairs.path, cfg, s.models_dir),
                                             _kwargs(s, parallel_corpus, config.translation_p1, identity),
                                             config.world_size, identity)
            key = _key(name, seed, seeds)
            rec = _record(context, trained, "baseline_checkpoints", s, results, run_id, identity)
            metadata.update({f"{key}/{k}": v for k, v in rec["metadata"].items()})
            recs[key] = rec
            out.setdefault(name, {})[seed] = trained
        checks.extend(_summary_checks(name, recs))
    return MaterializeResult(value=TrainedSet(out), metadata=metadata, check_results=checks)
