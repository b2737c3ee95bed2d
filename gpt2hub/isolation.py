"""Run a function in a child process, so a crash, an out-of-memory kill or a hang there is an error here.

    logits = isolation.run(llama_logits, (path, tokens), name="llama.cpp", timeout=600)

The child is a fresh interpreter (`python -c`, never a fork of this process, whose TensorFlow,
torch or llama.cpp threads a fork would copy mid-flight), given this process's sys.path. The
function and its arguments travel pickled, so the function must be importable by name (defined
at a module's top level); the return value (numpy arrays, dicts, ...) comes back pickled. No
__main__ module is re-imported, so a user's script needs no `if __name__ == "__main__"` guard.

The child's stdout and stderr (library banners, llama.cpp's log) go to a file and are shown only
when it dies, as the last lines of ConsumerCrashed's one-line message. Its memory is the
system's again as soon as it exits.

Every child runs under a wall-time limit (killed by the parent) and an address-space limit
(RLIMIT_AS, set in the child before it imports anything): $GPT2HUB_CONSUMER_TIMEOUT seconds and
$GPT2HUB_CONSUMER_MEMORY GiB, so a hostile file cannot make a consumer run or grow without bound.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from . import atomic, settings
from .errors import ConsumerCrashed, ConsumerTimedOut, Gpt2hubError

T = TypeVar("T")

# A whole verify at 1558M takes ~275 s and its longest child (TensorFlow or transformers) under a minute
# (benchmarks/RESULTS.md); an hour leaves room for a slow, loaded machine and still ends a hang.
DEFAULT_TIMEOUT_S = 3600.0
# Address space, not resident memory: libraries, thread stacks and malloc arenas are mapped, not touched.
# On the tiny release the children peak at 0.3 (llama.cpp, onnxruntime) to 1.4 GB (TensorFlow) of address
# space for 0.05-0.57 GB resident. At 1558M the largest child (transformers) holds 6.2 GB (RESULTS.md) with
# the 6.2 GB file mapped too: ~14 GB, TensorFlow's graph about as much. 64 GiB is several times that and
# still stops a file that asks for terabytes.
DEFAULT_MEMORY_GIB = 64.0
_GIB = 1 << 30

# The child's whole program: cap its address space, restore the parent's sys.path, then let _serve
# unpickle and call.
_BOOTSTRAP = """\
import pickle, resource, sys
limit = int(sys.argv[3])
if limit:  # never above a limit this process inherited (ulimit -v): that one cannot be raised
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
with open(sys.argv[1], "rb") as f:
    sys.path[:] = pickle.load(f)
    from gpt2hub.isolation import _serve
    _serve(f, sys.argv[2], limit)
