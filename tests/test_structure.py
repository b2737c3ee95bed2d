"""The package's shape (#20): one name per class, exceptions in errors.py, statuses in trust.py, settings in
settings.py, and tiktoken's pinned URLs and hashes as tiktoken itself has them. Read from the source (ast), so a
failure names the file and line."""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
from collections import defaultdict
from pathlib import Path

import pytest

from gpt2hub import tiktoken_cache

ROOT = Path(__file__).resolve().parents[1]
# The package as #20 measures it: gpt2hub/ and converters/ (installed as gpt2hub.converters), test support left out.
SOURCES = sorted(p for d in ("gpt2hub", "converters") for p in (ROOT / d).rglob("*.py") if "testing" not in p.parts)
STATUSES = {"published", "shared", "expected", "measured", "mirror"}  # trust.HashStatus's values
# Modules that may touch os.environ besides settings.py, and why: none. Another program's variable is read with
# settings.library / settings.raw_value and set with settings.overridden / settings.set_default.
ENVIRON_ALLOWED: dict[str, str] = {}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in SOURCES}


def test_the_scan_covers_the_package():
    names = {_rel(p) for p in SOURCES}
    assert {"gpt2hub/trust.py", "gpt2hub/settings.py", "gpt2hub/errors.py", "converters/__init__.py"} <= names


def test_no_two_classes_share_a_name():
    where = defaultdict(list)
    for path, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(f"{_rel(path)}:{node.lineno}")
    assert {name: places for name, places in where.items() if len(places) > 1} == {}


def _exception_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Every class name in the package that derives from an exception (a builtin one, one named *Error or
    *Exception, or one of the package's own), through any number of the package's classes."""
    bases = {node.name: [ast.unparse(b).split(".")[-1] for b in node.bases]
             for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    found |= {p for parents in bases.values() for p in parents if p.endswith(("Error", "Exception"))}
    while more := {name for name, parents in bases.items() if name not in found and any(p in found for p in parents)}:
        found |= more
    return found


def test_every_public_exception_lives_in_errors_py():
    trees = _trees()
    exceptions = _exception_names(trees)
    outside = [f"{_rel(path)}:{node.lineno} {node.name}" for path, tree in trees.items()
               if _rel(path) != "gpt2hub/errors.py" for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef) and node.name in exceptions and not node.name.startswith("_")]
    assert outside == []


def test_every_exception_in_errors_py_is_a_gpt2hub_error():
    import inspect

    from gpt2hub import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert [c.__name__ for c in classes if issubclass(c, BaseException) and not issubclass(c, errors.Gpt2hubError)] == []


def _is_all(node: ast.AST) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def test_status_strings_appear_only_in_trust_py():
    found = []
    for path, tree in _trees().items():
        if _rel(path) == "gpt2hub/trust.py":
            continue
        exported = {id(c) for node in ast.walk(tree) if _is_all(node) for c in ast.walk(node)}  # "mirror" the function
        found += [f"{_rel(path)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in STATUSES and id(node) not in exported]
    assert found == []


def test_os_environ_is_touched_only_in_settings_py():
    pattern = re.compile(r"\bos\.(environ|getenv|putenv|unsetenv)\b|\bfrom os import\b.*\b(environ|getenv)\b")
    found = [f"{_rel(path)}:{i} {line.strip()}" for path in SOURCES if _rel(path) != "gpt2hub/settings.py"
             and _rel(path) not in ENVIRON_ALLOWED
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []


def _tiktoken_gpt2_arguments() -> dict[str, str]:
    """The keyword arguments tiktoken_ext.openai_public's gpt2() passes to its loader, read from its source."""
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    if spec is None or spec.origin is None:
        pytest.skip("tiktoken is not installed")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    gpt2 = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "gpt2")
    calls = [n for n in ast.walk(gpt2)
             if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("data_gym_to_mergeable_bpe_ranks")]
    assert len(calls) == 1, "tiktoken's gpt2() no longer loads its files through data_gym_to_mergeable_bpe_ranks"
    return {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}


def test_pinned_tiktoken_files_are_tiktokens_own():
    asked = _tiktoken_gpt2_arguments()
    from_tiktoken = {name: (asked[url], asked[tiktoken_cache.HASHES[url]]) for url, name in tiktoken_cache.FILES.items()}
    assert tiktoken_cache.GPT2_FILES == from_tiktoken
    assert tiktoken_cache.gpt2_files() == from_tiktoken

