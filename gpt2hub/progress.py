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

import sys
from dataclasses import dataclass
from typing import Callable, Literal

Kind = Literal["begin", "advance", "end", "message", "output"]


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


class TerminalProgress:
    """The CLI's reporter: tqdm byte bars on stderr (only on a terminal), messages on stderr, output on stdout."""

    def __init__(self, bars: bool = True):
        self.bars = bars and sys.stderr.isatty()  # read by libraries that draw their own bars (huggingface_hub)
        self._open: dict[str, object] = {}  # task -> its tqdm bar
        self._parents: dict[str, str] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "message":
            self._line(event.text)
        elif event.kind == "output":
            sys.stdout.write(event.text)
            sys.stdout.flush()
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
