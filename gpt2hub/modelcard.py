"""The model card: model_card.md (shipped in the wheel) with Hub YAML metadata for a mirrored release."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from . import converters
from .errors import MirrorError
from .registry import ReleaseManifest

CARD_FILE = "model_card.md"
# Front matter every mirrored repo gets; the Hub reads license, library_name, tags and pipeline_tag.
BASE_METADATA = {
    "license": "mit",
    "library_name": "transformers",
    "pipeline_tag": "text-generation",
    "language": ["en"],
}
_PLAIN_KEY = re.compile(r"[a-z_][a-z0-9_]*")
FORMAT_TAGS = {**{f.name: f.tags for f in converters.formats()}, "original": ("tensorflow",)}


def card_text() -> str:
    """model_card.md: from the installed package (wheel), else from the source tree's root."""
    packaged = resources.files("gpt2hub") / CARD_FILE
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parents[1] / CARD_FILE
    try:
        return source.read_text(encoding="utf-8")
    except OSError:
        raise MirrorError(f"{CARD_FILE}: not found in the package or at {source}") from None


def _yaml(value: object, indent: int = 0) -> list[str]:
    """A small YAML emitter for dicts, lists and scalars; scalars are JSON strings, which YAML reads as is."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            key = k if _PLAIN_KEY.fullmatch(k) else json.dumps(k)  # file names quoted: `on`, `1e5` stay strings
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{key}:")
                lines.extend(_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{key}: {json.dumps(v)}")
    else:
        for v in value:
            if isinstance(v, (dict, list)) and v:
                sub = _yaml(v, indent + 1)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {json.dumps(v)}")
    return lines


def metadata(m: ReleaseManifest, formats: list[str], original_sha256: dict[str, str]) -> dict:
    """The README's YAML metadata: Hub fields plus which release this is and its files' hashes."""
    from .version import __version__

    tags = ["gpt2", "gpt2hub", "text-generation", *(tag for f in formats for tag in FORMAT_TAGS[f])]
    return {
        **BASE_METADATA,
        "tags": list(dict.fromkeys(tags)),
        "gpt2hub": {
            "release": m.name,
            "aliases": list(m.aliases),
            "released": m.released,
            "parameters": m.parameters,
            "formats": formats,
            "version": __version__,
            "original_sha256": dict(sorted(original_sha256.items())),
        },
    }


def render(m: ReleaseManifest, formats: list[str], original_sha256: dict[str, str], files: dict[str, int]) -> str:
    """README.md for a Hub repo: YAML front matter, model_card.md, and a table of the files uploaded."""
    front = "\n".join(["---", *_yaml(metadata(m, formats, original_sha256)), "---"])
    rows = "\n".join(f"| `{path}` | {size:,} |" for path, size in sorted(files.items()))
    hashes = "\n".join(f"| `{name}` | `{sha}` |" for name, sha in sorted(original_sha256.items()))
    mirrored = (
        f"## This repository\n\n"
        f"OpenAI's GPT-2 **{m.name}** ({', '.join(m.aliases) or 'no other names'}; {m.parameters:,} parameters), "
        f"mirrored with gpt2hub in these formats: {', '.join(formats)}.\n\n"
        f"| file | bytes |\n|---|---|\n{rows}\n\n"
        f"SHA-256 of the original TensorFlow files this was made from:\n\n| file | sha256 |\n|---|---|\n{hashes}\n"
    )
    return f"{front}\n\n{card_text().rstrip()}\n\n{mirrored}"
