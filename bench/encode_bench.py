"""`teacher_encode_cold` / `teacher_encode_warm`: our teacher cache builder against
``SentenceTransformer.encode`` on the same English Bible verses and batch size.

Each side delivers the same thing: a float32 array of the teacher's vectors of every
sentence, in input order (they must agree; the max |diff| is in the details).

- cold, ours: `teacher.build_teacher_embeddings` on an empty cache folder (loads the
  teacher, hashes the texts, encodes, writes the Parquet shards), then
  ``TeacherEmbeddings.vectors(texts)`` (reads them back). Theirs:
  ``SentenceTransformer(path)`` (model load), then ``.encode(texts)``.
- warm, ours: the same two calls again, on the filled cache (no model load, no forward
  pass). Theirs: ``.encode(texts)`` again with the model already loaded: it has no
  cache, so a second call costs what the first did minus the load.

Same process, torch threads, batch size and max length (the teacher folder's). The two
sides run in threads that take turns at every forward pass of the BERT model (a hook
on its embeddings block, `interleave.Baton`, in ABBA order), so background load on the shared cores
hits both alike; each side's time is the sum of its own turns. Ours sorts by token
count, theirs by characters: on the default 2,000 verses that is 71.5k against 88.8k
padded tokens for 68.7k real ones.

`encode_bf16` (`run_encode_bf16`): the student (multilingual-e5-small) encoding the same
Bible verses in eight languages, with the ``passage: `` prompt, batch 64, through
`encoder.SentenceEncoder` with ``precision="bf16"`` (weights cast to bf16) against
``precision="fp32"``; both loaded and warmed up before timing. Three workers take turns
at every forward pass (ABBA between the two sides): bf16, fp32, and a probe that runs a
2048×2048 ``torch.mm`` in bf16 and one in fp32 for a short window each (`flops.MatmulProbe`),
so the matmul ceilings see the same background load as the batches. Rows:

- ``rows_per_s``: texts per second over each side's turns (tokenising, forward, pooling);
  ours = bf16, peer = fp32, so the ratio is bf16's speed-up;
- ``achieved_gflops``: the forward's matmul FLOPs over the padded batches
  (`flops.encoder_forward_flops`; its linear layers are checked against ``FlopCounterMode``
  on one batch, ``flop_counter_vs_formula`` in the details) per second of each side;
- ``fraction_of_peak``: that over the median matmul ceiling of its own dtype (bf16 / fp32);
- ``matmul_gflops``: the two ceilings themselves (the ratio is the hardware's bf16 gain).

The two sides' vectors must agree (cosine >= 0.999 per row; the minimum is in the details).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from mimo_pipeline.catalog import ResolvedModel
from mimo_pipeline.teacher import TeacherEmbeddings, build_teacher_embeddings

from .common import Row, log, median
from .flops import MatmulProbe, encoder_forward_flops
from .interleave import Baton, SwitchOnForward, is_text_embeddings

#: The languages of `encode_bf16`'s texts (Latin, Cyrillic, Han, Arabic, Kana, Hangul scripts).
BF16_LANGS = ("en", "de", "fr", "ru", "zh", "ar", "ja", "ko")


def english_sentences(n: int) -> list[str]:
    """The first ``n`` unique English (WEB) verses in canonical order (Genesis onwards)."""
    from mimo_pipeline.bible import read_language

    return list(dict.fromkeys(t for t in read_language("en").values() if t.strip()))[:n]


def _ours(texts: list[str], teacher: ResolvedModel, root: Path,
          batch_size: int) -> tuple[TeacherEmbeddings, np.ndarray]:
    te = build_teacher_embeddings(texts, teacher, root, batch_size=batch_size, device="cpu")
    return te, te.vectors(texts)


def run_encode(texts: list[str], teacher: ResolvedModel, *, batch_size: int = 64,
               keep_cache: Path | None = None) -> tuple[list[Row], dict, TeacherEmbeddings]:
    """Cold and warm teacher encoding, ours against sentence-transformers.

    Returns the rows, details, and the handle of a filled cache (copied to ``keep_cache``
    when given, so later benchmarks can read the teacher's vectors).
    """
    from sentence_transformers import SentenceTransformer

    n = len(texts)
    log(f"teacher encode: {n} sentences, batch {batch_size}, teacher {teacher.name}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
    try:
        def peer_cold():
            model = SentenceTransformer(str(teacher.path), device="cpu")
            return model, model.encode(texts, batch_size=batch_size, convert_to_numpy=True)

        cold = Baton(["ours", "peer"], alternate=True)
        with SwitchOnForward(cold, is_text_embeddings) as cold_switches:
            out = cold.run({"ours": lambda: _ours(texts, teacher, tmp / "cache", batch_size), "peer": peer_cold})
        if n > batch_size and min(len(cold.segments[k]) for k in cold.names) < 2:
            raise AssertionError(f"the two sides did not take turns: {cold.segments}")
        te, v_ours = out["ours"]
        model, v_peer = out["peer"]
        log(f"teacher cold: ours {n / cold.total('ours'):.1f}/s, sentence-transformers "
            f"{n / cold.total('peer'):.1f}/s")

        warm = Baton(["ours", "peer"], alternate=True)
        with SwitchOnForward(warm, is_text_embeddings):
            out = warm.run({
                "ours": lambda: _ours(texts, teacher, tmp / "cache", batch_size),
                "peer": lambda: model.encode(texts, batch_size=batch_size, convert_to_numpy=True),
            })
        te_warm, v_warm = out["ours"]
        log(f"teacher warm: ours {n / warm.total('ours'):.0f}/s, sentence-transformers "
            f"{n / warm.total('peer'):.1f}/s")
        del model

        diff = float(np.abs(v_ours - v_peer).max())
        if diff > 1e-4 or not np.array_equal(v_ours, v_warm) or te_warm.report.misses:
            raise AssertionError(f"teacher vectors disagree: max |ours - sentence-transformers| = {diff:.2e}, "
                                 f"warm misses {te_warm.report.misses}")
        if keep_cache is not None:
            dest = Path(keep_cache)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tmp / "cache", dest)
            te = TeacherEmbeddings(str(dest), te.teacher_ref, te.teacher_path, te.fingerprint, te.dim,
                                   te.normalized, te.report)
        rows = [
            Row("teacher_encode_cold", "sentences_per_s", n / cold.total("ours"), n / cold.total("peer"),
                "SentenceTransformer(path) + encode"),
            Row("teacher_encode_warm", "sentences_per_s", n / warm.total("ours"), n / warm.total("peer"),
                "encode, model already loaded"),
        ]
        details = {"max_abs_diff_vs_sentence_transformers": diff, "cold_turns": {
                       k: len(cold.segments[k]) for k in cold.names}, "cold_switches": cold_switches.count,
                   "cold_seconds": {k: round(cold.total(k), 2) for k in cold.names},
                   "warm_seconds": {k: round(warm.total(k), 3) for k in warm.names}}
        return rows, details, te
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def multilingual_sentences(n: int, langs: tuple[str, ...] = BF16_LANGS) -> list[str]:
    """``n`` verses, the first ``ceil(n / len(langs))`` non-empty ones of each language in turn."""
    from mimo_pipeline.bible import read_language

    per = -(-n // len(langs))
    out: list[str] = []
    for lang in langs:
        out += [t for t in read_language(lang).values() if t.strip()][:per]
    return out[:n]


def padded_batches(encoder, texts: list[str], prompt: str | None, batch_size: int) -> list[tuple[int, int]]:
    """``(rows, padded length)`` of each batch `SentenceEncoder.encode` forms from ``texts``."""
    prefix = encoder.spec.prompt(prompt)
    seen = [prefix + t for t in texts]
    ids = encoder.tokenizer(seen, truncation=True, max_length=encoder.max_seq_length,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    lens = np.array([len(x) for x in ids])
    order = encoder.length_order(seen)
    return [(len(idx), int(lens[idx].max())) for idx in (order[s:s + batch_size]
                                                         for s in range(0, len(order), batch_size))]


def _flop_counter_check(encoder, texts: list[str], prompt: str | None, batch_size: int) -> float:
    """``FlopCounterMode``'s count of one forward over the first (longest) batch / the formula's.

    Linear layers only: on CPU the counter has no formula for the fused attention kernel
    (`flops.encoder_forward_flops`), whose ``4·B·L²·H`` the formula adds analytically.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    prefix = encoder.spec.prompt(prompt)
    idx = encoder.length_order([prefix + t for t in texts])[:batch_size]
    batch = encoder.tokenizer([prefix + texts[i] for i in idx], padding=True, truncation=True,
                              max_length=encoder.max_seq_length, return_tensors="pt")
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        encoder.model(**batch)
    return counter.get_total_flops() / encoder_forward_flops(encoder.model.config, [tuple(batch["input_ids"].shape)],
                                                             attention=False)


def run_encode_bf16(texts: list[str], model_path: str | Path, *, batch_size: int = 64, window: float = 0.25,
                    prompt: str | None = "document", probe_n: int = 2048) -> tuple[list[Row], dict]:
    """bf16 against fp32 encoding of one model on the same texts; see the module docstring. ``probe_n``: the
    size of the ``torch.mm`` ceiling probe (tests shrink it: one 2048² bf16 mm takes seconds where the CPU
    emulates bf16)."""
    import torch

    from mimo_pipeline.encoder import SentenceEncoder
    from mimo_pipeline.precision import cpu_flags

    n = len(texts)
    log(f"encode_bf16: {n} texts, batch {batch_size}, {Path(model_path).name}, bf16 and fp32 taking turns")
    enc = {p: SentenceEncoder(model_path, device="cpu", precision=p) for p in ("bf16", "fp32")}
    for e in enc.values():  # warm-up: one-off allocations and kernel set-up stay out of the timing
        e.encode(texts[:batch_size], prompt=prompt, batch_size=batch_size)
    shapes = padded_batches(enc["fp32"], texts, prompt, batch_size)
    flops = encoder_forward_flops(enc["fp32"].model.config, shapes)
    counter_ratio = _flop_counter_check(enc["bf16"], texts, prompt, batch_size)
    probes = {p: MatmulProbe(probe_n, dtype) for p, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    baton = Baton(["bf16", "fp32", "probe"], alternate=True)

    def probe_windows() -> dict[str, list[float]]:
        rates: dict[str, list[float]] = {p: [] for p in probes}
        for _ in range(len(shapes)):
            for p, probe in probes.items():
                rates[p].append(probe.window(window))
            baton.switch()
        return rates

    with SwitchOnForward(baton, is_text_embeddings) as switches:
        out = baton.run({"bf16": lambda: enc["bf16"].encode(texts, prompt=prompt, batch_size=batch_size),
                         "fp32": lambda: enc["fp32"].encode(texts, prompt=prompt, batch_size=batch_size),
                         "probe": probe_windows})
    if len(shapes) > 1 and min(len(baton.segments[k]) for k in ("bf16", "fp32")) < 2:
        raise AssertionError(f"the two sides did not take turns: {baton.segments}")
    a, b = out["bf16"], out["fp32"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    if cos.min() < 0.999:
        raise AssertionError(f"bf16 vectors drift from fp32: min cosine {cos.min():.6f}")
    seconds = {k: baton.total(k) for k in ("bf16", "fp32")}
    gflops = {k: flops / seconds[k] / 1e9 for k in seconds}
    peak = {k: median(out["probe"][k]) for k in probes}
    log(f"encode_bf16: bf16 {n / seconds['bf16']:.1f} rows/s, fp32 {n / seconds['fp32']:.1f} rows/s; "
        f"matmul {probe_n}² bf16 {[round(r) for r in out['probe']['bf16']]}, fp32 "
        f"{[round(r) for r in out['probe']['fp32']]} GFLOP/s")
    rows = [
        Row("encode_bf16", "rows_per_s", n / seconds["bf16"], n / seconds["fp32"],
            "ours = SentenceEncoder bf16 weights, peer = fp32; same texts and batches"),
        Row("encode_bf16", "achieved_gflops", gflops["bf16"], gflops["fp32"], "forward matmul FLOPs, padded"),
        Row("encode_bf16", "fraction_of_peak", gflops["bf16"] / peak["bf16"], gflops["fp32"] / peak["fp32"],
            f"of torch.mm {probe_n}² ceiling: {peak['bf16']:.0f} bf16, {peak['fp32']:.0f} fp32 GFLOP/s"),
        Row("encode_bf16", "matmul_gflops", peak["bf16"], peak["fp32"], f"torch.mm {probe_n}², bf16 / fp32"),
    ]
    details = {"texts": n, "batch_size": batch_size, "prompt": prompt, "batches": shapes,
               "padded_tokens": int(sum(r * t for r, t in shapes)), "forward_gflop": flops / 1e9,
               "flop_counter_vs_formula": counter_ratio, "seconds": {k: round(v, 3) for k, v in seconds.items()},
               "turns": {k: len(baton.segments[k]) for k in baton.names}, "switches": switches.count,
               "matmul_gflops_windows": out["probe"], "min_cosine_bf16_vs_fp32": float(cos.min()),
               "cpu_bf16_flags": sorted(f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()),
               "torch_threads": torch.get_num_threads()}
    return rows, details
