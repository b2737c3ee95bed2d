"""gpt2hub: OpenAI's original GPT-2 release, pulled intact and converted to today's formats."""

from __future__ import annotations

import sys
import types
from pathlib import Path

__version__ = "0.1.0"

from .errors import Gpt2hubError  # noqa: E402
from .registry import ReleaseManifest, create_manifest, releases, resolve  # noqa: E402
from . import converters, store  # noqa: E402

# Functions named as their modules: importing gpt2hub.convert (say) binds the name to the module, and would
# shadow the function. Those modules load on first use (so `gpt2hub --help` imports nothing heavy), and the
# package keeps the functions whatever is imported later.
_FUNCTIONS_OVER_MODULES = ("convert", "mirror", "verify", "sample")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name == "Checkpoint":  # numpy behind it: loaded on first use
        from .tfcheckpoint import Checkpoint

        return Checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_releases() -> list[dict]:
    """Every known release with its download size and local state."""
    from .housekeeping import release_bytes

    return [{**store.status(m), "disk_bytes": release_bytes(m.name)} for m in releases()]


def info(name: str, manifest: Path | str | None = None) -> ReleaseManifest:
    """The manifest of a release, by name or alias."""
    return resolve(name, manifest)


def path(name: str, fmt: str = "original", manifest: Path | str | None = None) -> Path:
    """Where one format of a release lives (whether or not it is there yet)."""
    return store.release_dir(resolve(name, manifest).name, fmt)


def remove(name: str, formats: list[str] | None = None, dtype: str | None = None, everything: bool = False,
           dry_run: bool = False):
    """Remove conversions of a release (or with everything=True the whole release) from the store; returns a Removal."""
    from .housekeeping import remove as _remove

    return _remove(name, formats, dtype, everything, dry_run)


def disk_usage(name: str | None = None) -> list:
    """Bytes on disk per format and file, of one release or of every release in the store (Usage objects)."""
    from .housekeeping import usages

    return usages(name)


def pull(name: str, **kwargs):
    """Fetch and verify a release into its original/ folder or `to` (see gpt2hub.pulling.pull); returns that folder,
    or with dry_run=True the PullPlan (what would be fetched, from where)."""
    from .pulling import pull as _pull

    result = _pull(name, **kwargs)
    return result if kwargs.get("dry_run") else result.path


def mirror(name: str, dest: str, **kwargs):
    """Upload a pulled release and its conversions to s3://bucket/prefix or hf://org/repo; returns a MirrorReport."""
    from .mirror import mirror as _mirror

    return _mirror(name, dest, **kwargs)


def convert(name_or_dir: str | Path | None = None, to: str = converters.DEFAULT, dtype: str | None = "f32",
            out: Path | str | None = None, force: bool = False, **kwargs) -> Path:
    """Convert a release (name, TF checkpoint folder, or the one pulled) to safetensors, pytorch or gguf; returns the output."""
    from .convert import convert as _convert

    return _convert(name_or_dir, to, dtype, out, force, **kwargs).path


def verify(name_or_dir: str | Path | None = None, **kwargs):
    """Integrity, reference logits and every converted format through its real consumer; returns a Report (.passed)."""
    from .verify import verify as _verify

    return _verify(name_or_dir, **kwargs)


def sample(name_or_dir: str | Path | None = None, **kwargs) -> list[str]:
    """Sample text from a release (prompt=..., or unconditional), as openai/gpt-2's scripts; returns the texts."""
    from .sample import sample as _sample

    return _sample(name_or_dir, **kwargs)


__all__ = [
    "__version__", "Gpt2hubError", "ReleaseManifest", "Checkpoint",
    "releases", "resolve", "create_manifest", "list_releases", "info", "path", "remove", "disk_usage", "pull", "mirror", "convert", "verify", "sample",
]
