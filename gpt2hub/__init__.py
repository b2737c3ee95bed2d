"""gpt2hub: OpenAI's original GPT-2 release, pulled intact and converted to today's formats."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

from .errors import Gpt2hubError  # noqa: E402
from .registry import ReleaseManifest, create_manifest, releases, resolve  # noqa: E402
from .tfcheckpoint import Checkpoint  # noqa: E402
from . import store  # noqa: E402


def list_releases() -> list[dict]:
    """Every known release with its download size and local state."""
    return [store.status(m) for m in releases()]


def info(name: str, manifest: Path | str | None = None) -> ReleaseManifest:
    """The manifest of a release, by name or alias."""
    return resolve(name, manifest)


def path(name: str, fmt: str = "original", manifest: Path | str | None = None) -> Path:
    """Where one format of a release lives (whether or not it is there yet)."""
    return store.release_dir(resolve(name, manifest).name, fmt)


__all__ = [
    "__version__", "Gpt2hubError", "ReleaseManifest", "Checkpoint",
    "releases", "resolve", "create_manifest", "list_releases", "info", "path",
]
