"""Shared fixtures: a session MIMO_HOME where the packaged models are converted once."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """torch on ``n`` threads (None: as it is) inside the block, and on its own count again after it,
    whatever the block set."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: The modules whose tests read the session's smoke runs (conftest `smoke`), directly or through
#: a fixture. `make test` runs two pytest-xdist workers; these modules go to one worker as one unit,
#: in file order, so that the smoke runs happen once and the teacher swap, which changes the smoke
#: home, runs after the modules that read the home as the smoke runs left it (pytest's own order).
SMOKE_MODULES = ("tests/test_bench.py", "tests/test_commands.py", "tests/test_pipeline_e2e.py",
                 "tests/test_teacher_swap.py", "tests/test_ui.py")
#: The longest units, handed out in this order before the others: the smoke modules (about half the
#: suite's minutes), then the two modules of a few minutes each, so that the short ones fill the end
#: on both workers instead of one worker ending alone on a long one.
LONGEST_FIRST = ("smoke", "tests/test_user_data_e2e.py", "tests/test_stage1_real.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's `loadscope` (each module's tests on one worker, modules handed out as workers free
    up), with the smoke modules as one unit and the longest units first (`LONGEST_FIRST`)."""
    from xdist.scheduler import LoadScopeScheduling

    if config.getvalue("dist") not in ("load", "loadscope"):  # the user asked for another schedule
        return None

    class SmokeModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "smoke" if module in SMOKE_MODULES else module

        def _assign_work_unit(self, node) -> None:
            for unit in reversed(LONGEST_FIRST):
                if unit in self.workqueue:
                    self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return SmokeModulesTogether(config, log)


def pytest_collection_modifyitems(config, items):
    """A test outside SMOKE_MODULES that asks for the smoke runs would run them a second time on the
    other worker: name its module in SMOKE_MODULES."""
    strays = [i.nodeid for i in items if "smoke" in getattr(i, "fixturenames", ())
              and i.nodeid.split("::")[0] not in SMOKE_MODULES]
    if strays:
        raise pytest.UsageError(f"{strays[0]} reads the smoke runs but its module is not in "
                                "tests/conftest.py SMOKE_MODULES: add it there")


@pytest.fixture(autouse=True)
def torch_threads_unchanged(request):
    """A test that changes torch's thread count fails: the tests after it in this process (the
    in-process end-to-end runs among them) would run on the wrong number of cores. Change it
    inside `torch_threads`, which gives it back."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        after = torch.get_num_threads()
        torch.set_num_threads(before)
        pytest.fail(f"{request.node.nodeid} left torch on {after} threads (was {before})")


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


def execute_full_mimo(env, log_path):
    return _run_logged([str(REPO / ".venv" / "bin" / "dagster"), "job", "execute", "-m", "mimo_pipeline.definitions",
                        "-j", "full_mimo"], env, log_path)


#: The user's own command (README): a new shell in the repo root, the venv activated, no `-m`.
USERS_COMMAND = "source .venv/bin/activate && dagster job execute -j full_mimo"
ACTIVATE_MARK = "# mimo_pipeline >>>"  # what .ci/extend-activate (make setup) writes into the activation


def _run_logged(cmd, env, log_path):
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1500)
    return proc.returncode, time.perf_counter() - t0


