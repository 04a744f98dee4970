from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, AutomationCondition, DataVersion,
                     MaterializeResult, MetadataValue, ObserveResult, asset, observable_source_asset)

from mimo_pipeline.probe import inspect_checkpoint
from mimo_pipeline.student import export_checkpoint
from resources import MimoSettings, ModelCatalog

from ._meta import path_meta


@observable_source_asset(
    group_name="teacher",
    description="The frozen English teacher (MIMO_TEACHER or the profile's). Its data version is the "
                "teacher's fingerprint (a hash of its weight and tokenizer files): swapping the teacher "
                "marks teacher_embeddings and everything downstream unsynced. Observed hourly while the "
                "daemon runs (sensor follow_the_teacher), which then re-materialises what depends on a new teacher.",
    # an observation per hour: a teacher whose files changed in place (a local folder) is found
    # without a click; a changed MIMO_TEACHER needs `make ui` restarted, then "Observe" or this.
    automation_condition=AutomationCondition.on_cron("0 * * * *"),
)
def teacher_model(catalog: ModelCatalog) -> ObserveResult:
    teacher = catalog.resolve_teacher()
    return ObserveResult(
        data_version=DataVersion(teacher.fingerprint),
        metadata={"ref": teacher.ref, "path": path_meta(teacher.path), "source": teacher.source,
                  "fingerprint": teacher.fingerprint},
    )


@asset(
    group_name="training",
    code_version="1",
    description="The multilingual student before training (MIMO_STUDENT or the profile's), as a "
                "sentence-transformers checkpoint under MIMO_HOME/models/base_student/<fingerprint>/.",
    check_specs=[AssetCheckSpec("reloads_and_embeds", asset="student_base")],
    io_manager_key="artifacts",
)
def student_base(context: AssetExecutionContext, settings: MimoSettings, catalog: ModelCatalog):
    ckpt = export_checkpoint(catalog.resolve_student(), settings.resolve().models_dir, "base_student")
    probe = inspect_checkpoint(ckpt, None)
    return MaterializeResult(
        value=ckpt,
        data_version=DataVersion(ckpt.fingerprint),
        metadata={"path": path_meta(ckpt.path), "fingerprint": ckpt.fingerprint, "ref": ckpt.source_ref,
                  "dim": ckpt.dim, "prompts": MetadataValue.json(ckpt.prompts)},
        check_results=[AssetCheckResult(check_name="reloads_and_embeds", passed=probe.ok,
                                        metadata={"dim": probe.dim})],
    )
