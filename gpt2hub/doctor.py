"""What this installation can do: extras, consumers, home and disk, GPU."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

from . import converters, store

def _consumed_by(consumer: str) -> str:
    return " and ".join(f.name for f in converters.formats() if f.consumer == consumer)


# extra -> (import name, distribution name, what it enables)
EXTRAS: dict[str, tuple[str, str, str]] = {
    "tf": ("tensorflow", "tensorflow-cpu", "second reference in verify (the original graph run by TensorFlow), "
           f"consumer of {_consumed_by('tensorflow')} outputs"),
    "torch": ("torch", "torch", "reference model, verify, sample"),
    "transformers": ("transformers", "transformers", f"consumer of the {_consumed_by('transformers')} formats"),
    **{f.extra: (f.requires, f.requires, f"writing {f.name} files") for f in converters.formats() if f.extra},
    "llama": ("llama_cpp", "llama-cpp-python", f"consumer of {_consumed_by('llama.cpp')} files (llama.cpp), and its K-quant mixes"),
    "s3": ("boto3", "boto3", "S3 sources and mirrors"),
    "hub": ("huggingface_hub", "huggingface-hub", "Hugging Face Hub mirrors"),
}


def _version(import_name: str, dist: str) -> str | None:
    if importlib.util.find_spec(import_name) is None:
        return None
    for name in (dist, import_name, "tensorflow"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "installed"


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _gpu() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return None


def diagnose() -> dict:
    """A report of extras, home folder, free disk, releases present and the GPU."""
    home = store.home()
    extras = {extra: {"package": dist, "version": _version(mod, dist), "for": use}
              for extra, (mod, dist, use) in EXTRAS.items()}
    return {
        "home": str(home),
        "free_bytes": _free_bytes(home),
        "extras": extras,
        "gpu": _gpu(),
    }