def run_users_command(env, log_path, command=USERS_COMMAND):
    """``bash -c command`` as a user's new shell has it: the venv off PATH and no Dagster CLI
    option in the environment, so that only the activation script can supply them."""
    activate = REPO / ".venv" / "bin" / "activate"
    assert ACTIVATE_MARK in activate.read_text(), f"{activate} lacks the block make setup writes: run `make setup`"
    venv_bin = str(REPO / ".venv" / "bin")
    shell = {k: v for k, v in env.items()
             if not k.startswith("DAGSTER_CLI_") and k not in ("VIRTUAL_ENV", "_MIMO_DAGSTER_HOME")}
    shell["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return _run_logged(["bash", "-c", command], shell, log_path)


def dg_launch_full_mimo(env, log_path):
    return _run_logged([str(REPO / ".venv" / "bin" / "dg"), "launch", "--job", "full_mimo"], env, log_path)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, repo_env):
    """Two runs of full_mimo on the smoke profile against one MIMO_HOME and DAGSTER_HOME, by the
    two commands the README names: the user's own `dagster job execute -j full_mimo` in an
    activated shell (run 1), then `dg launch --job full_mimo` (run 2)."""
    root = tmp_path_factory.mktemp("e2e")
    env = {**repo_env, "MIMO_HOME": str(root / "home"), "MIMO_PROFILE": "smoke",
           "DAGSTER_HOME": str(root / "dagster_home")}
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text("")
    commands = {1: f"bash -c '{USERS_COMMAND}'", 2: "dg launch --job full_mimo"}
    runs = [run_users_command(env, root / "run1.log"), dg_launch_full_mimo(env, root / "run2.log")]
    for i, (rc, _) in enumerate(runs, 1):
        if rc != 0:
            sys.stderr.write((root / f"run{i}.log").read_text()[-6000:])
        assert rc == 0, f"run {i} of full_mimo ({commands[i]}) failed, log: {root / f'run{i}.log'}"
    return {"root": root, "env": env, "home": root / "home", "seconds": [s for _, s in runs],
            "commands": commands, "half_written": half_written(root / "home")}


def half_written(home: Path) -> list[Path]:
    """Temporary files and trainer work folders under ``home``: none may outlive a run that
    finished. Taken right after the smoke runs, so that the teacher swap's SIGKILLs (which may
    leave some, for the next run to resume or replace) do not depend on test order."""
    return [p for p in home.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".work-")]


def instance_of(smoke):
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(smoke["env"]["DAGSTER_HOME"]))


def materializations(instance, key):
    from dagster import AssetKey, DagsterEventType, EventRecordsFilter

    records = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(key)), ascending=True)
    return [r.event_log_entry.asset_materialization for r in records]


def build_tiny_bert(d: Path, sentences, *, dropout: float = 0.1, seed: int = 0) -> Path:
    """A sentence-transformers folder in ``d``: a tiny random BERT (32-d, 2 layers) with a
    WordLevel tokenizer over the words of ``sentences`` and e5-style prompts."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from mimo_pipeline.checkpoint import PoolingSpec, write_sentence_transformers_files

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for s in sentences for w in s.lower().split()} | {"query", "passage", ":"})
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=64)
    fast.save_pretrained(d)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(cfg).save_pretrained(d)
    write_sentence_transformers_files(d, PoolingSpec(dim=32, mode="mean", max_seq_length=64,
                                                     prompts={"query": "query: ", "document": "passage: "}))
    return d


def tiny_student(folder):
    """``folder`` (a `build_tiny_bert` model) as the base-student checkpoint the stages train from."""
    from mimo_pipeline.student import ModelCheckpoint

    return ModelCheckpoint("base_student", str(folder), "tinystudent", "tiny", 32,
                           {"query": "query: ", "document": "passage: "})


def cached_teacher(folder: Path, texts=None, vectors=None, *, dim: int | None = None):
    """A `TeacherEmbeddings` over a cache in ``folder`` (fingerprint ``tinyteacher``) with no teacher model
    behind it (an empty path: nothing can run one), as training reads it; ``texts``' ``vectors`` are put first."""
    import numpy as np

    from mimo_pipeline.embedding_cache import CacheReport, EmbeddingCache, text_key
    from mimo_pipeline.teacher import TeacherEmbeddings

    dim = dim if vectors is None else np.asarray(vectors).shape[1]
    cache = EmbeddingCache(folder, "tinyteacher", dim=dim)
    n = 0 if texts is None else len(texts)
    if n:
        cache.put([text_key(t) for t in texts], np.asarray(vectors, dtype=np.float32))
    return TeacherEmbeddings(str(folder), "tiny", "", "tinyteacher", dim, False,
                             CacheReport(str(cache.dir), "tinyteacher", dim, n, n, 0, 0.0, n, 0))
