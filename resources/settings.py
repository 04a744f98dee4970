from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from mimo_pipeline.settings import Settings


class MimoSettings(ConfigurableResource):
    """MIMO_HOME and the profile. Unset fields fall back to MIMO_HOME / MIMO_PROFILE."""

    home: Optional[str] = Field(default=None, description="Artifact root (default: $MIMO_HOME or <repo>/data).")
    profile: Optional[str] = Field(default=None, description="'default' or 'smoke' (default: $MIMO_PROFILE).")

    def resolve(self) -> Settings:
        return Settings.resolve(home=self.home, profile=self.profile)
