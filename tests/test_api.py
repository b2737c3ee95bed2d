"""The public API: result objects, one reporting hook, a CLI that uses nothing else, one vocabulary reader."""

from __future__ import annotations

import ast
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2hub
from gpt2hub import converters, registry, tokenizer, vocabulary
from gpt2hub.errors import CheckpointError
from gpt2hub.progress import ProgressEvent, TerminalProgress

API = ("pull", "convert", "verify", "sample", "sample_interactive", "mirror", "run_demo", "diagnose")
CLI_MAY_IMPORT = {"errors", "progress", "printing", "converters", "registry", "store"}  # data, errors, text: no operations


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    for var in ("GPT2HUB_SOURCE", "GPT2HUB_MANIFESTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no internet: only the folder source answers
    return tmp_path / "home"


@pytest.fixture
def manifest(tiny_release, tmp_path) -> Path:
    return registry.write_manifest(registry.create_manifest(tiny_release, "tiny"), tmp_path / "tiny.json")


class Recorder(list):
    """A reporter that keeps every event."""

    def __call__(self, event: ProgressEvent) -> None:
        self.append(event)

    def of(self, kind: str) -> list[ProgressEvent]:
        return [e for e in self if e.kind == kind]

    def advanced(self, task: str) -> int:
        return sum(e.done for e in self.of("advance") if e.task == task)


# --- the package --------------------------------------------------------------------------------------

def test_no_module_of_the_package_is_named_like_an_api_function():
    modules = {m.name for m in pkgutil.iter_modules(gpt2hub.__path__)}
    assert modules & set(gpt2hub.__all__) == set()


def test_api_functions_stay_functions_whatever_is_imported_after():
    code = ("import gpt2hub, importlib, pkgutil, types\n"
            "for m in pkgutil.iter_modules(gpt2hub.__path__):\n"
            "    importlib.import_module('gpt2hub.' + m.name)\n"
            f"print(all(isinstance(getattr(gpt2hub, f), types.FunctionType) for f in {API!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr


def test_every_api_function_documents_its_parameters():
    import inspect

    for name in API:
        fn = getattr(gpt2hub, name)
        doc = inspect.getdoc(fn) or ""
        assert doc and "Returns" in doc or name == "diagnose", name
        for p in inspect.signature(fn).parameters:
            assert p in doc or name == "sample_interactive", f"gpt2hub.{name}: {p} undocumented"


def test_the_cli_imports_no_operation_module():
    tree = ast.parse(Path(gpt2hub.__file__).with_name("cli.py").read_text(encoding="utf-8"))
    relative = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and n.module}
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "gpt2hub" and n.attr.startswith("_") and n.attr != "__version__"]
    assert relative <= CLI_MAY_IMPORT and private == []


# --- one reporting hook -------------------------------------------------------------------------------

def test_pull_reports_byte_tasks_whose_advances_add_up(tiny_release, manifest):
    events = Recorder()
    r = gpt2hub.pull("tiny", manifest=manifest, sources=[str(tiny_release.parent)], progress=events)
    begun = events.of("begin")
    assert begun[0].task == "total" and begun[0].parent is None
    assert {e.task for e in begun[1:]} == {f.name for f in r.files} and {e.parent for e in begun[1:]} == {"total"}
    for f in r.files:
        assert events.advanced(f.name) == f.size == (tiny_release / f.name).stat().st_size
    assert {e.task for e in events.of("end")} == {e.task for e in begun}
    assert r.path == gpt2hub.path("tiny", manifest=manifest) and r.to_dict()["files"]


def test_without_a_reporter_nothing_is_printed(tiny_release, manifest, capfd):
    gpt2hub.pull("tiny", manifest=manifest, sources=[str(tiny_release.parent)])
    again = gpt2hub.pull("tiny", manifest=manifest)
    assert again.already and capfd.readouterr() == ("", "")


def test_convert_reports_one_task_over_the_bytes_it_reads(tiny_release, tmp_path):
    events = Recorder()
    r = gpt2hub.convert(tiny_release, to=converters.DEFAULT, out=tmp_path / "out", progress=events)
    task = f"{converters.DEFAULT} {r.dtype}"
    assert [(e.kind, e.task) for e in events if e.kind != "advance"] == [("begin", task), ("end", task)]
    assert events.of("begin")[0].total == events.advanced(task) == r.bytes_read > 0
    assert r.path == tmp_path / "out" and r.path.exists()


