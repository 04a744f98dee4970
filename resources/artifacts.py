import pickle

from dagster import ConfigurableIOManager, InputContext, OutputContext

from mimo_pipeline.fileio import atomic_path

from .settings import MimoSettings


class ArtifactIOManager(ConfigurableIOManager):
    """Passes the small handles that assets return (paths, fingerprints, reports).

    The artifacts themselves (Parquet, checkpoints, caches) live under MIMO_HOME; the
    handle of the latest materialisation of each asset is pickled to
    ``MIMO_HOME/manifests/<profile>/<asset>.pkl`` so that a run selecting only
    downstream assets (``dg launch --assets 'key:teacher_embeddings+'``) finds its
    inputs, whatever the Dagster instance.
    """

    settings: MimoSettings

    def _path(self, key):
        s = self.settings.resolve()
        return s.home / "manifests" / s.profile.name / ("__".join(key.path) + ".pkl")

    def handle_output(self, context: OutputContext, obj) -> None:
        if obj is None:
            return
        with atomic_path(self._path(context.asset_key)) as tmp:
            tmp.write_bytes(pickle.dumps(obj))

    def load_input(self, context: InputContext):
        path = self._path(context.asset_key)
        if not path.exists():
            name = context.asset_key.to_user_string()
            raise FileNotFoundError(
                f"{path}: no materialisation of {name!r} in this MIMO_HOME and profile; "
                f"materialise {name!r} first (or run the whole job full_mimo)")
        return pickle.loads(path.read_bytes())
