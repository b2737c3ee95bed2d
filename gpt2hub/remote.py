"""One file at one source, as every kind of source hands it over: its size, any byte range of it, a URL fit to print.

Failures are `errors.TransferError`s that say whether trying again can help (`retryable`) and how long
to wait first; the HTTP, S3 and folder sources (`http_source`, `s3`, `folder_source`) implement these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol
from urllib.parse import urlsplit, urlunsplit

CHUNK = 256 << 10  # bytes per read from a stream; a broken read loses at most this much
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def redact(url: str) -> str:
    """A URL fit to print or save: no user:password, query string or fragment (signed URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class RemoteStat:
    size: int
    etag: str | None = None


class Remote(Protocol):
    """One file at one source."""

    url: str

    def stat(self) -> RemoteStat: ...

    def read(self, start: int, end: int, whole: bool = False, etag: str | None = None) -> Iterator[bytes]:
        """Stream bytes [start, end) (unchanged since `etag`); `whole`: the file in one unranged request."""
        ...


class ReleaseSource(Protocol):
    """A place holding releases in OpenAI's layout, `<base>/<folder>/<file>`."""

    name: str

    def remote(self, folder: str, file: str) -> Remote: ...
