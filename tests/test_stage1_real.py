"""Stage 1 on a few hundred real parallel pairs with the real packaged models.

multilingual-e5-small (student) is distilled onto all-MiniLM-L6-v2 (teacher) over 320
rows of Korean/Arabic-English Bible pairs and English identity rows (20 steps of 16, on
SentenceTransformerTrainer with EmbedDistillLoss). On held-out New Testament pairs, the
distillation loss goes down and en↔X translation P@1 of the student's own vectors goes up.
"""

import numpy as np
import pytest
import torch

from mimo_pipeline.catalog import resolve_model
from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached, read_corpus
from mimo_pipeline.encoder import SentenceEncoder
from mimo_pipeline.losses import distill_loss, load_projection, make_projection
from mimo_pipeline.probe import translation_p_at_1
from mimo_pipeline.stages import StageConfig, _fit_rows, _order, fit_projection, stage1_rows, train_stage1
from mimo_pipeline.student import export_checkpoint
from mimo_pipeline.teacher import build_teacher_embeddings, english_texts
from mimo_pipeline.trainer import TrainConfig

pytestmark = pytest.mark.e2e


def held_out_distill_loss(model_path, projection, rows, teacher_vecs) -> float:
    """Stage 1's loss on ``rows``: cosine distillation of ``W·s(x)`` and ``W·s(en)`` onto ``T(en)``
    (Stage 1's ``query`` prompt)."""
    enc = SentenceEncoder(model_path, max_seq_length=64)
    s = np.concatenate([enc.encode([r["text"] for r in rows], prompt="query"),
                        enc.encode([r["en"] for r in rows], prompt="query")])
    t = torch.from_numpy(np.concatenate([teacher_vecs] * 2))
    with torch.no_grad():
        return float(distill_loss(projection(torch.from_numpy(s)), t))


def test_stage1_lowers_distillation_loss_and_raises_translation_p_at_1(packaged_home, tmp_path):
    corpus = build_parallel_corpus_cached(
        CorpusConfig(languages=("ko", "ar"), max_train_verses=600, max_eval_verses=60), tmp_path / "corpus")
    student = export_checkpoint(resolve_model("multilingual-e5-small", packaged_home, use_hub=False),
                                tmp_path / "models")
    teacher_model = resolve_model("all-MiniLM-L6-v2", packaged_home, use_hub=False)
    teacher = build_teacher_embeddings(english_texts(corpus.path, ("train", "eval")), teacher_model,
                                       tmp_path / "teacher_cache")

    train = read_corpus(corpus.path, "train", ["text", "en"]).to_pylist()
    held_out = read_corpus(corpus.path, "eval", ["text", "en"]).to_pylist()
    assert len(train) >= 1000 and len(held_out) >= 100

    cfg = StageConfig(TrainConfig(steps=20, batch_size=16, lr=1e-4, max_length=64, seed=0),
                      projection_init="lstsq")
    result = train_stage1(student, corpus.path, teacher, cfg, tmp_path / "models")
    assert result.steps == 20 and result.rows_per_s > 0
    assert all(np.isfinite(h["loss"]) for h in result.history)

    # Before: the frozen student with the very W Stage 1 started from (fitted on rows that the
    # 320 training draws never touch, so it is not in-sample for any training batch).
    t = cfg.train
    rows = stage1_rows(corpus.path, cfg.english_share, t.seed)
    drawn = _order(len(rows.texts), t.steps * t.batch_size, t.seed)
    w0 = make_projection(student.dim, teacher.dim, seed=t.seed)
    fit_projection(w0, student, rows, teacher, _fit_rows(len(rows.texts), drawn, cfg.projection_fit_rows, t.seed),
                   t.max_length, cfg.projection_ridge)
    t_held = teacher.vectors([r["en"] for r in held_out])
    before = held_out_distill_loss(student.path, w0, held_out, t_held)
    after = held_out_distill_loss(result.checkpoint.path, load_projection(result.projection_path), held_out, t_held)
    print(f"held-out distillation loss {before:.4f} -> {after:.4f}")
    assert after < before - 0.005, (before, after)

    p_before = translation_p_at_1(SentenceEncoder(student.path), corpus.path, per_language=60)
    p_after = translation_p_at_1(SentenceEncoder(result.checkpoint.path), corpus.path, per_language=60)
    print(f"held-out translation P@1 {p_before} -> {p_after}")
    assert p_after["all"] > p_before["all"] + 0.02, (p_before, p_after)
