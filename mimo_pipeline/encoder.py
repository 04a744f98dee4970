"""Sentence embeddings with plain transformers: tokenizer + AutoModel + pooling.

`SentenceEncoder` reads the pooling, normalisation, max length and prompts of a
sentence-transformers folder (see `checkpoint.read_pooling_spec`) and encodes in
batches sorted by *token* count with dynamic padding under `torch.inference_mode`.
Sorting by tokens rather than characters (what sentence-transformers does) packs
sentences of equal padded width together: on 2,000 English verses with batch 64 the
padded tokens drop from 88.8k to 71.5k for 68.7k real ones (`make bench`,
``teacher_encode_cold``). The lengths come from one tokenizer call over all texts; each
batch is then tokenised again, padded, exactly as before, so a sentence's vector does
not depend on how it was batched beyond float rounding.

``precision`` (`precision.PRECISIONS`): with ``bf16`` (or ``auto`` on bf16 hardware) the
model's weights are cast to bfloat16 once at load, the forward pass runs in bf16 and the
token vectors are pooled in float32; vectors come back float32 either way. The default
is ``fp32`` (today's vectors, bit for bit); the pipeline's assets pass the profile's
``precision`` (``auto``, `settings.Profile`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .checkpoint import PoolingSpec, read_pooling_spec
from .precision import resolve_precision, torch_dtype

log = logging.getLogger(__name__)


def pool(token_vectors: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool token vectors [B, T, H] into sentence vectors [B, H] over the attention mask."""
    mask = attention_mask.unsqueeze(-1).to(token_vectors.dtype)
    if mode == "mean":
        return (token_vectors * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return token_vectors[:, 0]
    if mode == "max":
        return token_vectors.masked_fill(mask == 0, torch.finfo(token_vectors.dtype).min).max(1).values
    raise ValueError(f"unknown pooling mode {mode!r}")


#: Tokenizers parsed in this process, by `tokenizer_key`, the most recently used last. Every
#: checkpoint trained from one student carries the same tokenizer files, and parsing
#: multilingual-e5-small's (a 17 MB tokenizer.json, 250,000 pieces) takes about 1.7 s: a run that
#: trains eight models and evaluates eleven would parse it at every load. One parsed tokenizer of
#: that size holds about 330 MB, so two are kept: the student's and the teacher's.
_TOKENIZERS: OrderedDict[str, object] = OrderedDict()
_TOKENIZERS_KEPT = 2


def tokenizer_key(folder: str | Path) -> str:
    """SHA-256 over the names and bytes of a model folder's tokenizer files
    (`catalog.TOKENIZER_PATTERNS`) and its config's ``model_type``, which can pick the tokenizer
    class: equal keys load equal tokenizers."""
    from .catalog import TOKENIZER_PATTERNS
    from .fileio import sha256_file

    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted({f for pattern in TOKENIZER_PATTERNS for f in folder.glob(pattern) if f.is_file()}):
        digest.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    config = folder / "config.json"
    if config.exists():
        digest.update(str(json.loads(config.read_text()).get("model_type")).encode())
    return digest.hexdigest()


def load_tokenizer(folder: str | Path, *, model_max_length: int | None = None):
    """``AutoTokenizer.from_pretrained(folder)``, parsed once per process and set of tokenizer files
    (`tokenizer_key`); each call returns its own shallow copy, with ``model_max_length`` when given.

    Copies share the parsed vocabulary (the Rust tokenizer, whose truncation and padding every call
    sets anew) and have their own settings (``model_max_length``, which sentence-transformers'
    ``max_seq_length`` sets): two models that loaded one tokenizer do not change each other's."""
    from transformers import AutoTokenizer

    key = tokenizer_key(folder)
    parsed = _TOKENIZERS.pop(key, None)
    if parsed is None:
        while len(_TOKENIZERS) >= _TOKENIZERS_KEPT:  # the least recently used goes before the new one loads
            _TOKENIZERS.popitem(last=False)
        parsed = AutoTokenizer.from_pretrained(folder)
    _TOKENIZERS[key] = parsed
    tokenizer = copy.copy(parsed)
    if model_max_length is not None:  # as from_pretrained(folder, model_max_length=...) records it
        tokenizer.model_max_length = model_max_length
        tokenizer.init_kwargs = {**parsed.init_kwargs, "model_max_length": model_max_length}
    return tokenizer


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEncoder:
    """Encode sentences with a local HF / sentence-transformers model folder."""

    def __init__(self, path: str | Path, *, device: str | None = None, max_seq_length: int | None = None,
                 precision: str = "fp32"):
        from transformers import AutoModel

        self.path = Path(path)
        self.spec: PoolingSpec = read_pooling_spec(self.path)
        self.max_seq_length = min(max_seq_length or self.spec.max_seq_length, self.spec.max_seq_length)
        self.device = torch.device(device or default_device())
        #: the resolved precision, "fp32" or "bf16" (part of every cache key of these vectors)
        self.precision = resolve_precision(precision, self.device)
        self.tokenizer = load_tokenizer(self.path)
        model = AutoModel.from_pretrained(self.path)
        self.model = model.to(self.device, dtype=torch_dtype(self.precision)).eval()
        self.forward_passes = 0  # counted so tests can prove a cache hit does no work

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        batch_size: int = 64,
        normalize: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Encode `texts` into a float32 array [N, dim].

        ``prompt`` names one of the model's prompts (``"query"``, ``"document"``);
        ``normalize`` defaults to the model's own (a ``Normalize`` module or not).
        """
        normalize = self.spec.normalize if normalize is None else normalize
        prefix = self.spec.prompt(prompt)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        order = self.length_order([prefix + t for t in texts])
        done = 0
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer(
                [prefix + texts[i] for i in idx], padding=True, truncation=True,
                max_length=self.max_seq_length, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state.float()
                self.forward_passes += 1
                vecs = pool(hidden, batch["attention_mask"], self.spec.mode)
                if normalize:
                    vecs = torch.nn.functional.normalize(vecs, dim=-1)
            out[idx] = vecs.float().cpu().numpy()
            done += len(idx)
            if progress is not None:
                progress(done, len(texts))
        return out

    def length_order(self, texts: Sequence[str]) -> np.ndarray:
        """Indices of ``texts`` by descending token count (after truncation), ties in input order."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return np.argsort([-len(x) for x in ids], kind="stable")


class ProgressLog:
    """A `progress` callback that logs every `every` seconds with a rate."""

    def __init__(self, what: str, every: float = 10.0, logger: logging.Logger = log):
        self.what, self.every, self.log = what, every, logger
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every or done == total:
            rate = done / max(now - self.t0, 1e-9)
            self.log.info("%s: %d/%d (%.0f%%, %.1f/s)", self.what, done, total, 100 * done / total, rate)
            self.last = now
