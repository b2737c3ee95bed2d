"""Which sources a pull asks, in which order, and a source opened from what a user typed.

Every source lays a release out as OpenAI does, `<base>/<folder>/<file>`: an HTTP(S) base URL
(`http_source`), an S3 prefix (`s3`) or a local folder (`folder_source`).
"""

from __future__ import annotations

import re

from . import settings
from .folder_source import FolderSource
from .http_source import HttpSource
from .remote import ReleaseSource, redact
from .s3 import S3Source

OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
# Public copies in OpenAI's layout, tried after OpenAI.
PUBLIC_MIRRORS = (
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2",
    "https://huggingface.co/rasbt/gpt2-tensorflow/resolve/main",
)


def origin_url() -> str:
    """OpenAI's base URL, or $GPT2HUB_ORIGIN where set (tests: a loopback server). The origin's index vouches
    for a data file without a published sha256."""
    return settings.value(settings.ORIGIN) or OPENAI_URL


def open_source(spec: str, endpoint_url: str | None = None, connections: int = settings.CONNECTIONS,
                speed_time: float | None = None) -> ReleaseSource:
    """A source from what a user typed: http(s)://..., s3://bucket/prefix, or a folder path. `speed_time`:
    the seconds an HTTP reply's headers may take (None: $GPT2HUB_SPEED_TIME)."""
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec, speed_time)
    if spec.startswith("s3://"):
        return S3Source(spec, endpoint_url, connections)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec) and not spec.startswith("file://"):
        raise ValueError(f"{redact(spec)}: unsupported source (use http(s)://, s3://bucket/prefix or a folder)")
    return FolderSource(spec)


def user_sources(explicit: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The sources the user named: `--source`, else $GPT2HUB_SOURCE."""
    return list(explicit) or [s for s in re.split(r"[\s,]+", settings.value(settings.SOURCE) or "") if s]


def no_public_mirrors() -> bool:
    """$GPT2HUB_NO_PUBLIC_MIRRORS: never fall back to the public third-party copies."""
    return settings.flag(settings.NO_PUBLIC_MIRRORS)


def default_sources(explicit: list[str] | tuple[str, ...] = (), manifest_sources: tuple[str, ...] = (), *,
                    openai: bool = True, public_mirrors: bool = True) -> list[str]:
    """Sources in the order they are tried: the user's (else $GPT2HUB_SOURCE), the manifest's, then, for a
    release OpenAI published (`openai`), OpenAI's origin and (unless refused) the public mirrors."""
    user = user_sources(explicit)
    out: list[str] = []
    public = [*PUBLIC_MIRRORS] if public_mirrors and not no_public_mirrors() else []
    for s in [*user, *manifest_sources, *([origin_url(), *public] if openai else [])]:
        if s.rstrip("/") not in (o.rstrip("/") for o in out):
            out.append(s)
    return out
