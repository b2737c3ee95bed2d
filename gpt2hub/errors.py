"""The errors gpt2hub raises: each carries one line a user can act on."""

import json
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


class ConsumerCrashed(Gpt2hubError):
    """A consumer run in a child process that died (a signal, a non-zero exit) instead of answering."""

    def __init__(self, message: str, signal: int | None = None, exit_status: int | None = None):
        super().__init__(message)
        self.signal, self.exit_status = signal, exit_status


class ConsumerTimedOut(ConsumerCrashed):
    """A consumer run in a child process that gave no answer in time, and was stopped."""


def load_json(path: Path | str, error: type[Gpt2hubError] = Gpt2hubError) -> object:
    """A JSON file's content, or `error` naming the file: missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
