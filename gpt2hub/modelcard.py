"""The model card: model_card.md (shipped in the wheel) with Hub YAML metadata for a mirrored release."""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from pathlib import Path

from . import converters
from .errors import MirrorError
from .integrity import FileCheck
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


def openai_verified(m: ReleaseManifest, pulled: dict[str, FileCheck]) -> bool:
    """Whether pull checked every file of the release against something OpenAI published."""
    return bool(m.files) and all(f.name in pulled and pulled[f.name].check.openais for f in m.files)


def metadata(m: ReleaseManifest, formats: list[str], original_sha256: dict[str, str],
             checks: dict[str, tuple[str, str]] | None = None, pulled: dict[str, FileCheck] | None = None) -> dict:
    """The README's YAML metadata: Hub fields plus which release this is, its files' hashes and how each was checked."""
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
            "openai_weights_verified": openai_verified(m, pulled or {}),
            "checked": {path: {"how": how, "at": at} for path, (how, at) in sorted((checks or {}).items())},
        },
    }


def render(m: ReleaseManifest, formats: list[str], original_sha256: dict[str, str], files: dict[str, int], *,
           checks: dict[str, tuple[str, str]] | None = None, pulled: dict[str, FileCheck] | None = None) -> str:
    """README.md for a Hub repo: YAML front matter, model_card.md, the files uploaded, and what was checked:
    `checks` is path -> (how, when in UTC) of each uploaded file, `pulled` pull's record of the original files."""
    checks, pulled = checks or {}, pulled or {}
    front = "\n".join(["---", *_yaml(metadata(m, formats, original_sha256, checks, pulled)), "---"])
    rows = "\n".join(f"| `{path}` | {size:,} |" for path, size in sorted(files.items()))
    hashes = "\n".join(f"| `{name}` | `{sha}` |" for name, sha in sorted(original_sha256.items()))
    mirrored = (
        f"## This repository\n\n"
        f"OpenAI's GPT-2 **{m.name}** ({', '.join(m.aliases) or 'no other names'}; {m.parameters:,} parameters), "
        f"mirrored with gpt2hub in these formats: {', '.join(formats)}.\n\n"
        f"| file | bytes |\n|---|---|\n{rows}\n\n"
        f"SHA-256 of the original TensorFlow files this was made from:\n\n| file | sha256 |\n|---|---|\n{hashes}\n"
    )
    return f"{front}\n\n{card_text().rstrip()}\n\n{mirrored}\n{_checked(m, checks, pulled)}"


def _checked(m: ReleaseManifest, checks: dict[str, tuple[str, str]], pulled: dict[str, FileCheck]) -> str:
    """The card's account of what was verified before upload, how, and when."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if openai_verified(m, pulled):
        claim = ("Every original file was verified when it was pulled against what OpenAI published (its sha256, "
                 "or every tensor's CRC32C from OpenAI's index), and its sha256 measured again before upload matched: "
                 "these are OpenAI's original weights, unchanged.")
    else:
        weak = sorted(n for n in (f.name for f in m.files) if n not in pulled or not pulled[n].check.openais)
        claim = (f"**Not verified as OpenAI's:** {', '.join(f'`{n}`' for n in weak)} "
                 "had nothing OpenAI published to be checked against when pulled (see below), so this repository "
                 "does not claim to hold OpenAI's weights unchanged.")
    pulls = "\n".join(f"| `{name}` | {info.check.label} |" for name, info in sorted(pulled.items()))
    rows = "\n".join(f"| `{path}` | {how} | {at or '-'} |" for path, (how, at) in sorted(checks.items()))
    return (f"## What was checked\n\n{claim}\n\n"
            f"Pulled and checked (gpt2hub pull):\n\n| original file | checked against |\n|---|---|\n{pulls}\n\n"
            f"Each uploaded file, checked before upload (converted files by the exact weight proof of `gpt2hub verify`: "
            f"every tensor equal to the original's, f32 bit for bit, f16/bf16 rounded to nearest even, block types "
            f"as gguf-py's quantizer):\n\n| file | how | when (UTC) |\n|---|---|---|\n{rows}\n\n"
            f"Card written {now} by gpt2hub.\n")
