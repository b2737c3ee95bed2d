"""Every `GPT2HUB_*` environment variable, its default, and the one parser for each kind of value.

Modules ask here instead of reading `os.environ`, so a switch means the same words everywhere and a
value gpt2hub does not understand is refused in one line rather than read as on or off.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Mapping

from .errors import SettingError

HOME = "GPT2HUB_HOME"
MANIFESTS = "GPT2HUB_MANIFESTS"
OFFLINE = "GPT2HUB_OFFLINE"
ORIGIN = "GPT2HUB_ORIGIN"
SOURCE = "GPT2HUB_SOURCE"
NO_PUBLIC_MIRRORS = "GPT2HUB_NO_PUBLIC_MIRRORS"
ACCEPT_DIFFERENT_SHARED = "GPT2HUB_ACCEPT_DIFFERENT_SHARED"
SPEED_LIMIT, SPEED_TIME = "GPT2HUB_SPEED_LIMIT", "GPT2HUB_SPEED_TIME"
CONSUMER_TIMEOUT = "GPT2HUB_CONSUMER_TIMEOUT"  # seconds a consumer child may run
CONSUMER_MEMORY = "GPT2HUB_CONSUMER_MEMORY"  # GiB of address space a consumer child may map
PROGRESS = "GPT2HUB_PROGRESS"  # how long commands show progress: auto, bar, plain or none (--progress)

CONNECTIONS = 8  # parallel connections of a pull or an upload
CONVERT_LOCK = ".convert.lock"  # in <home>/<name>/: held by a convert of the release; rm refuses while it is
PULL_LOCK = ".pull.lock"  # in <home>/<name>/, beside the format folders: held by a pull of the release

# Other programs' variables that gpt2hub reads.
XDG_CACHE_HOME = "XDG_CACHE_HOME"  # the user's cache folder; the store's default home is under it
TIKTOKEN_CACHE_DIRS = ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")  # tiktoken's cache folder, in its order

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_bool(name: str, value: str) -> bool:
    """`value` of the switch `name` as a bool: 1/true/yes/on or 0/false/no/off (any case), else SettingError."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SettingError(f"${name}={value!r}: not a switch (use 1/true/yes/on or 0/false/no/off)")


def flag(name: str) -> bool:
    """The switch `name` from the environment; unset or empty is off."""
    return parse_bool(name, os.environ.get(name, ""))


def value(name: str) -> str | None:
    """The variable `name`, or None when unset or empty."""
    return os.environ.get(name) or None


def library(name: str) -> str | None:
    """Another library's own variable `name` (e.g. HF_ENDPOINT), read now rather than when it was imported."""
    return value(name)


def number(name: str, default: float) -> float:
    """The positive, finite number in `name`, or `default` when unset or empty."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        n = float(raw)
    except ValueError:
        raise SettingError(f"${name}: not a number ({raw!r})") from None
    if not (n > 0 and math.isfinite(n)):
        raise SettingError(f"${name}: must be a positive finite number, not {raw!r}")
    return n


def choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices` (any case) from `name`, or `default` when unset or empty; any other word is refused."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() not in choices:
        raise SettingError(f"${name}={raw!r}: choose one of {', '.join(choices)}")
    return raw.lower()


def raw_value(name: str) -> str | None:
    """The variable `name` exactly as set (an empty value stays ""), or None when unset."""
    return os.environ.get(name)


@contextlib.contextmanager
def overridden(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables for this process and the processes it starts during a with-block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def set_default(name: str, value: str) -> None:
    """Set another program's variable for this process unless the user set it (in a consumer's child process)."""
    os.environ.setdefault(name, value)
