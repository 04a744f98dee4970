"""Where artifacts live, which profile runs, and which teacher and student it uses.

Read from the environment when asked (never at import time):

- ``MIMO_HOME``: the artifact root (default ``<repo>/data``);
- ``MIMO_PROFILE``: ``default`` (the embedded default) or ``smoke`` (the whole graph
  in about two minutes on 2 CPU cores, for tests);
- ``MIMO_TEACHER`` / ``MIMO_STUDENT``: a model reference overriding the profile's
  (catalog name, HF id or local path; see `catalog`);
- ``MIMO_STRICT_MODELS=1``: a hub id that cannot be downloaded is an error instead of
  falling back (with a WARNING) to the packaged copy of the same model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from .benchmarks import BenchmarkConfig
from .corpus import CorpusConfig
from .errors import MimoInputError
from .pairs import PairsConfig


@dataclass(frozen=True)
class TrainingSizes:
    """How much training a profile affords. The paper's values (DESIGN §1) are the
    asset configs' defaults for everything else (lr 1e-4 / 2e-5, λ 0.2, warmup 0.1);
    a GPU run at paper scale raises these: 1 epoch, batch 128 (Stage 1) and 2048 (Stage 2).
    On 2 CPU cores a step of 16 rows takes 3–4 s; the default trains Stage 1 24 steps,
    mimo and each of the three λ-ablation models 12, and each baseline 36 (mimo's matched
    budget: Stage 1 + Stage 2), 180 steps in all: 12 of the 24 minutes of a default run on an AMD host
    with bf16 (README; configs/fits_15_minutes.yaml drops the λ ablation and the matched budget).
    ``mini_batch_size`` is gradient caching's chunk: the weights do not depend on it (up to
    dropout masks, drawn per chunk), and on a CPU chunks of 8 are faster than one of 16
    because each chunk is padded only to its own longest text (measured 2.6 s against
    3.3 s per step, `python -m bench.train_levers`); None = the whole batch in one chunk."""

    stage1_steps: int = 24
    stage2_steps: int = 12
    batch_size: int = 16
    mini_batch_size: int | None = 8
    max_length: int = 64
    checkpoint_every: int = 20  # trainer state for resume every N steps (each save writes the whole model)


@dataclass(frozen=True)
class Profile:
    """Sizes of one run of the pipeline. Hyper-parameters elsewhere scale from these."""

    name: str
    teacher: str = "all-MiniLM-L6-v2"
    student: str = "multilingual-e5-small"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    benchmarks: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    training: TrainingSizes = field(default_factory=TrainingSizes)
    encode_batch_size: int = 64
    #: Precision of every no-gradient encoding pass (teacher vectors, evaluation): ``auto``
    #: (bf16 on AMX/AVX512-BF16 CPUs and bf16 GPUs, else fp32), ``fp32`` or ``bf16``. The
    #: one default of the assets' ``precision`` config (unset = this); see `precision`.
    precision: str = "auto"
    translation_p1_pairs: int = 100  # held-out pairs per language for the training assets' P@1


PROFILES: dict[str, Profile] = {
    # The embedded default: the whole Old Testament for training (capped draws), the New
    # Testament held out; all training together about 10 minutes on 2 CPU cores.
    "default": Profile(
        name="default",
        corpus=CorpusConfig(max_train_verses=4000),
        # 80 query verses and their targets are 374 verses: 750 leaves 376 distractors (6,000 MLIR documents).
        # The dev- benchmarks (Old Testament dev books) are a quarter of that: 20 query verses, 188 pool verses.
        benchmarks=BenchmarkConfig(query_verses=80, pool_verses=750, translation_queries=40),
    ),
    # The whole graph in about two minutes on 2 CPU cores.
    "smoke": Profile(
        name="smoke",
        corpus=CorpusConfig(languages=("de", "zh"), max_train_verses=300, max_eval_verses=300, max_dev_verses=100),
        pairs=PairsConfig(max_pairs=200),
        # 10 query verses and their targets are 32 verses: 50 leaves 18 distractors (150 MLIR documents);
        # dev-: 3 query verses, 13 pool verses, 3 translation queries, from 100 dev verses. The tests run
        # this graph several times: its evaluation (eleven models) is most of a smoke run.
        benchmarks=BenchmarkConfig(query_verses=10, pool_verses=50, translation_queries=10),
        training=TrainingSizes(stage1_steps=4, stage2_steps=3, batch_size=8, max_length=32, checkpoint_every=0),
        translation_p1_pairs=20,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise MimoInputError(f"unknown profile {name!r}; use one of {sorted(PROFILES)}",
                             source="MIMO_PROFILE") from None


def default_home() -> Path:
    """``<repo>/data`` for a source checkout, else ``./data``."""
    repo = Path(__file__).resolve().parents[1]
    return repo / "data" if (repo / "pyproject.toml").exists() else Path.cwd() / "data"


@dataclass(frozen=True)
class Settings:
    home: Path
    profile: Profile
    teacher: str
    student: str

    @classmethod
    def resolve(
        cls,
        *,
        home: str | None = None,
        profile: str | None = None,
        teacher: str | None = None,
        student: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Settings":
        """Explicit values win, then ``MIMO_*`` environment variables, then the profile."""
        env = os.environ if env is None else env
        prof = get_profile(profile or env.get("MIMO_PROFILE") or "default")
        home_path = Path(home or env.get("MIMO_HOME") or default_home()).expanduser().resolve()
        return cls(
            home=home_path,
            profile=prof,
            teacher=teacher or env.get("MIMO_TEACHER") or prof.teacher,
            student=student or env.get("MIMO_STUDENT") or prof.student,
        )

    def with_corpus(self, **overrides) -> CorpusConfig:
        """The profile's corpus config with non-None overrides applied."""
        return replace(self.profile.corpus, **{k: v for k, v in overrides.items() if v is not None})

    def encode_precision(self, override: str | None = None) -> str:
        """An asset's ``precision`` config, or the profile's when unset; checked, not resolved."""
        from .precision import check_precision

        return check_precision(override if override is not None else self.profile.precision)

    def with_benchmarks(self, **overrides) -> BenchmarkConfig:
        """The profile's benchmark sizes with non-None overrides applied."""
        return replace(self.profile.benchmarks, **{k: v for k, v in overrides.items() if v is not None})

    # Layout under MIMO_HOME (DESIGN §2).
    @property
    def corpus_dir(self) -> Path:
        return self.home / "corpus"

    @property
    def teacher_cache_dir(self) -> Path:
        return self.home / "teacher_cache"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"
