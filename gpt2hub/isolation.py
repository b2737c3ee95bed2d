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

from .errors import ConsumerCrashed, ConsumerTimedOut, Gpt2hubError

T = TypeVar("T")

# The child's whole program: restore the parent's sys.path, then let _serve unpickle and call.
_BOOTSTRAP = """\
import pickle, sys
with open(sys.argv[1], "rb") as f:
    sys.path[:] = pickle.load(f)
    from gpt2hub.isolation import _serve
    _serve(f, sys.argv[2])
"""
_TAIL_LINES = 3  # lines of a dead child's output put into the error message
_TAIL_CHARS = 400
_FRAME = re.compile(r'File "(.*)", line (\d+) in (.*)')  # faulthandler's frame lines


def run(fn: Callable[..., T], args: tuple = (), kwargs: Mapping[str, Any] | None = None, *,
        name: str | None = None, timeout: float | None = None) -> T:
    """fn(*args, **kwargs) in a child process; its return value, or what it raised, raised here.

    A Gpt2hubError (or any picklable exception) the function raises is raised here unchanged;
    one that cannot be pickled becomes a Gpt2hubError with its type and first line.
    Raises ConsumerCrashed when the child dies by a signal (SIGSEGV, SIGKILL: often out of
    memory) or exits without a result, ConsumerTimedOut after `timeout` seconds. `name` labels
    the message (default: the function's name).
    """
    label = name or getattr(fn, "__qualname__", repr(fn))
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
            child = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(request), str(result)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill(child)
                raise ConsumerTimedOut(f"{label}: no result after {timeout:g} s; stopped{_tail(log)}") from None
            finally:
                _kill(child)
        if code < 0:
            raise ConsumerCrashed(f"{label}: the child process was killed by {_describe(-code)}{_tail(log)}",
                                  signal=-code)
        if not result.is_file():
            raise ConsumerCrashed(f"{label}: the child process exited with status {code} and no result{_tail(log)}",
                                  exit_status=code)
        with result.open("rb") as f:
            outcome, value, description = pickle.load(f)
    if outcome == "returned":
        return value
    try:
        error = pickle.loads(value) if value is not None else None
    except Exception:  # an exception class that cannot be rebuilt here
        error = None
    raise error if isinstance(error, Exception) else Gpt2hubError(description)


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


def _serve(request, result: str) -> None:
    """In the child: call the pickled function; pickle ("returned", value, "") or ("raised", error, line)."""
    import faulthandler

    faulthandler.enable()  # a native crash prints the Python frames it happened under
    fn, args, kwargs = pickle.load(request)
    try:
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
        outcome = ("raised", error, description)
    tmp = result + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(outcome, f, protocol=pickle.HIGHEST_PROTOCOL)  # an unpicklable value: the child fails
    os.replace(tmp, result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: native libraries' exit handlers are slow, and some crash
