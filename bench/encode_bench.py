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
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from mimo_pipeline.catalog import ResolvedModel
from mimo_pipeline.teacher import TeacherEmbeddings, build_teacher_embeddings

from .common import Row, log
from .interleave import Baton, SwitchOnForward, is_text_embeddings


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
