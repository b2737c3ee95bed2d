"""Fixture builders for tests, benchmarks and `gpt2hub demo`: releases in OpenAI's layout, a trained BPE, a loopback server."""

import os

STRICT_VARIABLE = "GPT2HUB_STRICT_TESTS"  # .ci/run sets it to 1


def strict() -> bool:
    """Whether tests run as in CI (CI=true, or GPT2HUB_STRICT_TESTS=1): a missing consumer, server or fixture fails."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get(STRICT_VARIABLE) == "1"
