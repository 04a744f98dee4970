"""The user's own commands (issue 15, items 1 and 2).

- `make setup` extends the venv's activation script (.ci/extend-activate) so that
  `dagster job execute -j full_mimo` works in an activated shell; `deactivate` undoes it.
- `make test` installs Debian's chromium when it is missing (.ci/ensure-chromium), or says in
  one line why it could not, and the UI test then skips with that reason.
- End to end (the session's `smoke` runs, conftest): run 1 is the literal
  `bash -c 'source .venv/bin/activate && dagster job execute -j full_mimo'`, run 2
  `dg launch --job full_mimo`; both must succeed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ACTIVATE_MARK, REPO, USERS_COMMAND, instance_of

EXTEND = REPO / ".ci" / "extend-activate"
ENSURE = REPO / ".ci" / "ensure-chromium"


@pytest.fixture
def fresh_activate(tmp_path) -> Path:
    """The activation script of a new venv (no pip: fast), not yet extended."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    return tmp_path / "venv" / "bin" / "activate"


def _shell(script: str, env_extra=None, drop=()) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DAGSTER_CLI_") and k not in ("DAGSTER_HOME", "_MIMO_DAGSTER_HOME", *drop)}
    env.update(env_extra or {})
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_activation_sets_the_cli_module_and_deactivate_unsets_it(fresh_activate, tmp_path):
    subprocess.run([str(EXTEND), str(fresh_activate), str(tmp_path / "repo")], check=True)
    show = 'echo "${DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME-unset} ${DAGSTER_HOME-unset}"'
    lines = _shell(f"source {fresh_activate}; {show}; source {fresh_activate}; {show}; deactivate; {show}")
    home = str(tmp_path / "repo" / ".dagster_home")
    assert lines == [f"mimo_pipeline.definitions {home}"] * 2 + ["unset unset"]


def test_activation_keeps_the_users_dagster_home(fresh_activate, tmp_path):
    subprocess.run([str(EXTEND), str(fresh_activate), str(tmp_path / "repo")], check=True)
    show = 'echo "${DAGSTER_HOME-unset}"'
    assert _shell(f"source {fresh_activate}; {show}; deactivate; {show}",
                  {"DAGSTER_HOME": "/somewhere/else"}) == ["/somewhere/else"] * 2
    # set by the activation, then changed by the user: deactivate leaves the user's value
    assert _shell(f"source {fresh_activate}; export DAGSTER_HOME=/mine; deactivate; {show}") == ["/mine"]


def test_extending_twice_writes_the_block_once(fresh_activate, tmp_path):
    original = fresh_activate.read_text()
    subprocess.run([str(EXTEND), str(fresh_activate), str(tmp_path)], check=True)
    once = fresh_activate.read_text()
    subprocess.run([str(EXTEND), str(fresh_activate), str(tmp_path)], check=True)
    assert fresh_activate.read_text() == once != original
    assert once.count(ACTIVATE_MARK) == 1 and once.startswith(original.split("deactivate () {")[0])
    assert os.access(fresh_activate, os.R_OK)


def test_make_setup_extended_this_venv():
    activate = REPO / ".venv" / "bin" / "activate"
    assert activate.read_text().count(ACTIVATE_MARK) == 1, "run `make setup`"
    assert "$(VENV)/.activate" in (REPO / "Makefile").read_text()


def _ensure(tmp_path, path_dirs, **env):
    """.ci/ensure-chromium with chromium at a path that does not exist and PATH = path_dirs."""
    reason = tmp_path / "reason"
    proc = subprocess.run([str(ENSURE), str(reason)], capture_output=True, text=True,
                          env={"PATH": os.pathsep.join(map(str, path_dirs)),
                               "ENSURE_CHROMIUM_AT": str(tmp_path / "no-chromium"), **env})
    return proc, reason


