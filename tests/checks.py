"""Assertions shared by the test modules."""

from __future__ import annotations

import pytest


def one_line(e: pytest.ExceptionInfo) -> str:
    """The raised error's message, asserted to be a single non-empty line."""
    msg = str(e.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg
