"""README's console examples are what the commands print: each `$ COMMAND` of a ```console block runs, in README's
order, against one store `gpt2hub demo --keep ~/demo` made (GPT2HUB_HOME=~/demo/home, HOME a folder of the test's
that README calls /home/me), and its stdout and stderr together must match the lines below it.

Masked on both sides: durations ("0.2 s"), rates ("3 MB/s"), numbers in e-notation (verify's |Δ|) and loopback ports.
In README, a line "..." stands for any lines and "..." inside a line for any text. A command ending in
"# on a machine with no network" runs in a network namespace of its own (no interface up). A block after
`<!-- example: not run: WHY -->` is not run (say why). `python -m tests.test_readme_examples` prints every command's
output; with `--write` it also puts each changed one into README.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.console import DEMO, kept_demo

README = Path(__file__).resolve().parents[1] / "README.md"
README_HOME = "/home/me"  # what README calls the user's home (conftest's kept_demo runs with it)
NOT_RUN = "<!-- example: not run: "
MASKS = [(re.compile(r"\b\d+(\.\d+)? s\b"), "<t> s"),
         (re.compile(r"\b\d+(\.\d+)? [KMG]?B/s\b"), "<rate>"),
         (re.compile(r"-?\b\d\.\d+e[-+]\d+\b"), "<x>"),
         (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>")]


@dataclass
class Example:
    command: str
    expected: list[str]
    line: int  # in README.md, for the failure message


def examples(text: str) -> tuple[list[Example], list[str]]:
    """The `$ ` commands of README's ```console blocks with the lines after each; and the reasons given for the blocks
    that are not run."""
    found: list[Example] = []
    skipped: list[str] = []
    inside = skip = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(NOT_RUN):
            skipped.append(line[len(NOT_RUN):].removesuffix("-->").strip())
            skip = True
        elif line == "```console":
            inside = True
        elif inside and line == "```":
            inside = skip = False
        elif inside and not skip:
            if line.startswith("$ "):
                found.append(Example(line[2:], [], number))
            else:
                assert found, f"README.md:{number}: output before any `$ ` command"
                found[-1].expected.append(line)
    return found, skipped


def masked(line: str) -> str:
    for pattern, mask in MASKS:
        line = pattern.sub(mask, line)
    return re.sub(r" {2,}", "  ", line.rstrip())  # a masked value may change a column's width


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether `actual` is `expected`, masked, "..." standing for any lines (a line of its own) or any text."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else
                      "[^\n]*".join(re.escape(part) for part in masked(line).split("...")) + "\n" for line in expected)
    return re.fullmatch(pattern, "".join(masked(line) + "\n" for line in actual)) is not None


def test_every_console_example_is_what_the_command_prints(kept_demo):
    """About a minute: the demo (shared with test_demo.py), then README's commands, verify's being the longest."""
    if shutil.which("unshare") is None:
        pytest.skip("README's no-network example needs unshare (util-linux)")
    run, demo_output = kept_demo.run, kept_demo.output
    found, skipped = examples(README.read_text())
    assert len(found) >= 20 and all(skipped) and len(skipped) <= 3, (len(found), skipped)  # each not run says why
    wrong = []
    for ex in found:
        actual = demo_output if ex.command == DEMO else run(ex.command)
        if not matches(ex.expected, actual):
            wrong.append(f"README.md:{ex.line}: $ {ex.command}\n--- README:\n" + "\n".join(ex.expected)
                         + "\n--- printed:\n" + "\n".join(actual))
    assert not wrong, "\n\n".join(wrong)


def test_the_matcher_masks_times_and_rates_and_takes_ellipses():
    assert matches(["a (1.2 MB in 0.0 s, 5 MB/s)"], ["a (1.2 MB in 3.4 s, 120 MB/s)"])
    assert not matches(["a (1.2 MB in 0.0 s)"], ["a (1.3 MB in 0.0 s)"])  # sizes are not masked
    assert matches(["x", "...", "z"], ["x", "y1", "y2", "z"]) and matches(["x", "...", "z"], ["x", "z"])
    assert matches(["manifest .../1558M.json"], ["manifest /usr/lib/gpt2hub/manifests/1558M.json"])
    assert not matches(["x", "z"], ["x", "y", "z"]) and not matches(["x"], ["x", "extra"])
    assert matches(["max 2.79e-07 of 1.2e-06"], ["max 4.65e-06 of 9.9e-05"])


def test_examples_are_read_from_console_blocks_only():
    text = ("```bash\n$ not this\n```\n```console\n$ gpt2hub list\nNAME\n$ gpt2hub du\n```\n"
            "<!-- example: not run: needs a 574 MB checkpoint -->\n```console\n$ gpt2hub big\nout\n```\n")
    found, skipped = examples(text)
    assert [(e.command, e.expected) for e in found] == [("gpt2hub list", ["NAME"]), ("gpt2hub du", [])]
    assert skipped == ["needs a 574 MB checkpoint"]


def refreshed(text: str, outputs: list[list[str]]) -> str:
    """README's text with each example whose output no longer matches replaced by `outputs` (one per example)."""
    lines = text.splitlines()
    for ex, actual in reversed(list(zip(examples(text)[0], outputs))):
        if not matches(ex.expected, actual):
            lines[ex.line:ex.line + len(ex.expected)] = actual  # ex.line counts from 1: the lines after the command
    return "\n".join(lines) + "\n"


def test_refreshing_replaces_only_the_examples_that_changed():
    text = "```console\n$ a\nin 0.1 s\n...\n$ b\nold\n```\n"
    assert refreshed(text, [["in 2.0 s", "x", "y"], ["new", "lines"]]) == \
        "```console\n$ a\nin 0.1 s\n...\n$ b\nnew\nlines\n```\n"


if __name__ == "__main__":  # python -m tests.test_readme_examples [--write]: print (or write into README) every output
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        kept = kept_demo(Path(tmp), README_HOME)
        text = README.read_text()
        outputs = [kept.output if ex.command == DEMO else kept.run(ex.command) for ex in examples(text)[0]]
    if sys.argv[1:] == ["--write"]:
        README.write_text(refreshed(text, outputs))
    for ex, output in zip(examples(text)[0], outputs):
        print(f"$ {ex.command}", *output, sep="\n")
