"""Dagster resources and IO managers of mimo_pipeline."""

from .artifacts import ArtifactIOManager
from .catalog import ModelCatalog
from .results import MlflowTracking, ResultsStore
from .settings import MimoSettings

__all__ = ["ArtifactIOManager", "ModelCatalog", "MimoSettings", "MlflowTracking", "ResultsStore"]
