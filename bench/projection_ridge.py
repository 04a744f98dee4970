"""Stage 1's least-squares W out of sample, by fit rows and ridge (the README's table).

Needs a finished `make run` (the default corpus and base student under MIMO_HOME):

    MIMO_HOME=./data .venv/bin/python -m bench.projection_ridge

Encodes 2,048 seeded training rows and 512 seeded dev rows (both sides) with the frozen
student, fits ``W`` on the first 256..2048 training rows and prints the mean cosine
distance of ``W·s`` to the teacher's vectors on the fit rows and on the dev rows. The
held-out side is the corpus' dev split (whole Old Testament books that training never
draws): settings are chosen on dev, the New Testament (eval) stays test only.
"""

import glob
import os

import numpy as np
import pyarrow as pa
import torch

from mimo_pipeline.catalog import resolve_model
from mimo_pipeline.corpus import read_corpus
from mimo_pipeline.encoder import SentenceEncoder
from mimo_pipeline.losses import distill_loss, fit_least_squares, make_projection
from mimo_pipeline.teacher import build_teacher_embeddings


def cosine_distance(projection, s: np.ndarray, t: np.ndarray) -> float:
    with torch.no_grad():
        return float(distill_loss(projection(torch.from_numpy(s)), torch.from_numpy(t)))


def main(held_out: int = 512, sizes=(256, 512, 1024, 2048), ridges=(1e-3, 1e-1, 1.0, 3.0, 10.0, 30.0, 100.0)) -> None:
    home = os.environ.get("MIMO_HOME", "data")
    corpora = sorted(glob.glob(f"{home}/corpus/*/parallel.parquet"), key=os.path.getmtime, reverse=True)  # newest
    students = glob.glob(f"{home}/models/base_student/*/")
    if not corpora or not students:
        raise SystemExit(f"no corpus or base_student under {home}: run `make run` first")
    train = read_corpus(corpora[0], "train", ["text", "en"])
    dev = read_corpus(corpora[0], "dev", ["text", "en"])
    if dev.num_rows < held_out:
        raise SystemExit(f"{corpora[0]} has {dev.num_rows} dev rows, fewer than {held_out}: rebuild the corpus "
                         f"(`make run`) so that it has the dev split")
    rng = np.random.default_rng(0)
    rows = pa.concat_tables([train.take(rng.permutation(train.num_rows)[:max(sizes)]),
                             dev.take(rng.permutation(dev.num_rows)[:held_out])])
    texts, en = rows["text"].to_pylist(), rows["en"].to_pylist()
    idx = np.arange(len(texts))
    encoder = SentenceEncoder(students[0], max_seq_length=64)
    # Stage 1's inputs: the query prompt on both sides (see mimo_pipeline.stages)
    s = np.concatenate([encoder.encode([texts[i] for i in idx], prompt="query"),
                        encoder.encode([en[i] for i in idx], prompt="query")])
    teacher = build_teacher_embeddings([en[i] for i in idx], resolve_model("all-MiniLM-L6-v2", home),
                                       f"{home}/teacher_cache")
    t1 = teacher.vectors([en[i] for i in idx])
    tt = np.concatenate([t1, t1])
    n = len(idx)
    test = np.r_[np.arange(max(sizes), n), n + np.arange(max(sizes), n)]
    print("| fit rows | ridge | in-sample | dev (held out) |\n|---|---|---|---|")
    for m in sizes:
        fit = np.r_[np.arange(m), n + np.arange(m)]
        for ridge in ridges:
            p = fit_least_squares(make_projection(s.shape[1], tt.shape[1]), torch.from_numpy(s[fit]),
                                  torch.from_numpy(tt[fit]), ridge=ridge)
            print(f"| {m} | {ridge:g} | {cosine_distance(p, s[fit], tt[fit]):.3f} "
                  f"| {cosine_distance(p, s[test], tt[test]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