def _tools(tmp_path, *names) -> Path:
    """A folder with links to the few tools the script uses, and nothing else."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name in ("bash", "id", "mktemp", "grep", "tail", "rm", "mkdir", "dirname", *names):
        found = shutil.which(name)
        if found and not (d / name).exists():
            (d / name).symlink_to(found)
    return d


def test_ensure_chromium_without_apt_says_why_in_one_line(tmp_path):
    proc, reason = _ensure(tmp_path, [_tools(tmp_path)])
    assert proc.returncode == 0  # make test goes on
    assert proc.stderr.count("\n") == 1 and "could not install Debian's chromium" in proc.stderr
    assert "no apt-get" in proc.stderr and "no apt-get" in reason.read_text()


def test_ensure_chromium_reports_apts_own_error(tmp_path):
    tools = _tools(tmp_path)
    (tools / "apt-get").write_text('#!/bin/sh\necho "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2\nexit 100\n')
    (tools / "apt-get").chmod(0o755)
    proc, reason = _ensure(tmp_path, [tools])
    assert proc.returncode == 0
    if os.getuid() == 0:
        assert "apt-get update failed: E: Could not get lock" in reason.read_text()
    else:  # no root: sudo -n is tried first, and the line says what it needs
        assert "not root" in reason.read_text()
    assert proc.stderr.strip().splitlines()[-1].startswith("make test: could not install Debian's chromium (")


def test_ensure_chromium_present_clears_an_old_reason(tmp_path):
    reason = tmp_path / "reason"
    reason.write_text("an old failure\n")
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    proc = subprocess.run([str(ENSURE), str(reason)], capture_output=True, text=True,
                          env={**os.environ, "ENSURE_CHROMIUM_AT": str(fake)})
    assert proc.returncode == 0 and proc.stderr == "" and not reason.exists()


def test_ui_test_skips_with_the_reason_make_test_wrote(tmp_path, monkeypatch):
    pytest.importorskip("playwright")
    from tests import test_ui

    monkeypatch.setattr(test_ui, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(test_ui, "CHROMIUM_UNAVAILABLE", tmp_path / "reason")
    with pytest.raises(pytest.fail.Exception, match="make test"):  # nobody tried: how to install it
        test_ui._require_browser()
    (tmp_path / "reason").write_text("not root and sudo needs a password: run `sudo apt-get install chromium` once\n")
    with pytest.raises(pytest.skip.Exception, match="sudo needs a password"):
        test_ui._require_browser()


def test_make_test_and_ci_run_ensure_chromium():
    makefile = (REPO / "Makefile").read_text()
    test_recipe = makefile.split("\ntest: setup\n", 1)[1].split("\n\n", 1)[0]
    assert ".ci/ensure-chromium" in test_recipe.splitlines()[0] and "pytest" in test_recipe
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test" and not any("apt-get" in line for line in ci)


# ----------------------------------------------------------------------------- end to end


def _full_mimo_runs(smoke):
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance_of(smoke).get_runs(RunsFilter(job_name="full_mimo"), ascending=True)
    return [(r.run_id, r.status == DagsterRunStatus.SUCCESS) for r in runs]


@pytest.mark.e2e
def test_the_users_own_command_runs_full_mimo(smoke):
    assert smoke["commands"][1] == f"bash -c '{USERS_COMMAND}'"
    log = (smoke["root"] / "run1.log").read_text()
    assert "Invalid set of CLI arguments" not in log
    runs = _full_mimo_runs(smoke)
    assert len(runs) >= 2 and runs[0][1], runs  # run 1 is recorded in DAGSTER_HOME and succeeded
    assert runs[0][0] in log


@pytest.mark.e2e
def test_dg_launch_runs_full_mimo(smoke):
    assert smoke["commands"][2] == "dg launch --job full_mimo"
    runs = _full_mimo_runs(smoke)
    assert runs[1][1], runs
    assert runs[1][0] in (smoke["root"] / "run2.log").read_text()
