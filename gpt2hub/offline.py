"""Offline mode (`gpt2hub --offline` or GPT2HUB_OFFLINE=1): every command uses only what is on disk.

Anything that would need the network (an HTTP or S3 source, an upload, the Hub) stops with one line that
says so, before any connection is opened. Local folders are on disk, so they stay usable as sources.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from . import settings
from .errors import OfflineError

ENV = settings.OFFLINE
# The libraries gpt2hub drives have their own switches: set them too, so none of them reaches out either.
LIBRARY_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def enabled() -> bool:
    """$GPT2HUB_OFFLINE as a switch (settings.flag: a word it does not know is a SettingError)."""
    return settings.flag(ENV)


@contextlib.contextmanager
def switched_on() -> Iterator[None]:
    """Offline during a with-block, in this process and the processes it starts; the variables are put back after."""
    with settings.overridden(dict.fromkeys((ENV, *LIBRARY_SWITCHES), "1")):
        yield


def is_remote(spec: str) -> bool:
    """True for a source or destination reached over the network (any URL scheme but file://)."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec)) and not spec.startswith("file://")


def refuse(what: str) -> None:
    """Raise OfflineError for `what` (which would need the network) when offline mode is on."""
    if enabled():
        raise OfflineError(f"offline ({ENV}=1): {what} would need the network; nothing was fetched or sent")
