"""The one reporting hook of gpt2hub's API, and the terminal reporter the CLI passes to it.

Every long operation (pull, convert, verify, sample, mirror, demo) takes `progress: Reporter | None`, a
callable given one `ProgressEvent` at a time; None reports nothing (what happened is in the result).

    begin     a task of `total` bytes starts (`total` None: unknown), `done` of them already there;
              a task with a `parent` counts its bytes toward the parent's too (pull's file and "total")
    advance   `done` more bytes of `task`
    end       `task` finished (or was abandoned)
    message   one line for a person: a step, a warning (`text`)
    output    a piece of the operation's product, written as it comes: sampled text (`text`)
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Literal

from . import settings

Kind = Literal["begin", "advance", "end", "message", "output"]
MODES = ("auto", "bar", "plain", "none")  # --progress / $GPT2HUB_PROGRESS; auto: bar on a terminal, else plain
PLAIN_STEP = 0.1  # a plain line each time another tenth of a task is done,
PLAIN_EVERY_S = 30.0  # or when this long passed since the last line,
PLAIN_GAP_S = 1.0  # but never sooner than this after the last one (a task that ends within it prints nothing)


@dataclass(frozen=True)
class ProgressEvent:
    """One thing an operation reports; `kind` says which fields carry it (see the module's table)."""

    kind: Kind
    task: str = ""
    done: int = 0
    total: int | None = None
    parent: str | None = None
    text: str = ""

    @classmethod
    def begin(cls, task: str, total: int | None, done: int = 0, parent: str | None = None) -> "ProgressEvent":
        return cls("begin", task, done, total, parent)

    @classmethod
    def advance(cls, task: str, done: int) -> "ProgressEvent":
        return cls("advance", task, done)

    @classmethod
    def end(cls, task: str) -> "ProgressEvent":
        return cls("end", task)

    @classmethod
    def message(cls, text: str) -> "ProgressEvent":
        return cls("message", text=text)

    @classmethod
    def output(cls, text: str) -> "ProgressEvent":
        return cls("output", text=text)


Reporter = Callable[[ProgressEvent], None]


def emit(progress: Reporter | None, event: ProgressEvent) -> None:
    """Give `event` to `progress`, if there is one."""
    if progress is not None:
        progress(event)


def bytes_counter(progress: Reporter | None, task: str) -> Callable[[int], None]:
    """A callable(n) for code that counts bytes: each call is an `advance` of `task`."""
    return (lambda n: None) if progress is None else (lambda n: progress(ProgressEvent.advance(task, n)))


def resolve_mode(mode: str | None = None) -> str:
    """"bar", "plain" or "none": `mode`, else $GPT2HUB_PROGRESS, else auto (bar on a terminal, else plain)."""
    mode = mode or settings.choice(settings.PROGRESS, MODES, "auto")
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "plain"
    return mode


class TerminalProgress:
    """The CLI's reporter: byte progress on stderr as tqdm bars (on a terminal) or plain lines (in a log, a pipe),
    messages on stderr, output on stdout. `mode` is one of MODES (default $GPT2HUB_PROGRESS, else auto);
    `bars=False` (--quiet) is mode none."""

    def __init__(self, bars: bool = True, mode: str | None = None):
        self.mode = resolve_mode(mode) if bars else "none"
        self.bars = self.mode == "bar"  # read by libraries that draw their own bars (huggingface_hub)
        self._open: dict[str, object] = {}  # task -> its tqdm bar
        self._parents: dict[str, str] = {}
        self._plain = PlainLines(self._line) if self.mode == "plain" else None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "message":
            self._line(event.text)
        elif event.kind == "output":
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif self._plain is not None:
            self._plain(event)
        elif not self.bars:
            return
        elif event.kind == "begin":
            self._begin(event)
        elif event.kind == "advance":
            for task in (event.task, self._parents.get(event.task)):
                if task in self._open:
                    self._open[task].update(event.done)
        elif event.kind == "end":
            self._parents.pop(event.task, None)
            bar = self._open.pop(event.task, None)
            if bar is not None:
                bar.close()

    def _begin(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if event.task in self._open:
            self._open.pop(event.task).close()
        if event.parent is not None:
            self._parents[event.task] = event.parent
        self._open[event.task] = tqdm(total=event.total, initial=event.done, desc=event.task[:24], unit="B",
                                      unit_scale=True, unit_divisor=1024, position=len(self._open), leave=False,
                                      file=sys.stderr)

    def _line(self, text: str) -> None:
        if self._open:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)  # above the bars, which are redrawn below it
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close any bar an interrupted operation left open."""
        for bar in self._open.values():
            bar.close()
        self._open.clear()
        self._parents.clear()


@dataclass
class _Counted:
    """A task plain lines are printed for: its bytes so far, and when and how far its last line was."""

    total: int | None
    done: int
    started: float
    at_start: int  # bytes already there when it began: not counted in the rate
    last_line: float = 0.0
    next_step: float = PLAIN_STEP  # the fraction of `total` at which the next line is due
    lines: int = 0


class PlainLines:
    """Byte progress as a line now and then, for a log: every PLAIN_STEP of a task or PLAIN_EVERY_S seconds,
    with bytes done, rate and time left. A task with a parent counts toward the parent, which is printed alone."""

    def __init__(self, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.write, self.clock = write, clock
        self._tasks: dict[str, _Counted] = {}
        self._counts_toward: dict[str, str] = {}  # a child task -> its parent's name

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "begin":
            if event.parent in self._tasks:
                self._counts_toward[event.task] = event.parent
                return
            now = self.clock()
            self._tasks[event.task] = _Counted(event.total, event.done, now, event.done, last_line=now)
        elif event.kind == "advance":
            name = self._counts_toward.get(event.task, event.task)
            task = self._tasks.get(name)
            if task is not None:
                task.done += event.done
                self._maybe_line(name, task)
        elif event.kind == "end":
            if self._counts_toward.pop(event.task, None) is not None:
                return
            task = self._tasks.pop(event.task, None)
            if task is not None and task.lines:  # a task that printed lines says that it ended
                self.write(f"{event.task}: {_size(task.done)} done in {self.clock() - task.started:.1f} s")

    def _maybe_line(self, name: str, task: _Counted) -> None:
        now = self.clock()
        if now - task.last_line < PLAIN_GAP_S:
            return
        fraction = task.done / task.total if task.total else None
        if (fraction is None or fraction < task.next_step) and now - task.last_line < PLAIN_EVERY_S:
            return
        if fraction is not None:
            task.next_step = (int(fraction / PLAIN_STEP + 1e-9) + 1) * PLAIN_STEP
        task.last_line, task.lines = now, task.lines + 1
        rate = (task.done - task.at_start) / max(now - task.started, 1e-9)
        self.write(progress_line(name, task.done, task.total, rate))


def progress_line(task: str, done: int, total: int | None, rate: float) -> str:
    """One plain progress line: "total: 12.3 MB of 58.2 MB (21%), 4.1 MB/s, 11 s left"."""
    if total is None:
        return f"{task}: {_size(done)}, {_size(rate)}/s"
    left = f", {_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"{task}: {_size(done)} of {_size(total)} ({100 * done // max(total, 1)}%), {_size(rate)}/s{left}"


def _size(n: float) -> str:
    from .printing import size_text

    return size_text(int(n))


def _duration(seconds: float) -> str:
    """"42 s", "3 min 5 s", "2 h 10 min"."""
    s = math.ceil(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
