"""Scale of the data side: a 1,000,000-row corpus and a 1,000,000-row wide pairs file
through the streaming builders, peak RSS and seconds per step; teacher throughput.

    .venv/bin/python -m bench.data_scale                      # 1M rows each (about 15 min on 2 busy cores)
    .venv/bin/python -m bench.data_scale --rows 250000        # the same at a quarter: memory should not follow
    .venv/bin/python -m bench.data_scale --teacher-rows 20000 --device cuda   # teacher throughput on a GPU

Each step runs in its own child process (``python -m bench.data_scale --step <name>``);
its figure is the child's ``ru_maxrss`` from ``os.wait4`` (the kernel's peak resident set,
nothing sampled) and its wall seconds. The inputs are synthetic and written first (the
``gen`` step, also measured):

- ``corpus.parquet``: ``--rows`` rows of (en, text, lang) in 10 languages, each English
  sentence unique (an OPUS-like pairwise corpus: the worst case for the per-row arrays,
  one verse id per row), no split column (a seeded train/dev/eval split by sentence);
- ``mmarco/``: a ``datasets.Dataset.save_to_disk`` folder in the official
  mMARCO-parallel layout, ``--rows`` rows × 14 languages (``query_<lang>``,
  ``positive_<lang>``, Dutch as ``dt``), queries of about 35 and passages of about 330
  characters (MS MARCO's means).

Steps: ``corpus`` = `corpus.build_parallel_corpus_cached` with the official filter preset
(what the ``parallel_corpus`` asset calls); ``pairs`` = `pairs.build_user_pairs` (what
``retrieval_pairs`` calls for a ``source_path``); ``teacher_texts`` = the teacher's inputs
streamed (`teacher.iter_teacher_texts` over the corpus' train/dev English and every pair's
English query and passage: the texts ``teacher_embeddings`` encodes); ``teacher`` =
`teacher.build_teacher_embeddings` on a slice of ``--teacher-rows`` texts (the English query
and passage of the first ``--teacher-rows / 2`` pairs, repeats dropped) with the profile's
teacher (all-MiniLM-L6-v2), an empty cache, sentences per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MMARCO_LANGS = ("ar", "zh", "dt", "en", "fr", "de", "hi", "id", "it", "ja", "pt", "ru", "es", "vi")
CORPUS_LANGS = ("de", "fr", "es", "it", "pt", "ru", "zh", "ja", "ar", "hi")
WORDS = ("the of and to in is was for on that with as by at from this are be or an it which has have not but "
         "their were its also one after all new two first been other more about time when can into who may year "
         "where most over some such used only these because under three made many world city state part like "
         "through during between both well each while later since found called known including early became "
         "several second began around family number national public general however within based among large "
         "small water people house north south river music school league season album party film series").split()


def _texts(rng, n: int, mean_words: int, pool: int = 50_000):
    """``n`` synthetic sentences of about ``mean_words`` words: a pool of distinct sentences
    drawn with replacement (text content does not matter to the data side, only sizes)."""
    import numpy as np
    import pyarrow as pa

    lengths = np.maximum(3, rng.poisson(mean_words, pool))
    words = np.array(WORDS)
    sentences = [" ".join(words[rng.integers(0, len(words), k)]).capitalize() + "." for k in lengths]
    return pa.array(sentences).take(pa.array(rng.integers(0, pool, n)))


def gen(work: Path, rows: int, seed: int = 0) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    chunk = 50_000
    # corpus: unique English per row (the row number), 10 languages in turn
    with pq.ParquetWriter(work / "corpus.parquet", pa.schema([("en", pa.string()), ("text", pa.string()),
                                                              ("lang", pa.string())]), compression="zstd") as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ids = pa.array([f"(#{i})" for i in range(start, start + n)])
            en = pc.binary_join_element_wise(_texts(rng, n, 14), ids, " ")
            text = pc.binary_join_element_wise(_texts(rng, n, 14), ids, " ")
            lang = pa.array([CORPUS_LANGS[i % len(CORPUS_LANGS)] for i in range(start, start + n)])
            w.write_table(pa.table({"en": en, "text": text, "lang": lang}))
    # the official wide layout: Parquet first, then a datasets save_to_disk folder
    names = [f"{side}_{lang}" for lang in MMARCO_LANGS for side in ("query", "positive")]
    wide = work / "mmarco.parquet"
    with pq.ParquetWriter(wide, pa.schema([(c, pa.string()) for c in names]), compression="zstd") as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            cols = {}
            for lang in MMARCO_LANGS:
                cols[f"query_{lang}"] = _texts(rng, n, 6)
                cols[f"positive_{lang}"] = _texts(rng, n, 55)
            w.write_table(pa.table(cols))
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_parquet(str(wide), cache_dir=str(work / "hf_cache"))
    ds.save_to_disk(str(work / "mmarco"), max_shard_size="500MB")
    del ds
    shutil.rmtree(work / "hf_cache", ignore_errors=True)
    return {"corpus_mb": round((work / "corpus.parquet").stat().st_size / 1e6, 1),
            "mmarco_parquet_mb": round(wide.stat().st_size / 1e6, 1),
            "mmarco_folder_mb": round(sum(f.stat().st_size for f in (work / "mmarco").rglob("*") if f.is_file())
                                      / 1e6, 1)}


def step(name: str, work: Path, args) -> dict:
    """One step, in this process (the parent measures it)."""
    if name == "gen":
        return gen(work, args.rows)
    if name == "corpus":
        from mimo_pipeline.corpus import CorpusConfig, build_parallel_corpus_cached

        cfg = CorpusConfig(source_path=str(work / "corpus.parquet")).with_preset("official")
        res = build_parallel_corpus_cached(cfg, work / "out" / "corpus")
        return {"rows_out": res.n_rows, "verses_by_split": res.n_verses_by_split,
                "dropped": {r[0]: r[1] - r[-1] for r in res.stats_rows}}
    if name == "pairs":
        from mimo_pipeline.pairs import PairsConfig, build_user_pairs

        res = build_user_pairs(PairsConfig(source_path=str(work / "mmarco")), work / "out" / "pairs")
        return {"pairs": res.n_pairs, "rows_read": res.rows_read, "languages": len(res.languages),
                "path": res.path}
    if name == "teacher_texts":
        from mimo_pipeline.pairs import PairsConfig, build_user_pairs
        from mimo_pipeline.teacher import iter_teacher_texts

        corpus = next((work / "out" / "corpus").glob("*/parallel.parquet"))
        pairs = build_user_pairs(PairsConfig(source_path=str(work / "mmarco")), work / "out" / "pairs")  # reused
        n = chunks = 0
        for chunk in iter_teacher_texts(corpus, ("train", "dev"), pairs):
            n += len(chunk)
            chunks += 1
        return {"unique_texts": n, "chunks": chunks}
    if name == "teacher":
        from mimo_pipeline.catalog import resolve_model
        from mimo_pipeline.pairs import PairsConfig, build_user_pairs
        from mimo_pipeline.teacher import build_teacher_embeddings, iter_teacher_texts

        pairs = build_user_pairs(PairsConfig(source_path=str(work / "mmarco")), work / "out" / "pairs")
        # the slice: the English query and passage of the first pairs, teacher_rows texts in all
        from mimo_pipeline.fileio import iter_parquet_batches

        batch = next(iter_parquet_batches(pairs.path, ["q_en", "p_en"], batch_size=args.teacher_rows // 2))
        texts = list(dict.fromkeys(batch.column(0).to_pylist() + batch.column(1).to_pylist()))
        cache = work / "out" / f"teacher_cache-{time.time_ns()}"
        home = os.environ.get("MIMO_HOME", str(Path(__file__).resolve().parents[1] / "data"))
        teacher = resolve_model("all-MiniLM-L6-v2", home)
        t0 = time.perf_counter()
        res = build_teacher_embeddings(texts, teacher, cache, batch_size=args.teacher_batch, device=args.device,
                                       precision=args.precision)
        wall = time.perf_counter() - t0
        shutil.rmtree(cache, ignore_errors=True)
        r = res.report
        return {"texts": r.n_texts, "encoded": r.misses, "encode_seconds": round(r.seconds, 2),
                "sentences_per_s": round(r.sentences_per_s, 1), "wall_s_with_load": round(wall, 2),
                "device": args.device or "default", "precision": res.precision,
                "mean_chars": round(sum(map(len, texts)) / max(1, len(texts)), 1)}
    raise SystemExit(f"unknown step {name}")


def measure(name: str, work: Path, args) -> dict:
    """Run one step in a child; its peak RSS (MB, kernel's ru_maxrss) and seconds."""
    out = work / f"step-{name}.json"
    cmd = [sys.executable, "-m", "bench.data_scale", "--step", name, "--work", str(work), "--rows", str(args.rows),
           "--teacher-rows", str(args.teacher_rows), "--teacher-batch", str(args.teacher_batch),
           "--precision", args.precision, "--out", str(out)] + (["--device", args.device] if args.device else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    result = json.loads(out.read_text()) if out.exists() and code == 0 else {"error": f"exit status {code}"}
    row = {"step": name, "rows": args.rows, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
           "seconds": round(seconds, 1), **result}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.data_scale", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: /tmp/mimo-scale-<rows>)")
    p.add_argument("--steps", default="baseline,baseline_torch,gen,corpus,pairs,teacher_texts,teacher")
    p.add_argument("--teacher-rows", type=int, default=20_000)
    p.add_argument("--teacher-batch", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = args.work or Path(f"/tmp/mimo-scale-{args.rows}")
    work.mkdir(parents=True, exist_ok=True)
    if args.step:
        if args.step == "baseline":  # what importing the data side costs (the teacher step adds torch)
            import mimo_pipeline.corpus  # noqa: F401
            import mimo_pipeline.pairs  # noqa: F401
            result = {}
        elif args.step == "baseline_torch":  # ... and with the teacher's imports (torch, transformers)
            import mimo_pipeline.teacher  # noqa: F401
            result = {}
        else:
            result = step(args.step, work, args)
        args.out.write_text(json.dumps(result))
        return
    rows = [measure(name, work, args) for name in args.steps.split(",") if name]
    (work / "data_scale.json").write_text(json.dumps(rows, indent=2))
    print("\n| step | rows | peak RSS MB | seconds |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['rows']:,} | {r['peak_rss_mb']:,.0f} | {r['seconds']:,.1f} |")
    if not args.keep:
        shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
