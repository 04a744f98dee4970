"""The composition root: wires assets, resources and jobs into `defs`.

The only module of the library that imports Dagster. Run the whole pipeline with
``dagster job execute -m mimo_pipeline.definitions -j full_mimo`` or
``dg launch --job full_mimo``; serve the UI with ``dagster dev -w workspace.yaml``.
"""

from dagster import AssetSelection, Definitions, define_asset_job, load_asset_checks_from_modules, \
    load_assets_from_modules

from assets import data, models, teacher
from resources import ArtifactIOManager, MimoSettings, ModelCatalog

_MODULES = [data, models, teacher]

settings = MimoSettings()

full_mimo = define_asset_job(
    "full_mimo",
    selection=AssetSelection.all(include_sources=True),
    description="The whole MIMO pipeline on the profile in MIMO_PROFILE (default: the embedded default).",
)

defs = Definitions(
    assets=load_assets_from_modules(_MODULES),
    asset_checks=load_asset_checks_from_modules(_MODULES),
    jobs=[full_mimo],
    resources={
        "settings": settings,
        "catalog": ModelCatalog(settings=settings),
        "artifacts": ArtifactIOManager(settings=settings),
    },
)
