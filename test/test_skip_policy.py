"""The skip policy of test/conftest.py, on small test files run by pytester with the real conftest.

Only the capabilities of test/capabilities.py are acceptable reasons to skip; every skip is printed at the end
of the run; any other skip (an ``importorskip`` of a broken torch, a bare ``pytest.skip``) fails the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from capabilities import has, skip_reason

HERE = Path(__file__).parent


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester folder with this suite's conftest.py and capabilities.py."""
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(capabilities=(HERE / "capabilities.py").read_text())
    return pytester


def test_allow_listed_skips_pass_and_are_printed_with_capability_and_reason(project: pytest.Pytester):
    project.makepyfile(test_sample="""
        import pytest
        from capabilities import skip_reason

        def test_runs():
            pass

        def test_skips_by_capability():
            pytest.skip(skip_reason("gpu"))

        @pytest.mark.requires("gpu")
        def test_marked():
            pass
    """)
    result = project.runpytest_subprocess()
    marked_runs = has("gpu")
    result.assert_outcomes(passed=1 + marked_runs, skipped=2 - marked_runs)
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        f"*skips ({2 - marked_runs}; allow-list: test/capabilities.py)*",
        f"[[]gpu[]] test_sample.py::test_skips_by_capability: {skip_reason('gpu')}",
    ])
    if not marked_runs:
        result.stdout.fnmatch_lines([f"[[]gpu[]] test_sample.py::test_marked: {skip_reason('gpu')}"])
    assert "not allow-listed" not in result.stdout.str()


def test_a_skip_for_any_other_reason_fails_the_run(project: pytest.Pytester):
    project.makepyfile(test_sample="""
        import pytest

        def test_runs():
            pass

        def test_skips():
            pytest.skip("no reason given")
    """)
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "[[]NOT ALLOW-LISTED[]] test_sample.py::test_skips: no reason given",
        "FAILED: 1 skip(s) for a reason not allow-listed in test/capabilities.py *, "
        "first: test_sample.py::test_skips: no reason given",
    ])


def test_a_torch_that_fails_to_import_fails_the_run(project: pytest.Pytester):
    """Regression: a broken torch install made ``pytest.importorskip("torch")`` drop seven test files silently."""
    project.makepyfile(torch="raise ModuleNotFoundError(\"No module named 'torch._C'\")")  # shadows the real one
    project.makepyfile(test_training="""
        import pytest

        torch = pytest.importorskip("torch")

        def test_trains():
            pass
    """, test_other="def test_runs():\n    pass\n")
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["[[]NOT ALLOW-LISTED[]] test_training.py: could not import 'torch': No module named 'torch._C'"])


def test_an_unknown_capability_fails_the_test(project: pytest.Pytester):
    project.makepyfile(test_sample="""
        import pytest

        @pytest.mark.requires("quantum_computer")
        def test_marked():
            pass
    """)
    result = project.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown capability; test/capabilities.py lists gpu, system_ros2*"])


def test_a_docstring_example_that_never_runs_fails_the_run(project: pytest.Pytester):
    """``# doctest: +SKIP`` on every line of an example makes pytest skip it: that is not a capability."""
    project.makepyfile(library='''
        def double(x):
            """Twice ``x``.

            >>> double(2)  # doctest: +SKIP
            4
            """
            return 2 * x
    ''')
    result = project.runpytest_subprocess("--doctest-modules")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["[[]NOT ALLOW-LISTED[]] library.py::library.double: all tests skipped by +SKIP option"])