"""
# What a failed allocation says, from Python, torch, numpy, glibc's dlopen and C++.
_OUT_OF_MEMORY = re.compile(r"can(no|')t allocate|out of memory|failed to map segment|bad_alloc|"
                            r"unable to allocate|memoryerror|resource exhausted", re.IGNORECASE)
_TAIL_LINES = 3  # lines of a dead child's output put into the error message
_TAIL_CHARS = 400
_FRAME = re.compile(r'File "(.*)", line (\d+) in (.*)')  # faulthandler's frame lines


def run(fn: Callable[..., T], args: tuple = (), kwargs: Mapping[str, Any] | None = None, *,
        name: str | None = None, timeout: float | None = None, memory_gib: float | None = None) -> T:
    """fn(*args, **kwargs) in a child process; its return value, or what it raised, raised here.

    A Gpt2hubError (or any picklable exception) the function raises is raised here unchanged;
    one that cannot be pickled becomes a Gpt2hubError with its type and first line.
    Raises ConsumerCrashed when the child dies by a signal (SIGSEGV, SIGKILL: often out of
    memory), exits without a result or fails an allocation at its address-space limit (`memory_gib`,
    default $GPT2HUB_CONSUMER_MEMORY; 0: none), ConsumerTimedOut after `timeout` seconds (default
    $GPT2HUB_CONSUMER_TIMEOUT). `name` labels the message (default: the function's name).
    """
    label = name or getattr(fn, "__qualname__", repr(fn))
    timeout_setting = timeout is None
    default_timeout, default_memory = limits()
    timeout = default_timeout if timeout is None else timeout
    memory_gib = default_memory if memory_gib is None else memory_gib
    memory = f"{memory_gib:g} GiB of address space ({settings.CONSUMER_MEMORY})"
    with tempfile.TemporaryDirectory(prefix="gpt2hub-child-") as tmp:
        request, result, log = Path(tmp, "request"), Path(tmp, "result"), Path(tmp, "output")
        with request.open("wb") as f:
            pickle.dump(list(sys.path), f)
            try:
                pickle.dump((fn, tuple(args), dict(kwargs or {})), f, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError) as e:
                raise Gpt2hubError(f"{label}: cannot be run in a child process ({e})") from None
        with log.open("wb") as out:
            # A session of its own: a timeout (or Ctrl-C here) stops the child and anything it started.
            child = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(request), str(result),
                                      str(int(memory_gib * _GIB))],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill(child)
                if timeout_setting:
                    raise ConsumerTimedOut(f"{label}: stopped after {timeout:g} s ({settings.CONSUMER_TIMEOUT})"
                                           f"{_tail(log)}") from None
                raise ConsumerTimedOut(f"{label}: no result after {timeout:g} s; stopped{_tail(log)}") from None
            finally:
                _kill(child)
        tail = _tail(log)
        limit = f"; it may have hit its limit of {memory}" if _OUT_OF_MEMORY.search(tail) else ""
        if code < 0:
            raise ConsumerCrashed(f"{label}: the child process was killed by {_describe(-code)}{limit}{tail}",
                                  signal=-code)
        if not result.is_file():
            raise ConsumerCrashed(f"{label}: the child process exited with status {code} and no result{limit}{tail}",
                                  exit_status=code)
        with result.open("rb") as f:
            outcome, value, description = pickle.load(f)
    if outcome == "returned":
        return value
    if outcome == "memory":
        raise ConsumerCrashed(f"{label}: stopped at its limit of {memory}: {description}")
    try:
        error = pickle.loads(value) if value is not None else None
    except Exception:  # an exception class that cannot be rebuilt here
        error = None
    raise error if isinstance(error, Exception) else Gpt2hubError(description)


def limits() -> tuple[float, float]:
    """(seconds, GiB of address space) a child may use: $GPT2HUB_CONSUMER_TIMEOUT and $GPT2HUB_CONSUMER_MEMORY, or
    the defaults; a SettingError for a value that is not a positive number."""
    return (settings.number(settings.CONSUMER_TIMEOUT, DEFAULT_TIMEOUT_S),
            settings.number(settings.CONSUMER_MEMORY, DEFAULT_MEMORY_GIB))


def _describe(signum: int) -> str:
    try:
        sig = signal.Signals(signum)
    except ValueError:
        return f"signal {signum}"
    why = {signal.SIGKILL: "out of memory?", signal.SIGSEGV: "a crash in native code",
           signal.SIGBUS: "a crash in native code", signal.SIGILL: "an instruction this CPU lacks?",
           signal.SIGABRT: "aborted by native code", signal.SIGFPE: "a crash in native code"}.get(sig)
    return f"{sig.name} ({why})" if why else sig.name


def _tail(log: Path) -> str:
    """'; output: ...' with the child's last lines (Python's fatal-error line and innermost frame first)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if fatal is not None:  # faulthandler: "Fatal Python error: ...", then frames, innermost first
        frame = next((m for line in lines[fatal:] if (m := _FRAME.match(line))), None)
        picked = [lines[fatal]] + ([f"in {frame[3]} ({'/'.join(Path(frame[1]).parts[-2:])}:{frame[2]})"] if frame else [])
    else:
        picked = lines[-_TAIL_LINES:]
    text = " | ".join(picked)
    if len(text) > _TAIL_CHARS:
        text = "..." + text[-_TAIL_CHARS:]
    return f"; output: {text}" if text else ""


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


def _serve(request, result: str, limit: int = 0) -> None:
    """In the child: call the pickled function; pickle ("returned", value, "") or ("raised", error, line), or
    ("memory", None, line) for an allocation refused under the address-space `limit`."""
    import faulthandler

    faulthandler.enable()  # a native crash prints the Python frames it happened under
    try:
        fn, args, kwargs = pickle.load(request)  # unpickling imports the function's module
        outcome = ("returned", fn(*args, **kwargs), "")
    except BaseException as e:  # noqa: BLE001 - every exception goes back to the parent, as one line at least
        first = (str(e).strip().splitlines() or [""])[0]
        description = str(e) if isinstance(e, Gpt2hubError) else f"{type(e).__name__}: {first}".rstrip(": ")
        try:  # SystemExit and KeyboardInterrupt come back as their description, never re-raised as such
            error = pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL) if isinstance(e, Exception) else None
        except Exception:
            error = None
        if not isinstance(e, Gpt2hubError):
            traceback.print_exception(e)  # into the output file, for whoever debugs the child
        memory = limit and not isinstance(e, Gpt2hubError) and (
            isinstance(e, MemoryError) or _OUT_OF_MEMORY.search(f"{type(e).__name__}: {e}"))
        outcome = ("memory", None, description) if memory else ("raised", error, description)
    # An unpicklable value: the child fails, and no result is written.
    atomic.write_bytes(result, pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL), durable=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: native libraries' exit handlers are slow, and some crash
