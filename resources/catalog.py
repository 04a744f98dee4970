from dataclasses import replace
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from mimo_pipeline.catalog import ResolvedModel, resolve_model
from mimo_pipeline.settings import Settings

from .settings import MimoSettings


class ModelCatalog(ConfigurableResource):
    """Resolves the teacher and student references (catalog name, HF id or local path).

    Unset fields fall back to MIMO_TEACHER / MIMO_STUDENT, then to the profile's models.
    """

    settings: MimoSettings
    teacher: Optional[str] = Field(default=None, description="Teacher reference (default: $MIMO_TEACHER).")
    student: Optional[str] = Field(default=None, description="Student reference (default: $MIMO_STUDENT).")

    def resolved_settings(self) -> Settings:
        s = self.settings.resolve()
        return replace(s, teacher=self.teacher or s.teacher, student=self.student or s.student)

    def resolve_teacher(self) -> ResolvedModel:
        s = self.resolved_settings()
        return resolve_model(s.teacher, s.home)

    def resolve_student(self) -> ResolvedModel:
        s = self.resolved_settings()
        return resolve_model(s.student, s.home)
