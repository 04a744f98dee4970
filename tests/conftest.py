"""Shared fixtures: a session MIMO_HOME where the packaged models are converted once."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def packaged_home(tmp_path_factory) -> Path:
    """A MIMO_HOME shared by the tests that need the real packaged models (converted once)."""
    return tmp_path_factory.mktemp("mimo_home")


@pytest.fixture(scope="session")
def repo_env() -> dict:
    """The environment for subprocesses: the venv first on PATH, 2 threads, no hub."""
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    return env
