"""`make bench` plumbing at tiny sizes: rows and ratios in DuckDB, the turn-taking runner,
the exact-search peer, and the encoder's length-sorted batching against one-by-one encoding."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from bench.common import BENCHES, Row, format_table
from bench.interleave import Baton
from bench.run import main as bench_main
from bench.search_bench import numpy_topk, random_unit, recall_at_k
from mimo_pipeline.checkpoint import PoolingSpec, write_sentence_transformers_files
from mimo_pipeline.encoder import SentenceEncoder
from mimo_pipeline.storage import ResultsDB

from tests.conftest import torch_threads


def test_search_bench_writes_rows_with_ratio_ours_over_peer(tmp_path):
    home = tmp_path / "home"
    rc = bench_main(["--only", "search", "--home", str(home), "--queries", "20", "--docs", "400", "--dim", "16",
                     "--k", "10", "--ann-docs", "300", "--probe-seconds", "0.05"])
    assert rc == 0
    df = ResultsDB(home / "mimo.duckdb").query("SELECT * FROM bench_results ORDER BY metric")
    assert set(df["bench"]) == {"search"} and set(df["bench"]) <= set(BENCHES)
    assert {"queries_per_s", "recall@10_ivf", "recall@10_hnsw", "queries_per_s_ivf",
            "queries_per_s_hnsw"} == set(df["metric"])
    assert (df["ours"] > 0).all() and (df["peer"] > 0).all() and df["created_at"].notna().all()
    np.testing.assert_allclose(df["ratio"], df["ours"] / df["peer"], rtol=1e-12)
    recall = df.set_index("metric").loc[["recall@10_ivf", "recall@10_hnsw"]]
    assert ((recall["ours"] > 0) & (recall["ours"] <= 1) & (recall["peer"] == 1.0)).all()
    details = json.loads((home / "bench" / "latest.json").read_text())
    assert details["search"]["flat_recall_vs_numpy"] == 1.0


def test_row_ratio_and_table():
    rows = [Row("search", "queries_per_s", 300.0, 200.0, "numpy"), Row("search", "x", 1.0, 0.0)]
    assert rows[0].ratio == 1.5 and rows[0].record()["ratio"] == 1.5
    assert np.isnan(rows[1].ratio)
    table = format_table(rows)
    assert "1.50" in table and "queries_per_s" in table and "numpy" in table


def test_numpy_topk_is_exact_and_sorted():
    rng = np.random.default_rng(1)
    q, d = random_unit(7, 8, rng), random_unit(50, 8, rng)
    scores, ids = numpy_topk(q, d, 5, chunk=3)
    sim = q @ d.T
    np.testing.assert_array_equal(ids, np.argsort(-sim, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.take_along_axis(sim, ids, axis=1), rtol=1e-5)
    assert recall_at_k(ids, ids) == 1.0
    _, all_ids = numpy_topk(q, d[:3], 5)  # k beyond the pool: every document, sorted
    assert all_ids.shape == (7, 3)


def test_baton_takes_turns_and_counts_only_own_time():
    baton = Baton(["a", "b"])
    trace: list[str] = []
    active = threading.Lock()

    def worker(name, turns, baton):
        def run():
            for _ in range(turns):
                assert active.acquire(blocking=False), "two workers ran at once"
                trace.append(name)
                active.release()
                baton.switch()
            return name
        return run

    out = baton.run({"a": worker("a", 3, baton), "b": worker("b", 2, baton)})
    assert out == {"a": "a", "b": "b"}
    assert trace == ["a", "b", "a", "b", "a"]
    assert len(baton.segments["a"]) == 4 and len(baton.segments["b"]) == 3
    baton.switch()  # outside run: a no-op

    abba = Baton(["a", "b"], alternate=True)
    trace.clear()
    abba.run({"a": worker("a", 4, abba), "b": worker("b", 4, abba)})
    assert trace == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(abba.segments["a"]) == 5 and len(abba.segments["b"]) == 5


def test_baton_reraises_a_worker_error():
    baton = Baton(["a", "b"])

    def boom():
        raise ValueError("nope")

    with pytest.raises(RuntimeError, match="'a' failed: nope"):
        baton.run({"a": boom, "b": lambda: baton.switch()})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer BERT with a word-level tokenizer, as a sentence-transformers folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bench_bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(40)] + ["query:"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=24).save_pretrained(d)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32, pad_token_id=0)).save_pretrained(d)
    write_sentence_transformers_files(d, PoolingSpec(dim=32, mode="mean", max_seq_length=24,
                                                     prompts={"query": "query: "}))
    return d


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    # Few characters can mean many tokens and the reverse ("w1" vs "w39"): char and token orders differ.
    return [" ".join(f"w{rng.integers(0, 40)}" for _ in range(rng.integers(1, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model):
    # one thread: on busy shared cores, waking a second one costs more than a tiny op
    with torch_threads(1):
        yield SentenceEncoder(tiny_model, device="cpu")


def test_length_sorted_batches_equal_one_by_one_encoding(tiny_encoder):
    enc = tiny_encoder
    texts = _texts(13)
    for prompt, normalize in ((None, None), ("query", True)):
        fast = enc.encode(texts, batch_size=4, prompt=prompt, normalize=normalize)
        plain = np.concatenate([enc.encode([t], batch_size=1, prompt=prompt, normalize=normalize) for t in texts])
        assert fast.shape == (13, 32) and fast.dtype == np.float32
        np.testing.assert_allclose(fast, plain, atol=1e-5, rtol=0)
        # the reference by hand: tokenizer + model + masked mean, one sentence at a time
        prefix = "query: " if prompt else ""
        with torch.no_grad():
            for i in (0, 12):
                b = enc.tokenizer([prefix + texts[i]], truncation=True, max_length=24, return_tensors="pt")
                v = enc.model(**b).last_hidden_state[0].mean(0)
                if normalize:
                    v = torch.nn.functional.normalize(v, dim=0)
                np.testing.assert_allclose(fast[i], v.numpy(), atol=1e-5, rtol=0)


def test_length_order_sorts_by_tokens_not_characters(tiny_encoder):
    enc = tiny_encoder
    texts = ["w39 w39", "w1 w1 w1", "w2", "w3 w3 w3"]  # chars: 7, 8, 2, 8; tokens: 4, 5, 3, 5
    assert enc.length_order(texts).tolist() == [1, 3, 0, 2]
    long = " ".join(["w1"] * 60)  # truncated to max_seq_length: ties with another long text keep input order
    assert enc.length_order(["w1", long, long + " w2"]).tolist() == [1, 2, 0]


def test_encoders_take_turns_at_every_forward_pass(tiny_model, tiny_encoder):
    """The hook must fire for sentence-transformers too (it calls the HF model's forward directly)."""
    from sentence_transformers import SentenceTransformer

    from bench.interleave import SwitchOnForward, is_text_embeddings

    peer = SentenceTransformer(str(tiny_model), device="cpu")
    texts = _texts(12, seed=3)
    baton = Baton(["ours", "peer"])
    with SwitchOnForward(baton, is_text_embeddings) as switches:
        out = baton.run({"ours": lambda: tiny_encoder.encode(texts, batch_size=4),
                         "peer": lambda: peer.encode(texts, batch_size=4, convert_to_numpy=True)})
    assert switches.count == 6  # three batches a side
    assert len(baton.segments["ours"]) == 4 and len(baton.segments["peer"]) == 4
    np.testing.assert_allclose(out["ours"], out["peer"], atol=1e-5, rtol=0)


def test_encoder_forward_flops_closed_form_and_flop_counter(tiny_encoder):
    from bench.encode_bench import _flop_counter_check, padded_batches
    from bench.flops import encoder_forward_flops

    cfg = tiny_encoder.model.config  # H 32, F 64, 2 layers
    assert encoder_forward_flops(cfg, [(3, 5)]) == 2 * (3 * 5 * (8 * 32 * 32 + 4 * 32 * 64) + 4 * 3 * 25 * 32)
    assert encoder_forward_flops(cfg, [(3, 5)], attention=False) == 2 * 3 * 5 * (8 * 32 * 32 + 4 * 32 * 64)
    assert encoder_forward_flops(cfg, [(3, 5), (2, 4)]) == (encoder_forward_flops(cfg, [(3, 5)])
                                                           + encoder_forward_flops(cfg, [(2, 4)]))
    texts = _texts(9, seed=5)
    shapes = padded_batches(tiny_encoder, texts, "query", 4)
    assert [b for b, _ in shapes] == [4, 4, 1] and [n for _, n in shapes] == sorted((n for _, n in shapes),
                                                                                  reverse=True)
    longest = max(len(t.split()) + 3 for t in texts)  # [CLS] query: ... [SEP]
    assert shapes[0][1] == min(longest, 24)
    # linear layers; the tiny BERT's pooler (2·B·H², unused by sentence encoding) adds 0.3%
    assert _flop_counter_check(tiny_encoder, texts, "query", 4) == pytest.approx(1.0, rel=0.005)


def test_encode_bf16_bench_rows_on_a_tiny_model(tiny_model):
    from bench.encode_bench import run_encode_bf16

    rows, details = run_encode_bf16(_texts(24, seed=7), tiny_model, batch_size=8, window=0.01, prompt="query",
                                    probe_n=256)
    by = {r.metric: r for r in rows}
    assert set(by) == {"rows_per_s", "achieved_gflops", "fraction_of_peak", "matmul_gflops"}
    assert {r.bench for r in rows} == {"encode_bf16"} <= set(BENCHES)
    assert all(r.ours > 0 and r.peer > 0 for r in rows)
    assert details["turns"]["bf16"] == details["turns"]["fp32"] == 4  # three batches a side: they took turns
    assert len(details["matmul_gflops_windows"]["bf16"]) == 3
    assert details["min_cosine_bf16_vs_fp32"] >= 0.999
    # the same FLOPs on both sides: the GFLOP/s ratio is the rows/s ratio
    assert by["achieved_gflops"].ratio == pytest.approx(by["rows_per_s"].ratio, rel=1e-9)


@pytest.mark.e2e
def test_pipeline_seconds_per_asset_from_the_event_log(smoke):
    """`bench.pipeline.step_seconds` reads every asset step of a finished full_mimo run."""
    from bench.pipeline import step_seconds

    run_id, seconds = step_seconds(smoke["env"]["DAGSTER_HOME"])
    assert {"teacher_embeddings", "stage1_checkpoint", "stage2_checkpoint", "baseline_checkpoints",
            "mlir_eval"} <= set(seconds)
    assert all(s >= 0 for s in seconds.values()) and run_id


def test_topics_bench_counts_query_and_target_verses_and_each_text_once():
    from bench.topics import distinct_texts, needed_verses
    from mimo_pipeline.benchmarks import BenchmarkConfig, build_bible_benchmarks

    langs = ["en", "de"]
    verses = {f"40.1.{i}": {lang: f"{lang} verse {i}" for lang in langs} for i in range(1, 31)}
    refs = [("40.1.1", "40.1.2"), ("40.1.1", "40.1.3"), ("40.1.4", "40.1.3"), ("40.1.5", "40.1.6")]
    benches = build_bible_benchmarks(verses, refs, langs, BenchmarkConfig(query_verses=3, pool_verses=12,
                                                                          translation_queries=2))
    assert needed_verses(benches[0]) == 6  # 1, 4, 5 and their targets 2, 3, 6
    # mlir, monolingual-en/de and translation share one pool of 12 verses x 2 languages; queries: 3 verses
    # x 2 languages with the query prompt, plus the translation queries' texts
    translation_q = {q["text"] for q in benches[-1].queries.values()}
    assert distinct_texts(benches) == 24 + len({q["text"] for q in benches[0].queries.values()} | translation_q)


def test_compare_homes_joins_the_latest_rows_of_two_homes(tmp_path, capsys):
    """B − A per model and benchmark at query_lang all, each home's latest row, A's half-interval."""
    from bench.compare_homes import compare, main, rows

    def row(model, bench, value, lang="all", run="r1"):
        return {"dagster_run_id": run, "model": model, "seed": 13, "benchmark": bench, "task": "mlir",
                "query_lang": lang, "metric": "ndcg@10", "value": value, "ci_low": value - 0.05,
                "ci_high": value + 0.05, "n_topics": 80}

    ResultsDB(tmp_path / "a" / "mimo.duckdb").append("eval_metrics", [row("mimo", "mlir", 0.10),
                                                                      row("mimo", "mlir", 0.90, lang="de")])
    ResultsDB(tmp_path / "a" / "mimo.duckdb").append("eval_metrics", [row("mimo", "mlir", 0.20, run="r2")])
    ResultsDB(tmp_path / "b" / "mimo.duckdb").append("eval_metrics", [row("mimo", "mlir", 0.25),
                                                                      row("xlco", "mlir", 0.30)])
    a, b = rows(tmp_path / "a", "ndcg@10"), rows(tmp_path / "b", "ndcg@10")
    assert a[("mimo", 13, "mlir")] == pytest.approx((0.20, 0.05))  # the latest row, query_lang all only
    joined = compare(a, b)
    assert len(joined) == 1 and joined[0][:3] == ("mimo", 13, "mlir")
    assert joined[0][5] == pytest.approx(0.05)
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "| mlir | 0.0500 | +0.0500 | 1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not exist"):
        rows(tmp_path / "nowhere", "ndcg@10")