def test_terminal_progress_off_a_terminal_prints_lines_and_output_but_no_bars(capsys):
    p = TerminalProgress()
    assert not p.bars  # pytest's stderr is not a terminal
    for e in (ProgressEvent.begin("total", 10), ProgressEvent.advance("total", 10), ProgressEvent.message("a line"),
              ProgressEvent.output("text"), ProgressEvent.end("total")):
        p(e)
    assert capsys.readouterr() == ("text", "a line\n")


def test_sample_streams_output_events_that_make_up_its_texts(tiny_release):
    pytest.importorskip("torch")
    events = Recorder()
    r = gpt2hub.sample(tiny_release, prompt="Hello", nsamples=2, length=6, seed=3, progress=events)
    streamed = "".join(e.text for e in events.of("output"))
    assert len(r.texts) == 2 and r.prompts == ["Hello", "Hello"]
    assert all(t in streamed for t in r.texts) and streamed.count(" SAMPLE ") == 2
    assert r.texts == gpt2hub.sample(tiny_release, prompt="Hello", nsamples=2, length=6, seed=3).texts


def test_sample_interactive_reads_prompts_until_end_of_input(tiny_release):
    pytest.importorskip("torch")
    prompts, events = iter(["Hello", " ", "World"]), Recorder()

    def read(prompt: str) -> str:
        assert prompt == "Model prompt >>> "
        try:
            return next(prompts)
        except StopIteration:
            raise EOFError from None

    r = gpt2hub.sample_interactive(tiny_release, read=read, length=4, seed=1, progress=events)
    assert r.prompts == ["Hello", "World"] and len(r.texts) == 2
    assert "Prompt should not be empty!\n" in [e.text for e in events.of("output")]


# --- one vocabulary reader ----------------------------------------------------------------------------

def _damage(folder: Path, how: str) -> None:
    enc, bpe = folder / "encoder.json", folder / "vocab.bpe"
    encoder = json.loads(enc.read_text(encoding="utf-8"))
    if how == "missing":
        enc.unlink()
    elif how == "not json":
        enc.write_text("{", encoding="utf-8")
    elif how == "not an object":
        enc.write_text("[1, 2]", encoding="utf-8")
    elif how == "id gap":
        del encoder[next(iter(encoder))]
        enc.write_text(json.dumps(encoder), encoding="utf-8")
    elif how == "no endoftext":
        del encoder[tokenizer.ENDOFTEXT]  # the last id: the rest stay 0..n-1
        enc.write_text(json.dumps(encoder), encoding="utf-8")
    elif how == "bad merge":
        bpe.write_text("#version: 0.2\na b c\n", encoding="utf-8")
    elif how == "not utf-8":
        bpe.write_bytes(b"#version: 0.2\n\xff\xfe\n")


@pytest.mark.parametrize("how, message", [
    ("missing", r"encoder\.json: no such file \(the tokenizer needs encoder\.json and vocab\.bpe\)"),
    ("not json", r"encoder\.json: not valid JSON"),
    ("not an object", r"encoder\.json: not a JSON object of token -> id"),
    ("id gap", r"encoder\.json: ids are not 0\.\.\d+ \(not a GPT-2 encoder\)"),
    ("no endoftext", r"encoder\.json: no <\|endoftext\|> token"),
    ("bad merge", r"vocab\.bpe: a merge line is not two symbols separated by a space"),
    ("not utf-8", r"vocab\.bpe: not UTF-8 text"),
])
def test_converters_and_tiktoken_read_the_vocabulary_with_the_same_one_line_errors(tiny_release, tmp_path, how, message):
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(tiny_release / name, tmp_path / name)
    _damage(tmp_path, how)
    errors = []
    for read in (vocabulary.Vocab.from_folder, tokenizer.mergeable_ranks):
        with pytest.raises(CheckpointError, match=message) as e:
            read(tmp_path)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "\n" not in errors[0]


def test_the_vocabulary_reader_agrees_with_tiktoken(tiny_release):
    vocab = vocabulary.Vocab.from_folder(tiny_release)
    ranks, eot = tokenizer.mergeable_ranks(tiny_release)
    assert eot == vocab.eot_id and len(ranks) + 1 == len(vocab.tokens)
    assert len(vocab.merges) == len(vocab.tokens) - 257  # every id past the bytes is one merge, then <|endoftext|>
