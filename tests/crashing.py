"""A consumer that dies in native code, for tests of what survives it (run in a child by gpt2hub.isolation)."""

import ctypes
import sys


def segfault(*args, **kwargs):
    """Takes any consumer's arguments, says something on stderr, then reads address 0: SIGSEGV."""
    print("loading the model", file=sys.stderr)
    ctypes.string_at(0)
