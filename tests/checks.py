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
