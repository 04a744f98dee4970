"""Sentence-transformers checkpoint folders, written without sentence-transformers.

A checkpoint folder holds the HF weights, config and tokenizer at its root plus the
sentence-transformers module files (`modules.json`, `config_sentence_transformers.json`
with its prompts, `sentence_bert_config.json`, `1_Pooling/config.json`, and
`2_Normalize/` when the model normalises). Both `SentenceTransformer(path)` and plain
`transformers.AutoModel.from_pretrained(path)` plus the pooling config load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import write_json

POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class PoolingSpec:
    """How token vectors become a sentence vector, read from / written to a checkpoint."""

    dim: int
    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int = 512
    prompts: dict[str, str] = field(default_factory=dict)

    def prompt(self, kind: str | None) -> str:
        return self.prompts.get(kind, "") if kind else ""


def write_sentence_transformers_files(out_dir: str | Path, spec: PoolingSpec) -> None:
    """Write the sentence-transformers module files into `out_dir` (weights go beside)."""
    if spec.mode not in POOLING_MODES:
        raise ValueError(f"pooling mode {spec.mode!r}: use one of {POOLING_MODES}")
    out = Path(out_dir)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec.normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (out / "2_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(modules, out / "modules.json")
    write_json(
        {
            "prompts": dict(spec.prompts),
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            "__version__": {"mimo_pipeline": "0.1.0"},
        },
        out / "config_sentence_transformers.json",
    )
    write_json({"max_seq_length": spec.max_seq_length, "do_lower_case": False},
               out / "sentence_bert_config.json")
    write_json(
        {
            "word_embedding_dimension": spec.dim,
            "pooling_mode_cls_token": spec.mode == "cls",
            "pooling_mode_mean_tokens": spec.mode == "mean",
            "pooling_mode_max_tokens": spec.mode == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        out / "1_Pooling" / "config.json",
    )


def read_pooling_spec(model_dir: str | Path) -> PoolingSpec:
    """Read pooling, normalisation, max length and prompts from a model folder.

    A plain HF folder without sentence-transformers files gets mean pooling, no
    normalisation and the model's own position limit.
    """
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    dim = int(cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("dim"))
    max_len = int(cfg.get("max_position_embeddings", 512))
    if cfg.get("model_type") in ("roberta", "xlm-roberta", "mpnet"):
        max_len -= 2  # position ids start after the padding index
    mode, normalize, prompts = "mean", False, {}
    pooling_cfg = d / "1_Pooling" / "config.json"
    if pooling_cfg.exists():
        p = json.loads(pooling_cfg.read_text())
        dim = int(p.get("word_embedding_dimension", dim))
        if p.get("pooling_mode_cls_token"):
            mode = "cls"
        elif p.get("pooling_mode_max_tokens"):
            mode = "max"
    modules_json = d / "modules.json"
    if modules_json.exists():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules_json.read_text()))
    sbert = d / "sentence_bert_config.json"
    if sbert.exists():
        max_len = min(max_len, int(json.loads(sbert.read_text()).get("max_seq_length", max_len)))
    st_cfg = d / "config_sentence_transformers.json"
    if st_cfg.exists():
        prompts = dict(json.loads(st_cfg.read_text()).get("prompts") or {})
    return PoolingSpec(dim=dim, mode=mode, normalize=normalize, max_seq_length=max_len, prompts=prompts)
