"""A local folder as a source: `<dir>/<folder>/<file>` as OpenAI lays a release out, or the files directly in it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import TransferError
from .remote import CHUNK, RemoteStat


class FileRemote:
    def __init__(self, path: Path):
        self.path = path
        self.url = str(path)

    def stat(self) -> RemoteStat:
        try:
            return RemoteStat(self.path.stat().st_size)
        except FileNotFoundError:
            raise TransferError(f"{self.path}: no such file", retryable=False, missing=True) from None
        except OSError as e:
            raise TransferError(f"{self.path}: {e.strerror}", retryable=False) from None

    def read(self, start: int, end: int, whole: bool = False, etag: str | None = None) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                left = end - start
                while left > 0:
                    block = f.read(min(CHUNK, left))
                    if not block:
                        raise TransferError(f"{self.path}: file ended {left} bytes early", retryable=False)
                    left -= len(block)
                    yield block
        except OSError as e:
            raise TransferError(f"{self.path}: {e.strerror}", retryable=False) from None


class FolderSource:
    """A local folder in OpenAI's layout, `<dir>/<folder>/<file>`, or holding the files directly."""

    def __init__(self, path: str | Path):
        self.root = Path(str(path).removeprefix("file://")).expanduser()
        self.name = str(self.root)

    def remote(self, folder: str, file: str) -> FileRemote:
        nested = self.root / folder / file
        if nested.exists() or not (self.root / file).exists():
            return FileRemote(nested)
        return FileRemote(self.root / file)

