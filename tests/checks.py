"""Assertions shared by the test modules."""

from __future__ import annotations

import pytest


def one_line(e: pytest.ExceptionInfo) -> str:
    """The raised error's message, asserted to be a single non-empty line."""
    msg = str(e.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


def invoke(*args: str):
    """`gpt2hub ARGS` in-process (click's runner): its result, with any exception other than exit re-raised."""
    from click.testing import CliRunner

    from gpt2hub.cli import main

    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: a test that reaches for the internet fails at once
KEPT = ("GPT2HUB_STRICT_TESTS", "GPT2HUB_SHARED")  # the test run's own switches


def isolate(monkeypatch: pytest.MonkeyPatch, home, *, no_internet: bool = True) -> None:
    """A fresh GPT2HUB_HOME with none of gpt2hub's other switches set; https through a dead proxy, loopback direct."""
    import os

    for var in [v for v in os.environ if v.startswith("GPT2HUB_") and v not in KEPT]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("GPT2HUB_HOME", str(home))
    if no_internet:
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(var, raising=False)
        for var in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(var, DEAD_PROXY)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(var, "127.0.0.1,localhost")


def one_line_error(result, *needles: str) -> str:
    """The CLI result is exit 1 with exactly one stderr line that is not a warning: the error, holding `needles`."""
    errors = [line for line in result.stderr.splitlines() if not line.startswith("gpt2hub: warning:")]
    assert result.exit_code == 1 and len(errors) == 1 and errors[0].startswith("gpt2hub: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def pulled_store(release, root, conversions: list[tuple[str, str | None]]):
    """A home under `root` holding `release` as `tiny`, pulled from a folder source and converted to each (format,
    dtype) of `conversions` (None: the format's default); returns the home."""
    import os
    import shutil

    import gpt2hub
    from gpt2hub import registry

    mirror, home = root / "mirror", root / "home"
    shutil.copytree(release, mirror / "tiny")
    old = os.environ.get("GPT2HUB_HOME")
    os.environ["GPT2HUB_HOME"] = str(home)
    try:
        registry.save_user_manifest(registry.create_manifest(release, "tiny"))
        gpt2hub.pull("tiny", sources=[str(mirror)])
        for fmt, dtype in conversions:
            gpt2hub.convert("tiny", to=fmt, dtype=dtype)
    finally:
        os.environ.pop("GPT2HUB_HOME") if old is None else os.environ.update(GPT2HUB_HOME=old)
    return home
