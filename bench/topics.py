"""What more query topics cost the evaluation: texts each model encodes, by query verses.

    .venv/bin/python -m bench.topics            # the default profile, 80 and 200 topics
    .venv/bin/python -m bench.topics --topics 80 120 200

For each number of query verses, builds the default's Bible benchmarks (test side from the
New Testament with a pool of twice its query and target verses: as many distractors as query
and target verses, the default's rule; ``dev-`` from the dev books at a quarter of the topics
and of the pool) and counts the distinct texts one model encodes over all of them (documents and
queries, each once: `evaluation` encodes a text once per model). Encoding is most of
``mlir_eval``, so its time scales with this count. Builds the corpus if MIMO_HOME lacks it
(seconds); encodes nothing.
"""

from __future__ import annotations

import argparse

from mimo_pipeline.benchmarks import DEV_SHARE, Benchmark, BenchmarkConfig, build_bible_benchmarks
from mimo_pipeline.bible import read_cross_references
from mimo_pipeline.corpus import build_parallel_corpus_cached, verse_texts
from mimo_pipeline.settings import Settings


def needed_verses(mlir: Benchmark) -> int:
    """Query verses and their cross-referenced targets: what a pool must hold before distractors."""
    verses = {q["group"] for q in mlir.queries.values()}
    for rel in mlir.qrels.values():
        verses.update(mlir.corpus[d]["group"] for d in rel)
    return len(verses)


def distinct_texts(benches: list[Benchmark]) -> int:
    texts = set()
    for b in benches:
        texts |= {("document", d["text"]) for d in b.corpus.values()}
        texts |= {("query", q["text"]) for q in b.queries.values()}
    return len(texts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, nargs="+", default=[80, 200], help="query verses of the test side")
    args = ap.parse_args(argv)
    s = Settings.resolve()
    corpus = build_parallel_corpus_cached(s.profile.corpus, s.corpus_dir)
    refs = list(read_cross_references())
    splits = {split: verse_texts(corpus.path, split) for split in ("eval", "dev")}
    print("| query topics (test / dev) | query and target verses | pool verses | distinct texts per model |")
    print("|---|---|---|---|")
    for topics in args.topics:
        row, test_pool = [], 0
        for split, prefix, share in (("eval", "", 1), ("dev", "dev-", DEV_SHARE)):
            verses, q = splits[split], -(-topics // share)
            langs = sorted({lang for v in verses.values() for lang in v})
            every = build_bible_benchmarks(verses, refs, langs,
                                           BenchmarkConfig(query_verses=q, pool_verses=len(verses)),
                                           prefix=prefix, split=split)
            need = needed_verses(every[0])
            # test: as many distractors as query and target verses; dev: a quarter of that pool (the default's rule)
            pool = min(len(verses), 2 * need if share == 1 else max(need, -(-test_pool // share)))
            test_pool = test_pool or pool
            benches = build_bible_benchmarks(verses, refs, langs, BenchmarkConfig(
                query_verses=q, pool_verses=pool,
                translation_queries=-(-s.profile.benchmarks.translation_queries // share)), prefix=prefix, split=split)
            row.append((q, need, pool, distinct_texts(benches)))
        (tq, tn, tp, tt), (dq, dn, dp, dt) = row
        print(f"| {tq} / {dq} | {tn} / {dn} | {tp} / {dp} | {tt + dt:,} ({tt:,} + {dt:,}) |")


if __name__ == "__main__":
    main()
