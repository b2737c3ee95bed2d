"""`gpt2hub` commands run as a user types them at a shell, and the store `gpt2hub demo --keep ~/demo` leaves for them
(conftest's `kept_demo`, shared by test_demo.py and test_readme_examples.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.checks import DEAD_PROXY

DEMO = "gpt2hub demo --keep ~/demo"  # README's command; its store is ~/demo/home
NO_NETWORK = "# on a machine with no network"  # a command ending so runs in a network namespace of its own


class Runner:
    """Runs commands with bash in `home` (HOME, and the current folder) with GPT2HUB_HOME=~/demo/home, the test's
    gpt2hub first on PATH and no other GPT2HUB_* setting; paths under `home` are printed as under `shown_as`."""

    def __init__(self, home: Path, shown_as: str):
        self.home, self.shown_as = home, shown_as
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GPT2HUB_", "TIKTOKEN_", "DATA_GYM_", "XDG_")) or k == "GPT2HUB_STRICT_TESTS"}
        env.update(HOME=str(home), GPT2HUB_HOME=str(home / "demo" / "home"), TMPDIR=str(home / "tmp"),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONUNBUFFERED="1",  # stdout and stderr interleaved as on a terminal
                   HTTPS_PROXY=DEAD_PROXY, https_proxy=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY, http_proxy=DEAD_PROXY,
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.env = env

    def __call__(self, command: str) -> list[str]:
        """The command's stdout and stderr lines together, `home` written as `shown_as` (and ~/tmp as /tmp)."""
        argv, env = ["bash", "-c", command], self.env
        if command.rstrip().endswith(NO_NETWORK):
            argv = ["unshare", "--net", "--map-root-user", *argv]
            env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
        r = subprocess.run(argv, cwd=self.home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
        return r.stdout.replace(str(self.home / "tmp"), "/tmp").replace(str(self.home), self.shown_as).splitlines()


@dataclass
class KeptDemo:
    run: Runner
    output: list[str]  # what `gpt2hub demo --keep ~/demo` printed
    files: list[str]  # every file under ~/demo/home right after it, relative to it (commands run later change it)


def kept_demo(home: Path, shown_as: str) -> KeptDemo:
    """Run `gpt2hub demo --keep ~/demo` in `home` and return its runner, output and the files it kept."""
    run = Runner(home, shown_as)
    output = run(DEMO)
    store = home / "demo" / "home"
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()) if store.is_dir() else []
    return KeptDemo(run, output, files)
