"""Held-out probes of a trained model: en↔X translation P@1 and a reload check.

`translation_p_at_1` takes either our `encoder.SentenceEncoder` or a
`sentence_transformers.SentenceTransformer` (the training code measures the model it
has just trained, in memory, before writing the checkpoint and its model card).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .checkpoint import read_pooling_spec
from .fileio import write_json


def _encode(encoder, texts: list[str], prompt: str, batch_size: int, precision: str) -> np.ndarray:
    if hasattr(encoder, "prompts") and hasattr(encoder, "similarity"):  # a SentenceTransformer
        from .precision import no_grad_precision

        with no_grad_precision(precision, encoder.device):
            vecs = encoder.encode(texts, prompt_name=prompt if prompt in (encoder.prompts or {}) else None,
                                  batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True,
                                  show_progress_bar=False)
        return vecs.float().cpu().numpy()
    return encoder.encode(texts, prompt=prompt, batch_size=batch_size, normalize=True)


def translation_p_at_1(encoder, corpus_path: str | Path, *, split: str = "eval", per_language: int = 200,
                       seed: int = 13, batch_size: int = 64, precision: str = "fp32") -> dict[str, float]:
    """Held-out en↔X translation retrieval P@1 of a model's own vectors (mean of both directions).

    For each language, ``per_language`` seeded pairs of the split: each English sentence
    retrieves among the X sentences and vice versa, both with the ``query`` prompt (the
    convention of Stage 1, see `stages`). ``precision`` applies to a SentenceTransformer
    (autocast); a `SentenceEncoder` has its own. Returns ``{lang: P@1, "all": mean}``.
    """
    table = pq.read_table(corpus_path, columns=["text", "en", "lang", "split"])
    table = table.filter(pc.equal(table["split"], split))
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    langs = table["lang"].to_pylist()
    texts, english = table["text"].to_pylist(), table["en"].to_pylist()
    for lang in sorted(set(langs)):
        idx = [i for i, g in enumerate(langs) if g == lang]
        idx = sorted(rng.choice(idx, size=min(per_language, len(idx)), replace=False).tolist())
        en = _encode(encoder, [english[i] for i in idx], "query", batch_size, precision)
        x = _encode(encoder, [texts[i] for i in idx], "query", batch_size, precision)
        sim = en @ x.T
        gold = np.arange(len(idx))
        out[lang] = float(((sim.argmax(1) == gold).mean() + (sim.argmax(0) == gold).mean()) / 2)
    out["all"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


@dataclass(frozen=True)
class CheckpointReport:
    """A checkpoint reloaded from disk: does it embed to its dimension, finitely; its P@1."""

    ok: bool
    dim: int
    translation_p1: dict


def inspect_checkpoint(ckpt, corpus_path: str | Path | None, *, per_language: int = 200,
                       split: str = "dev") -> CheckpointReport:
    """Reload ``ckpt`` once: probe two sentences and (with a corpus) measure held-out P@1 on ``split``.

    The figures are cached beside the checkpoint (``<folder>.report-<key>.json``), so a
    reused checkpoint is not re-measured.
    """
    from .encoder import SentenceEncoder

    key = hashlib.sha256(json.dumps([str(corpus_path), per_language, split]).encode()).hexdigest()[:8]
    cache = Path(ckpt.path).parent / f"{Path(ckpt.path).name}.report-{key}.json"
    if cache.exists():
        d = json.loads(cache.read_text())
        return CheckpointReport(d["ok"], d["dim"], d["translation_p1"])
    encoder = SentenceEncoder(ckpt.path)
    vecs = encoder.encode(["In the beginning.", "Am Anfang."], prompt="query")
    dim = int(vecs.shape[1])
    ok = bool(np.isfinite(vecs).all()) and dim == read_pooling_spec(ckpt.path).dim
    p1 = translation_p_at_1(encoder, corpus_path, split=split, per_language=per_language) if corpus_path else {}
    write_json({"ok": ok, "dim": dim, "translation_p1": p1}, cache)
    return CheckpointReport(ok, dim, p1)
