"""The `needs_devices(n)` marker (instructjax.testing.devices): skip locally, fail under CI."""

import pytest

TESTS = """
import pytest

@pytest.mark.needs_devices(1)
def test_enough():
    pass

@pytest.mark.needs_devices(10_000)
def test_too_many():
    pass
"""


@pytest.fixture
def marked_tests(pytester):
    pytester.makeconftest('pytest_plugins = ["instructjax.testing.devices"]')
    pytester.makepyfile(TESTS)
    return pytester


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_skipped_locally(marked_tests, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = marked_tests.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*needs 10000 jax devices, found *"])


@pytest.mark.parametrize("ci", ["true", "1"])
def test_failed_under_ci(marked_tests, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    result = marked_tests.runpytest()
    result.assert_outcomes(passed=1, errors=1)  # failed in set-up: the run fails
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*needs 10000 jax devices*CI is set, so this is a failure, not a skip*"])
