"""The suite's own guards and schedule (tests/conftest.py): a test that leaves torch's thread count
changed fails, since every later test in the process, the in-process end-to-end runs among them,
would inherit it; under `make test`'s two xdist workers the smoke modules run on one worker, in file
order, and a smoke reader outside them stops the collection."""

pytest_plugins = ["pytester"]

from tests.conftest import REPO  # noqa: E402


def test_a_test_that_leaves_torch_threads_changed_fails_and_they_are_given_back(pytester):
    pytester.makepyfile(test_leak="""
        import torch

        def test_leaks():
            torch.set_num_threads(torch.get_num_threads() + 1)

        def test_after_it(request):
            assert torch.get_num_threads() == request.config.threads_at_start
        """)
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text() + """

def pytest_configure(config):
    import torch

    config.threads_at_start = torch.get_num_threads()
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # test_leaks passes its body, errs at teardown
    result.stdout.fnmatch_lines(["*test_leaks left torch on * threads (was *)*"])


def test_a_test_outside_the_smoke_modules_that_reads_the_smoke_runs_stops_the_collection(pytester):
    pytester.makepyfile(test_stray="""
        def test_reads_smoke(smoke):
            raise AssertionError("the collection should have stopped before any smoke run")
        """)
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 4  # pytest's usage error
    result.stderr.fnmatch_lines(["*test_stray.py::test_reads_smoke reads the smoke runs but its module is not in*"])


def test_two_workers_run_the_smoke_modules_on_one_worker_in_file_order(pytester):
    """`make test`'s schedule: the smoke modules on one worker, in file order; the others on either."""
    from tests.conftest import SMOKE_MODULES

    record = pytester.path / "record.txt"
    body = f"""
        import os

        def test_{{i}}(request):
            with open({str(record)!r}, "a") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"] + " " + request.node.nodeid + "\\n")
        """
    (pytester.path / "tests").mkdir()
    others = [f"tests/test_other_{k}.py" for k in range(6)]
    for module in [*SMOKE_MODULES, *others]:
        (pytester.path / module).write_text("\n".join(
            line[8:] for line in "".join(body.replace("{i}", str(i)) for i in range(3)).splitlines()))
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "tests")
    result.assert_outcomes(passed=3 * (len(SMOKE_MODULES) + len(others)))
    runs = [line.split(" ", 1) for line in record.read_text().splitlines()]
    smoke = [(worker, nodeid) for worker, nodeid in runs if nodeid.split("::")[0] in SMOKE_MODULES]
    assert len({worker for worker, _ in smoke}) == 1
    assert [nodeid for _, nodeid in smoke] == [f"{m}::test_{i}" for m in SMOKE_MODULES for i in range(3)]
    assert len({worker for worker, _ in runs}) == 2  # the other worker was not idle
