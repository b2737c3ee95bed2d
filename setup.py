"""Build hook only (the project is configured in pyproject.toml): ship the repo-root model_card.md in the wheel.

model_card.md stays at the repository root, where people read it; `gpt2hub mirror` renders it into Hub
READMEs, so build_py copies it into the built package as gpt2hub/model_card.md.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"model_card.md": "gpt2hub/model_card.md"}  # repo-root file -> place in the wheel


class BuildPyWithCard(build_py):
    def run(self) -> None:
        super().run()
        for src, dest in SHIPPED.items():
            target = Path(self.build_lib) / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(ROOT / src), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / d) for d in SHIPPED.values()]


setup(cmdclass={"build_py": BuildPyWithCard})
