from dagster import ConfigurableResource

from mimo_pipeline.storage import ResultsDB
from mimo_pipeline.tracking import Tracker

from .settings import MimoSettings


class ResultsStore(ConfigurableResource):
    """DuckDB ``MIMO_HOME/mimo.duckdb``: checkpoints, eval_metrics, au_metrics (append-only)."""

    settings: MimoSettings

    def db(self) -> ResultsDB:
        return ResultsDB(self.settings.resolve().home / "mimo.duckdb")


class MlflowTracking(ConfigurableResource):
    """MLflow on ``sqlite:///MIMO_HOME/mlflow.db`` with artifacts in ``MIMO_HOME/mlartifacts``."""

    settings: MimoSettings
    experiment: str = "mimo"

    def tracker(self) -> Tracker:
        return Tracker(str(self.settings.resolve().home), self.experiment)
