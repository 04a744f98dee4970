"""The suite's own guard (tests/conftest.py): a test that leaves torch's thread count changed fails,
since every later test in the process, the in-process end-to-end runs among them, would inherit it."""

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
