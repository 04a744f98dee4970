"""encoder: one parsed tokenizer per distinct set of tokenizer files in a process."""

import json

import numpy as np
from transformers import AutoTokenizer

from mimo_pipeline.encoder import SentenceEncoder, load_tokenizer, tokenizer_key
from tests.conftest import build_tiny_bert

SENTENCES = ["the shepherd counts his sheep", "der Hirte zählt seine Schafe", "a lamp unto my feet"]


def test_checkpoints_of_one_student_share_a_tokenizer_and_encode_as_with_their_own(tmp_path):
    a = build_tiny_bert(tmp_path / "a", SENTENCES, seed=0)
    b = build_tiny_bert(tmp_path / "b", SENTENCES, seed=1)  # other weights, the same tokenizer files
    assert tokenizer_key(a) == tokenizer_key(b)
    enc_a, enc_b = SentenceEncoder(a, device="cpu"), SentenceEncoder(b, device="cpu")
    assert enc_a.tokenizer.backend_tokenizer is enc_b.tokenizer.backend_tokenizer  # parsed once
    enc_a.tokenizer.model_max_length = 3  # each has its own settings
    assert enc_b.tokenizer.model_max_length != 3 and load_tokenizer(a).model_max_length != 3
    shared = enc_b.encode(SENTENCES, prompt="query")
    enc_b.tokenizer = AutoTokenizer.from_pretrained(b)  # what each encoder loaded for itself before
    assert np.array_equal(shared, enc_b.encode(SENTENCES, prompt="query"))

    c = build_tiny_bert(tmp_path / "c", SENTENCES, seed=0)
    config = json.loads((c / "tokenizer_config.json").read_text())
    (c / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 7}))
    assert tokenizer_key(c) != tokenizer_key(a)
    assert load_tokenizer(c).backend_tokenizer is not load_tokenizer(a).backend_tokenizer
    assert load_tokenizer(c).model_max_length == 7 and load_tokenizer(c, model_max_length=5).model_max_length == 5
