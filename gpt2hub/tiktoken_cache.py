"""tiktoken's `gpt2` encoding offline: a release's encoder.json and vocab.bpe put where tiktoken looks first.

tiktoken's `gpt2` encoding reads two URLs through `tiktoken.load.read_file_cached`, which first looks
for `<cache dir>/<sha1 of the URL>` and uses that file when its sha256 is the one expected. Every
GPT-2 release ships byte-identical files with exactly those sha256, so copying them there makes
`tiktoken.get_encoding("gpt2")` work with no network. The URLs and hashes are pinned below (GPT2_FILES);
tests/test_structure.py compares them with tiktoken's own `gpt2()` constructor.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, registry, settings, store
from .errors import TiktokenError, UnsafeDestination

FILES = {"encoder_json_file": "encoder.json", "vocab_bpe_file": "vocab.bpe"}  # gpt2()'s keyword -> release file
HASHES = {"encoder_json_file": "encoder_json_hash", "vocab_bpe_file": "vocab_bpe_hash"}
# release file -> (URL, sha256) as tiktoken_ext.openai_public.gpt2() passes them to data_gym_to_mergeable_bpe_ranks.
GPT2_FILES = {
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


@dataclass(frozen=True)
class CachedFile:
    name: str  # encoder.json or vocab.bpe
    url: str  # the URL tiktoken would fetch
    path: Path  # where tiktoken now finds it
    sha256: str
    already: bool  # the cache already held these exact bytes


@dataclass
class TiktokenReport:
    """What `gpt2hub tiktoken` put in tiktoken's cache."""

    source: Path
    cache_dir: Path
    files: list[CachedFile] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": str(self.source), "cache_dir": str(self.cache_dir),
                "files": [{**f.__dict__, "path": str(f.path)} for f in self.files]}


def gpt2_files() -> dict[str, tuple[str, str]]:
    """release file name -> (URL, sha256) as tiktoken's `gpt2()` asks for them (the pinned GPT2_FILES)."""
    return dict(GPT2_FILES)


def cache_dir(explicit: Path | str | None = None) -> Path:
    """The folder tiktoken reads: TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache."""
    if explicit is not None:
        return Path(explicit).expanduser()
    for var in settings.TIKTOKEN_CACHE_DIRS:
        value = settings.raw_value(var)
        if value is not None:
            if value == "":
                raise TiktokenError(f"{var} is empty, which turns tiktoken's cache off: nothing can be read offline")
            return Path(value).expanduser()
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def source_folder(target: str | os.PathLike | None) -> Path:
    """DIR (holding encoder.json and vocab.bpe, or DIR/original), NAME in the store, or any release pulled."""
    if target is not None and (Path(target).is_dir() or os.sep in str(target)):
        folder = Path(target).expanduser()
        if not folder.is_dir():
            raise TiktokenError(f"{folder}: no such folder")
        folder = folder / "original" if (folder / "original").is_dir() else folder
    elif target is not None:
        m = registry.resolve(str(target))
        folder = store.release_dir(m.name)
        if not all((folder / f).is_file() for f in FILES.values()):
            raise TiktokenError(f"{m.name}: its tokenizer files are not pulled; run: gpt2hub pull {m.name} --only tokenizer")
    else:
        found = [store.release_dir(m.name) for m in registry.releases()
                 if all((store.release_dir(m.name) / f).is_file() for f in FILES.values())]
        if not found:
            raise TiktokenError("no release with encoder.json and vocab.bpe pulled; run: gpt2hub pull 124M --only tokenizer")
        folder = found[0]  # every GPT-2 release ships the same two files; the hashes below make sure
    for name in FILES.values():
        if not (folder / name).is_file():
            raise TiktokenError(f"{folder / name}: no such file")
    return folder


def install(target: str | os.PathLike | None = None, cache: Path | str | None = None) -> TiktokenReport:
    """Copy a release's encoder.json and vocab.bpe into tiktoken's cache under the names it looks for."""
    folder = source_folder(target)
    expected = gpt2_files()
    data = {}
    for name, (url, sha256) in expected.items():
        data[name] = (folder / name).read_bytes()
        digest = hashlib.sha256(data[name]).hexdigest()
        if digest != sha256:
            raise TiktokenError(f"{folder / name}: sha256 {digest[:16]}… is not the {sha256[:16]}… tiktoken's gpt2 "
                                "expects (not OpenAI's file)")
    out = cache_dir(cache)
    report = TiktokenReport(folder, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, (url, sha256) in expected.items():
            path = out / hashlib.sha1(url.encode()).hexdigest()
            atomic.refuse_link(path)  # the shared cache: a link planted there is never read through or written
            already = path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
            if not already:
                atomic.write_bytes(path, data[name])  # whole or not at all, through a private temp file
            report.files.append(CachedFile(name, url, path, sha256, already))
    except UnsafeDestination as e:
        raise TiktokenError(f"{e} (in tiktoken's shared cache; remove it if you did not put it there)") from None
    except OSError as e:
        raise TiktokenError(f"{out}: cannot write tiktoken's cache ({e.strerror or e})") from None
    return report
