"""The format registry: every module in converters/ declares one whole Format, and everything else asks it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from dataclasses import fields
from pathlib import Path

import pytest

from gpt2hub import converters, store
from gpt2hub.cli import main
from gpt2hub.casts import CASTS
from gpt2hub.converters import Format
from gpt2hub.errors import ConversionError

FORMATS = converters.formats()
PACKAGE = Path(__file__).resolve().parents[1] / "gpt2hub"
HELPER_MODULES = {"hf"}  # shared tables and readers, not a format of their own


def test_every_module_but_the_helpers_declares_a_format_named_after_it():
    modules = {m.name for m in pkgutil.iter_modules(converters.__path__)}
    declared = {m for m in modules if isinstance(getattr(importlib.import_module(f"gpt2hub.converters.{m}"), "FORMAT", None), Format)}
    assert declared == modules - HELPER_MODULES
    assert set(converters.names()) == declared


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_a_format_declares_every_field(fmt: Format):
    from gpt2hub.verifying import CONSUMER_MODULES

    assert fmt.name and fmt.name != "original" and fmt.name.isidentifier()
    from gpt2hub.converters.gguf import DTYPES as GGUF_TYPES, LLAMA_MIXES

    assert fmt.default_dtype in fmt.dtypes and set(fmt.dtypes) <= set(CASTS) | set(GGUF_TYPES) | set(LLAMA_MIXES)
    assert set(fmt.demo_dtypes) <= set(fmt.dtypes) and fmt.demo_dtypes
    for f in fields(Format):
        if f.name not in ("file_suffix", "tokenizer", "requires", "extra", "hub_prefix", "side_files", "proof_reads"):
            assert getattr(fmt, f.name) not in (None, "", ()), f.name
    for fn in (fmt.write, fmt.is_output, fmt.read_weights, fmt.read_dtype, fmt.read_stored):  # read_stored: verify's exact proof
        assert callable(fn)
    assert fmt.consumer in CONSUMER_MODULES  # verify knows how to run it
    assert fmt.file_suffix is None or fmt.file_suffix.startswith(".")
    assert (fmt.requires is None) == (fmt.extra is None)
    if fmt.tokenizer is not None:
        assert fmt.tokenizer.name and fmt.tokenizer.requires and callable(fmt.tokenizer.file) and callable(fmt.tokenizer.ids)
    assert fmt.hub_prefix == "" or fmt.hub_prefix.endswith("/")


def test_names_and_ranks_are_unique():
    assert len({f.name for f in FORMATS}) == len({f.rank for f in FORMATS}) == len(FORMATS)
    assert [f.rank for f in FORMATS] == sorted(f.rank for f in FORMATS)
    assert converters.DEFAULT in converters.names()


def test_cli_store_mirror_card_and_demo_take_their_formats_from_the_registry():
    mirror = importlib.import_module("gpt2hub.mirror_plan")
    modelcard = importlib.import_module("gpt2hub.modelcard")
    demo = importlib.import_module("gpt2hub.demo")
    params = {p.name: p for p in main.commands["convert"].params}
    assert tuple(params["fmt"].type.choices) == converters.names()
    assert tuple(params["dtype"].type.choices) == converters.dtypes() == tuple(dict.fromkeys(d for f in FORMATS for d in f.dtypes))
    assert store.FORMATS == ("original", *converters.names())
    assert set(mirror.HUB_PREFIX) == set(modelcard.FORMAT_TAGS) == set(store.FORMATS)
    assert {fmt for fmt, _, _ in demo.CONVERSIONS} == set(converters.names())


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_outputs_are_found_where_they_are_named(fmt: Format, tmp_path):
    for dtype in fmt.dtypes:
        store_output = fmt.output_in(tmp_path / "home" / "r" / fmt.name, "r", dtype)
        beside = fmt.output_beside(tmp_path / "DIR", dtype)
        for path in (store_output, beside):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(exist_ok=True) if fmt.writes_folder else path.touch()
        assert store_output in fmt.outputs_in(tmp_path / "home" / "r" / fmt.name)
        assert beside in fmt.outputs_beside(tmp_path / "DIR")
        assert beside.name.startswith("DIR-")


def test_unknown_format_is_a_one_line_error():
    with pytest.raises(ConversionError, match=r"^unknown format 'onyx'; formats: safetensors, pytorch, gguf"):
        converters.get("onyx")


def test_a_new_module_is_a_new_format(tmp_path, monkeypatch):
    (tmp_path / "scratch.py").write_text(
        "from gpt2hub.converters import Format\n"
        "FORMAT = Format(name='scratch', rank=99, dtypes=('f32',), default_dtype='f32', write=print, consumer='gpt2hub',\n"
        "                is_output=bool, read_weights=print, read_dtype=str, looks_like='a .scratch file', file_suffix='.scratch')\n")
    monkeypatch.setattr(converters, "__path__", [*converters.__path__, str(tmp_path)])
    converters._registry.cache_clear()
    try:
        assert converters.names()[-1] == "scratch"
        assert converters.get("scratch").file_name("124M", "f32") == "124M-f32.scratch"
    finally:
        monkeypatch.undo()
        converters._registry.cache_clear()
    assert "scratch" not in converters.names()


# The places a format's name is also something else's, not a branch on the format: "tf" is the pip extra
# gpt2hub[tf] (doctor.py) and the source kind of OpenAI's layout (tfcheckpoint.KIND).
OTHER_MEANINGS = {("doctor.py", "tf"), ("tfcheckpoint.py", "tf")}


def test_no_format_name_is_spelled_out_in_gpt2hub():
    """Format names live in converters/ only: a string equal to one anywhere else is a branch on it."""
    found = []
    for path in sorted(p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts):
        module = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in converters.names() and (module, node.value) not in OTHER_MEANINGS:
                found.append(f"{module}:{node.lineno}: {node.value!r}")
    assert not found, found
