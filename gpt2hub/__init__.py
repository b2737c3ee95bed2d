"""gpt2hub: OpenAI's original GPT-2 release, pulled intact and converted to today's formats."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

from .errors import Gpt2hubError  # noqa: E402
from .registry import ReleaseManifest, create_manifest, releases, resolve  # noqa: E402
from .tfcheckpoint import Checkpoint  # noqa: E402
from . import converters, store  # noqa: E402


def list_releases() -> list[dict]:
    """Every known release with its download size and local state."""
    return [store.status(m) for m in releases()]


def info(name: str, manifest: Path | str | None = None) -> ReleaseManifest:
    """The manifest of a release, by name or alias."""
    return resolve(name, manifest)


def path(name: str, fmt: str = "original", manifest: Path | str | None = None) -> Path:
    """Where one format of a release lives (whether or not it is there yet)."""
    return store.release_dir(resolve(name, manifest).name, fmt)


def pull(name: str, **kwargs) -> Path:
    """Fetch and verify a release into its original/ folder (see gpt2hub.pulling.pull); returns that folder."""
    from .pulling import pull as _pull

    return _pull(name, **kwargs).path


# Imported here, before the function of the same name, so that a later lazy import of the submodule cannot
# rebind `gpt2hub.mirror` to the module; it is light (boto3 and huggingface_hub load inside its functions).
from . import mirror as _mirror_module  # noqa: E402


def mirror(name: str, dest: str, **kwargs):
    """Upload a pulled release and its conversions to s3://bucket/prefix or hf://org/repo; returns a MirrorReport."""
    return _mirror_module.mirror(name, dest, **kwargs)


# As for mirror: bound before the function so the submodule cannot shadow it (light: converters load lazily).
from . import convert as _convert_module  # noqa: E402


def convert(name_or_dir: str | Path | None = None, to: str = converters.DEFAULT, dtype: str | None = "f32",
            out: Path | str | None = None, force: bool = False, **kwargs) -> Path:
    """Convert a release (name, TF checkpoint folder, or the one pulled) to safetensors, pytorch or gguf; returns the output."""
    return _convert_module.convert(name_or_dir, to, dtype, out, force, **kwargs).path


# As for mirror: bound before the functions so the submodules cannot shadow them (torch loads lazily).
from . import verify as _verify_module  # noqa: E402
from . import sample as _sample_module  # noqa: E402


def verify(name_or_dir: str | Path | None = None, **kwargs):
    """Integrity, reference logits and every converted format through its real consumer; returns a Report (.passed)."""
    return _verify_module.verify(name_or_dir, **kwargs)


def sample(name_or_dir: str | Path | None = None, **kwargs) -> list[str]:
    """Sample text from a release (prompt=..., or unconditional), as openai/gpt-2's scripts; returns the texts."""
    return _sample_module.sample(name_or_dir, **kwargs)


def tiktoken(name_or_dir: str | Path | None = None, cache_dir: Path | str | None = None):
    """Put a release's encoder.json and vocab.bpe in tiktoken's cache so get_encoding("gpt2") works offline."""
    from .tiktoken_cache import install

    return install(name_or_dir, cache_dir)


__all__ = [
    "__version__", "Gpt2hubError", "ReleaseManifest", "Checkpoint",
    "releases", "resolve", "create_manifest", "list_releases", "info", "path", "pull", "mirror", "convert", "verify", "sample",
    "tiktoken",
]
