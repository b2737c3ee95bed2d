"""gpt2hub.isolation: a function run in a child process; its result, its errors and its death come back here."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest

from gpt2hub import isolation
from gpt2hub.errors import ConsumerCrashed, ConsumerTimedOut, ConversionError, Gpt2hubError
from tests.checks import one_line
from tests.crashing import segfault

# The children import this module by name to find these functions.


def arrays(n: int, *, scale: float = 1.0) -> dict:
    return {"pid": os.getpid(), "logits": np.arange(n, dtype=np.float64) * scale, "note": "ok"}


def noisy() -> int:
    print("a banner on stdout")
    print("a warning on stderr", file=sys.stderr)
    os.write(2, b"native log line\n")
    return 7


def raise_gpt2hub() -> None:
    raise ConversionError("model.safetensors: not a safetensors file")


def raise_value_error() -> None:
    raise ValueError("bad value\nsecond line")


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickle rebuilds exceptions from .args: this one cannot be rebuilt
        super().__init__(f"{a} and {b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def exit_quietly() -> None:
    sys.exit(0)


def kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


def exit_status(code: int) -> None:
    os._exit(code)


def sleep(seconds: float) -> None:
    print("still working", file=sys.stderr, flush=True)
    time.sleep(seconds)


def test_returns_the_result_from_another_process():
    out = isolation.run(arrays, (5,), {"scale": 0.5})
    assert out["pid"] != os.getpid()
    np.testing.assert_array_equal(out["logits"], np.arange(5) * 0.5)
    assert out["note"] == "ok"


def test_child_output_stays_out_of_the_users_terminal(capfd):
    assert isolation.run(noisy) == 7
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_gpt2hub_error_comes_back_as_the_same_error():
    with pytest.raises(ConversionError) as e:
        isolation.run(raise_gpt2hub)
    assert one_line(e) == "model.safetensors: not a safetensors file"


def test_another_exception_comes_back_as_itself():
    with pytest.raises(ValueError, match="bad value"):
        isolation.run(raise_value_error)


def test_an_exception_that_cannot_be_rebuilt_comes_back_as_one_line():
    with pytest.raises(Gpt2hubError) as e:
        isolation.run(raise_unpicklable)
    assert one_line(e) == "Unpicklable: 1 and 2"


def test_sys_exit_in_the_child_does_not_exit_the_parent():
    with pytest.raises(Gpt2hubError) as e:
        isolation.run(exit_quietly)
    assert one_line(e) == "SystemExit: 0"


def test_a_segfault_is_a_one_line_error_naming_the_signal(capfd):
    with pytest.raises(ConsumerCrashed) as e:
        isolation.run(segfault, name="llama.cpp")
    msg = one_line(e)
    assert msg.startswith("llama.cpp: the child process was killed by SIGSEGV (a crash in native code)")
    assert "Fatal Python error: Segmentation fault" in msg and "in string_at (ctypes/__init__.py:" in msg  # faulthandler's innermost frame
    assert e.value.signal == signal.SIGSEGV
    assert capfd.readouterr() == ("", "")


def test_sigkill_is_reported_as_a_likely_out_of_memory():
    with pytest.raises(ConsumerCrashed) as e:
        isolation.run(kill_self, (signal.SIGKILL,))
    assert "killed by SIGKILL (out of memory?)" in one_line(e)
    assert e.value.signal == signal.SIGKILL


def test_a_non_zero_exit_without_a_result_names_the_status():
    with pytest.raises(ConsumerCrashed) as e:
        isolation.run(exit_status, (3,), name="transformers")
    assert one_line(e) == "transformers: the child process exited with status 3 and no result"
    assert e.value.exit_status == 3


def test_a_timeout_stops_the_child():
    t0 = time.monotonic()
    with pytest.raises(ConsumerTimedOut) as e:
        isolation.run(sleep, (60,), name="tensorflow", timeout=5)
    assert time.monotonic() - t0 < 30
    assert one_line(e) == "tensorflow: no result after 5 s; stopped; output: still working"


def test_a_function_that_cannot_be_pickled_is_refused():
    with pytest.raises(Gpt2hubError) as e:
        isolation.run(lambda: 1, name="inline")
    assert one_line(e).startswith("inline: cannot be run in a child process")
