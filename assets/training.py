from typing import Optional

from dagster import (AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, Config,
                     MaterializeResult, MetadataValue, asset)
from pydantic import Field

from mimo_pipeline.analysis import loss_curve_plot
from mimo_pipeline.corpus import CorpusResult
from mimo_pipeline.pairs import PairsResult
from mimo_pipeline.probe import inspect_checkpoint
from mimo_pipeline.stages import (BASELINES, DEFAULT_SEED, P1_MARGIN, STAGE1_LR, STAGE2_LR, StageConfig, TrainedModel,
                                  stage1_gate)
from mimo_pipeline.student import ModelCheckpoint
from mimo_pipeline.teacher import TeacherEmbeddings
from mimo_pipeline.trainer import TrainConfig
from resources import MimoSettings, MlflowTracking, ModelCatalog, ResultsStore
from resources.launcher import launch_distributed

from ._meta import md_table, path_meta, png_meta


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
    seed: int = Field(default=DEFAULT_SEED, description="Seed of the row order, dropout and W's init.")
    distill: str = Field(default=StageConfig.distill, description="Distillation distance: cosine, mse or l2.")
    lam: float = Field(default=StageConfig.lam, description="λ: weight of the cross-lingual InfoNCE in Stage 2.")
    alpha: float = Field(default=StageConfig.alpha, description="α: weight of LaKDA's KL term.")
    freeze_word_embeddings: bool = Field(default=TrainConfig.freeze_word_embeddings,
                                         description="Freeze the word embeddings (CPU default; false on a GPU).")
    bf16: bool = Field(default=TrainConfig.bf16, description="bf16 autocast while training (CUDA only).")
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


