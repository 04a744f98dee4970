"""The teacher cache filled from texts that arrive a chunk at a time (`embedding_cache.fill_cache_stream`)."""

import numpy as np

from mimo_pipeline.embedding_cache import EmbeddingCache, fill_cache, fill_cache_stream, text_key


def fake_encoder(dim=4):
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.stack([np.full(dim, float(len(t)), np.float32) for t in texts])

    return encode, calls


def test_streamed_chunks_are_encoded_chunk_size_at_a_time_and_reused(tmp_path):
    texts = [f"sentence {i}" for i in range(23)]
    chunks = [texts[i:i + 4] for i in range(0, 23, 4)]
    cache = EmbeddingCache(tmp_path, "fp", dim=4)
    encode, calls = fake_encoder()
    report = fill_cache_stream(cache, iter(chunks), encode, chunk_size=10)
    assert calls == [10, 10, 3] and report.misses == 23 and report.hits == 0 and report.n_texts == 23
    assert len(cache.shards()) == 3 and report.cache_rows == 23
    np.testing.assert_array_equal(cache.get([text_key(texts[12])]), [[11.0] * 4])
    # a second pass over more texts encodes only the new ones
    encode2, calls2 = fake_encoder()
    more = texts + ["a new one", "another new one"]
    report = fill_cache_stream(cache, iter([more[:20], more[20:]]), encode2, chunk_size=10)
    assert calls2 == [2] and report.hits == 23 and report.misses == 2


def test_streaming_agrees_with_the_one_shot_fill(tmp_path):
    texts = [f"text {i % 7}" for i in range(30)]           # repeats inside one chunk count once
    a = fill_cache(EmbeddingCache(tmp_path / "a", "fp", dim=4), texts, fake_encoder()[0], chunk_size=3)
    b = fill_cache_stream(EmbeddingCache(tmp_path / "b", "fp", dim=4), [texts], fake_encoder()[0], chunk_size=3)
    assert (a.n_texts, a.hits, a.misses, a.cache_rows) == (b.n_texts, b.hits, b.misses, b.cache_rows) == (7, 0, 7, 7)
