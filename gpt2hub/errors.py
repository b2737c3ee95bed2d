"""The errors gpt2hub raises: each carries one line a user can act on."""

import json
import os
from pathlib import Path


class Gpt2hubError(Exception):
    """Base of every error gpt2hub reports to the user as one line."""


class UnknownRelease(Gpt2hubError):
    """A name that no manifest knows."""


class ManifestError(Gpt2hubError):
    """A manifest file that is missing, unreadable or malformed."""


class CheckpointError(Gpt2hubError):
    """A TensorFlow checkpoint that is damaged or not a checkpoint at all."""


class ChecksumError(CheckpointError):
    """Bytes whose checksum differs from the one recorded for them."""


class DownloadError(Gpt2hubError):
    """A transfer that failed after its retries."""


class ConversionError(Gpt2hubError):
    """Input that cannot be converted, or an output that may not be written."""


class VerificationError(Gpt2hubError):
    """A verification that could not run (a failed check is a report row, not this)."""


class MirrorError(Gpt2hubError):
    """An upload that failed or a destination that cannot be used."""


class S3AddressError(Gpt2hubError, ValueError):
    """An s3:// URL that is not `s3://bucket/prefix` with a bucket name S3 allows."""


class ConsumerCrashed(Gpt2hubError):
    """A consumer run in a child process that died (a signal, a non-zero exit) instead of answering."""

    def __init__(self, message: str, signal: int | None = None, exit_status: int | None = None):
        super().__init__(message)
        self.signal, self.exit_status = signal, exit_status


class ConsumerTimedOut(ConsumerCrashed):
    """A consumer run in a child process that gave no answer in time, and was stopped."""


class SettingError(Gpt2hubError):
    """An environment variable whose value gpt2hub does not understand."""


class UnsafeDestination(Gpt2hubError):
    """A final name that is a symlink (or not a regular file) where gpt2hub was to write a file."""


class StoreError(Gpt2hubError):
    """A removal that would touch something not gpt2hub's, or a release busy with a pull."""


class OfflineError(Gpt2hubError):
    """Something that needs the network, asked for in offline mode."""


class TiktokenError(Gpt2hubError):
    """Files that are not the ones tiktoken's gpt2 encoding expects, or a cache that cannot take them."""


class TransferError(Gpt2hubError):
    """One failed request; `retryable` says whether the same source may succeed on a retry."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None, missing: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.missing = missing  # the source does not have this file (404 / NoSuchKey / no such path)


class RangeIgnored(TransferError):
    """The server answered a ranged request with the whole file (200, not 206)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


class TooSlow(TransferError):
    """A transfer under the minimum rate for the whole window: a failed attempt, however many bytes trickled in."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


class DiskFull(DownloadError):
    """No space left for the download; what was written is kept."""


class WrongFile(Gpt2hubError):
    """Bytes (from a source, or on disk) that are not the release's file: pull tries the next source, and
    names this one in its error if none has the file."""


MAX_JSON_BYTES = 64 << 20  # no JSON input gpt2hub reads (hparams, configs, manifests) comes near this
MAX_JSON_DEPTH = 32  # a manifest nests 4 deep; deeper is an attack on the parser, not data
MAX_JSON_CONTAINERS = 1 << 18  # lists and objects (the 1558M manifest has ~1,200; 4 per tensor at most)


def one_line(e: BaseException) -> str:
    """An exception as one line: gpt2hub's own message, else its type and first line."""
    if isinstance(e, Gpt2hubError):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def parse_json(text: str | bytes, where: str, error: type[Gpt2hubError] = Gpt2hubError,
               max_depth: int = MAX_JSON_DEPTH, max_containers: int = MAX_JSON_CONTAINERS) -> object:
    """Parsed JSON, or `error` naming `where`: not JSON, nested deeper than `max_depth`, or holding more
    than `max_containers` lists and objects (counted before parsing, brackets in strings included)."""
    opening = (b"[", b"{") if isinstance(text, bytes) else ("[", "{")
    if text.count(opening[0]) + text.count(opening[1]) > max_containers:
        raise error(f"{where}: more than {max_containers:,} JSON lists and objects; not a file gpt2hub reads")
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply (more than {max_depth} levels)") from None
    except ValueError as e:
        raise error(f"{where}: not valid JSON ({e})") from None
    if json_depth(value) > max_depth:
        raise error(f"{where}: JSON nested too deeply (more than {max_depth} levels)")
    return value


def json_depth(value: object) -> int:
    """How deeply lists and objects nest in a parsed JSON value (walked without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (list, dict)))
    return deepest


def read_capped(path: Path | str, error: type[Gpt2hubError] = Gpt2hubError, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A file's bytes, or `error`: missing, unreadable, or larger than `max_bytes`."""
    try:
        with open(path, "rb") as f:  # read(n) allocates n bytes up front: ask for what the file holds
            data = f.read(min(os.fstat(f.fileno()).st_size, max_bytes) + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes:,} bytes; not a file gpt2hub reads")
    return data


def load_json(path: Path | str, error: type[Gpt2hubError] = Gpt2hubError) -> object:
    """A JSON file's content, or `error` naming the file: missing, unreadable, oversized, not JSON, nested too deep."""
    return parse_json(read_capped(path, error), str(path), error)
