"""tests/ci.py: in CI a skip is a failure (but for the cuda mark), and a missing requirement stops the session."""

from __future__ import annotations

import pytest

from tests import ci

TESTS = """
import pytest

def test_that_passes():
    pass

def test_without_its_server():
    pytest.skip("SeaweedFS `weed` binary not installed")

@pytest.mark.cuda
def test_on_a_gpu():
    pytest.skip("needs a CUDA device")

@pytest.mark.xfail(reason="a known bug")
def test_known_bug():
    assert False
"""
WITHOUT_A_MODULE = """
import pytest

pytest.importorskip("no_such_consumer_here")

def test_anything():
    pass
"""


@pytest.fixture
def as_ci(monkeypatch):
    monkeypatch.setenv("GPT2HUB_STRICT_TESTS", "1")
    monkeypatch.setattr(ci, "missing_requirements", lambda: [])


@pytest.fixture
def as_local(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GPT2HUB_STRICT_TESTS", raising=False)


def test_in_ci_a_skip_fails_but_a_cuda_skip_and_an_xfail_stay(pytester, as_ci):
    pytester.makepyfile(test_suite=TESTS)
    result = pytester.runpytest("-p", "tests.ci", "-ra")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped in CI, where nothing may be: SeaweedFS `weed` binary not installed*",
                                 "skipped: 1 (CI: only tests marked cuda may skip)"])


def test_in_ci_a_module_level_importorskip_fails(pytester, as_ci):
    pytester.makepyfile(test_needs=WITHOUT_A_MODULE)
    result = pytester.runpytest("-p", "tests.ci")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*skipped whole in CI*could not import 'no_such_consumer_here'*"])


def test_locally_skips_stay_skips_and_are_counted(pytester, as_local):
    pytester.makepyfile(test_suite=TESTS, test_needs=WITHOUT_A_MODULE)
    result = pytester.runpytest("-p", "tests.ci")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    result.stdout.fnmatch_lines(["skipped: 3 (local run; GPT2HUB_STRICT_TESTS=1 turns skips into failures)"])


def test_in_ci_a_missing_requirement_stops_the_session(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(ci, "missing_requirements", lambda: ["weed (SeaweedFS, the S3 server)"])
    pytester.makepyfile(test_suite=TESTS)
    result = pytester.runpytest("-p", "tests.ci")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "needs every consumer, server and fixture; missing: weed (SeaweedFS, the S3 server)" in result.stdout.str() + result.stderr.str()


def test_this_environment_has_what_the_suite_needs_or_says_what_not():
    missing = ci.missing_requirements()
    assert all(isinstance(m, str) and "(" in m for m in missing)