def _stage_config(cfg: StageSettings, s, steps_default: int) -> StageConfig:
    sizes = s.profile.training
    steps = cfg.steps or steps_default
    extra = {k: getattr(cfg, k) for k in ("projection_init", "projection_fit_rows", "projection_ridge",
                                          "english_share") if hasattr(cfg, k)}
    return StageConfig(
        train=TrainConfig(steps=steps, batch_size=cfg.batch_size or sizes.batch_size,
                          mini_batch_size=cfg.mini_batch_size or sizes.mini_batch_size,
                          lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, max_length=cfg.max_length or sizes.max_length,
                          seed=cfg.seed, freeze_word_embeddings=cfg.freeze_word_embeddings, bf16=cfg.bf16,
                          checkpoint_every=sizes.checkpoint_every, log_every=max(1, steps // 20)),
        distill=cfg.distill, lam=cfg.lam, alpha=cfg.alpha, **extra)


def _train_tracked(context, name, tracking: MlflowTracking, catalog: ModelCatalog, cfg: StageConfig,
                   function: str, args: tuple, kwargs: dict, world_size: int = 1):
    """Run a `mimo_pipeline.stages` training function inside an MLflow run named after model and teacher;
    ``world_size > 1`` runs it under torchrun (`resources.launcher`)."""
    from mimo_pipeline import stages

    teacher = catalog.resolve_teacher().name
    params = {**cfg.train.result_settings(), "distill": cfg.distill, "lam": cfg.lam, "alpha": cfg.alpha,
              "world_size": world_size}
    with tracking.tracker().run(f"{name} · {teacher}", dagster_run_id=context.run.run_id, params=params,
                                tags={"model": name, "teacher": teacher}) as run:
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


def _kwargs(s, corpus: CorpusResult, p1: bool, teacher: str | None) -> dict:
    return {"p1_corpus": corpus.path if p1 else None,
            "card": {"teacher": teacher or "none (teacher-free)", "p1_pairs": s.profile.translation_p1_pairs}}


def _result(context, trained: TrainedModel, asset_name, s, results: ResultsStore, run_id, teacher_name,
            student_name, extra=None, prefix="", gate: AssetCheckResult | None = None) -> MaterializeResult:
    """Record a trained model in DuckDB (its folder is complete by now) and describe it."""
    import math

    ckpt = trained.checkpoint
    results.db().append("checkpoints", [{
        "model": ckpt.model, "asset": asset_name, "path": ckpt.path, "teacher": teacher_name,
        "student_base": student_name, "seed": trained.config.get("stage", {}).get("train", {}).get("seed"),
        "dagster_run_id": context.run.run_id, "mlflow_run_id": run_id}])
    plot = loss_curve_plot(trained.history, s.home / "plots" / f"loss_{ckpt.model}_{ckpt.fingerprint}.png",
                           f"{ckpt.model} loss")
    report = inspect_checkpoint(ckpt, None)
    losses = [h["loss"] for h in trained.history if "loss" in h]
    went_down = len(losses) >= 2 and losses[-1] < losses[0]
    md = {
        "path": path_meta(ckpt.path), "fingerprint": ckpt.fingerprint, "mlflow_run_id": run_id,
        "steps": trained.steps, "rows_per_s": MetadataValue.float(round(trained.rows_per_s, 2)),
        "wall_s": MetadataValue.float(round(trained.wall_s, 1)), "reused": trained.reused,
        "resumed_from_step": trained.resumed_from_step,
        "batch": MetadataValue.json({k: trained.config.get("stage", {}).get("train", {}).get(k)
                                     for k in ("batch_size", "mini_batch_size", "lr", "seed")}),
        "final_terms": MetadataValue.json({k: round(v, 5) for k, v in trained.final_terms.items()}),
    }
    if plot is not None:
        md["loss_curve"] = png_meta(plot, "loss")
        md["loss_curve_path"] = path_meta(plot)
    if trained.translation_p1:
        md["translation_p@1"] = MetadataValue.json({k: round(v, 4) for k, v in trained.translation_p1.items()})
    md.update(extra or {})
    name = prefix.rstrip("/")
    check = f"{name}_" if name else ""
    finite = all(math.isfinite(v) for v in trained.final_terms.values())
    checks = [
        # A warning: over a handful of steps (smoke profile) batch noise can outweigh progress.
        AssetCheckResult(check_name=f"{check}loss_went_down", passed=went_down, severity=AssetCheckSeverity.WARN,
                         metadata={"first": losses[0] if losses else float("nan"),
                                   "last": losses[-1] if losses else float("nan")}),
        AssetCheckResult(check_name=f"{check}reloads_and_embeds", passed=report.ok, metadata={"dim": report.dim}),
        gate or AssetCheckResult(check_name=f"{check}no_nan", passed=finite,
                                 description=None if finite else "non-finite loss terms: lower the learning rate"),
    ]
    return MaterializeResult(value=trained, metadata={f"{prefix}{k}": v for k, v in md.items()}, check_results=checks)


@asset(
    group_name="training", code_version="2",
    description="Stage 1: the student distilled through a training-only projection onto the teacher's English "
                "vectors of parallel sentences and English identity rows (sentence-transformers' EmbedDistillLoss "
                "on SentenceTransformerTrainer). Checkpoint under MIMO_HOME/models/stage1/<fingerprint>/. "
                "Blocking gate: finite, and held-out translation P@1 not below the base student's by more than "
                "p1_margin.",
    check_specs=_checks("stage1_checkpoint", gate="quality_gate"), io_manager_key="artifacts",
)
def stage1_checkpoint(context: AssetExecutionContext, config: Stage1Settings, student_base: ModelCheckpoint,
                      parallel_corpus: CorpusResult, teacher_embeddings: TeacherEmbeddings, settings: MimoSettings,
                      catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    cfg = _stage_config(config, s, s.profile.training.stage1_steps)
    trained, run_id = _train_tracked(context, "stage1", tracking, catalog, cfg, "train_stage1",
                                     (student_base, parallel_corpus.path, teacher_embeddings, cfg, s.models_dir),
                                     _kwargs(s, parallel_corpus, config.translation_p1, teacher_embeddings.teacher_ref),
                                     config.world_size)
    base = inspect_checkpoint(student_base, parallel_corpus.path if config.translation_p1 else None,
                              per_language=s.profile.translation_p1_pairs)
    verdict = stage1_gate(trained, base.translation_p1, config.p1_margin)
    gate = AssetCheckResult(check_name="quality_gate", passed=verdict.passed, description=verdict.message,
                            metadata={"stage1_p@1": verdict.p1, "base_p@1": verdict.base_p1,
                                      "margin": config.p1_margin})
    extra = {"base_student_translation_p@1": MetadataValue.json({k: round(v, 4)
                                                                 for k, v in base.translation_p1.items()})}
    return _result(context, trained, "stage1_checkpoint", s, results, run_id, teacher_embeddings.teacher_ref,
                   student_base.source_ref, extra, gate=gate)


@asset(
    group_name="training", code_version="2",
    description="Stage 2, the MIMO model: from Stage 1 and its projection, λ·cross-lingual InfoNCE + "
                "(1-λ)·distillation onto the teacher's cached English vectors of query and passage (λ = 0.2), "
                "gradient-cached on SentenceTransformerTrainer. Checkpoint under MIMO_HOME/models/mimo/<fingerprint>/.",
    check_specs=_checks("stage2_checkpoint"), io_manager_key="artifacts",
)
def stage2_checkpoint(context: AssetExecutionContext, config: StageSettings, stage1_checkpoint: TrainedModel,
                      retrieval_pairs: PairsResult, teacher_embeddings: TeacherEmbeddings,
                      parallel_corpus: CorpusResult, settings: MimoSettings, catalog: ModelCatalog,
                      results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    cfg = _stage_config(config, s, s.profile.training.stage2_steps)
    trained, run_id = _train_tracked(context, "mimo", tracking, catalog, cfg, "train_stage2",
                                     (stage1_checkpoint.checkpoint, stage1_checkpoint.projection_path,
                                      retrieval_pairs.path, teacher_embeddings, cfg, s.models_dir),
                                     _kwargs(s, parallel_corpus, config.translation_p1, teacher_embeddings.teacher_ref),
                                     config.world_size)
    return _result(context, trained, "stage2_checkpoint", s, results, run_id, teacher_embeddings.teacher_ref,
                   stage1_checkpoint.checkpoint.source_ref)


@asset(
    group_name="training", code_version="2",
    description="Teacher-free baselines on the Stage-2 pairs and schedule, from the base student, gradient-cached: "
                "infonce (same-language pairs), xlco (cross-lingual InfoNCE), lakda ((1-α)·DPR + α·KL). "
                "Checkpoints under MIMO_HOME/models/<model>/<fingerprint>/.",
    check_specs=[spec for name in BASELINES for spec in _checks("baseline_checkpoints", name)],
    io_manager_key="artifacts",
)
def baseline_checkpoints(context: AssetExecutionContext, config: StageSettings, student_base: ModelCheckpoint,
                         retrieval_pairs: PairsResult, parallel_corpus: CorpusResult, settings: MimoSettings,
                         catalog: ModelCatalog, results: ResultsStore, tracking: MlflowTracking):
    s = settings.resolve()
    cfg = _stage_config(config, s, s.profile.training.stage2_steps)
    out, metadata, checks = {}, {}, []
    for name in BASELINES:
        trained, run_id = _train_tracked(context, name, tracking, catalog, cfg, "train_baseline",
                                         (name, student_base, retrieval_pairs.path, cfg, s.models_dir),
                                         _kwargs(s, parallel_corpus, config.translation_p1, None), config.world_size)
        res = _result(context, trained, "baseline_checkpoints", s, results, run_id, None, student_base.source_ref,
                      prefix=f"{name}/")
        out[name] = trained
        metadata.update(res.metadata)
        checks.extend(res.check_results)
    return MaterializeResult(value=out, metadata=metadata, check_results=checks)
