"""An attacker's mirror on loopback: a gpt2hub mirror layout whose manifests and bodies are hostile.

    with HostileMirror(tmp_path / "mirror") as evil:
        evil.publish("foo", hostile_manifest(base, "escape-dotdot"))   # <url>/foo/gpt2hub-manifest.json
        evil.release("foo", tiny_release)                               # <url>/foo/<file>, the real bytes
        ... gpt2hub pull foo --source evil.url ...

It is a tests.httpserver.FaultyServer (real HTTP, Range, faults such as `drip`), serving a folder the
attacker controls. `HOSTILE` names every manifest attack the trust tests play; `key_bomb_index` builds a
small .index whose prefix-compressed keys expand far beyond its size.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
from pathlib import Path

from gpt2hub.registry import MIRROR_MANIFEST
from gpt2hub.sstable import NO_COMPRESSION, TABLE_MAGIC, _BlockBuilder, crc32c, mask_crc, put_varint as _put_varint
from gpt2hub.tfbundle import encode_header
from tests.httpserver import FaultyServer

# Each attack: how it changes a valid manifest (a dict), or the raw body it serves instead.
HOSTILE = {
    # 1. a mirror's names used as paths
    "escape-dotdot": lambda d: d["files"][0].update(name="../../../victim.txt"),
    "escape-absolute": lambda d: d["files"][0].update(name="/tmp/gpt2hub-victim.txt"),
    "adopt-outside": lambda d: d["files"].append({"name": "../../../secret.txt", "size": None, "sha256": None,
                                                  "status": "expected"}),
    "folder-escape": lambda d: d.update(folders=["../../etc"]),
    "own-suffix": lambda d: d["files"][0].update(name="model.ckpt.index.part"),
    "nul-name": lambda d: d["files"][0].update(name="encoder\0.json"),
    # 2. a mirror's manifest claiming a shipped release's names
    "shadow-shipped": lambda d: d.update(name="124M", aliases=["foo"], folders=["foo"]),
    "alias-shadow": lambda d: d.update(name="foo", aliases=["124M", "gpt2"]),
    # 7. shapes a parser chokes on
    "non-list-shape": lambda d: d["tensors"][0].update(shape=7),
    "huge-hparams": lambda d: d["hparams"].update(n_layer=100_000_000),
    "terminal-escape": lambda d: d.update(description="\x1b]0;pwned\x07\x1b[2J"),
}


def hostile_manifest(base: dict, attack: str) -> dict:
    """`base` (a valid manifest) with one attack applied."""
    data = copy.deepcopy(base)
    HOSTILE[attack](data)
    return data


def deep_json(depth: int = 100_000) -> bytes:
    """A manifest body nested `depth` lists deep: json.loads recurses once per level."""
    return b'{"name": "foo", "x": ' + b"[" * depth + b"]" * depth + b"}"


class HostileMirror:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.server = FaultyServer(self.root)
        self.url = self.server.url

    def __enter__(self) -> "HostileMirror":
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def publish(self, name: str, manifest: dict | bytes) -> Path:
        """Serve `manifest` (a dict, or raw bytes) as <url>/<name>/gpt2hub-manifest.json."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        (folder / MIRROR_MANIFEST).write_bytes(body)
        return folder / MIRROR_MANIFEST

    def release(self, name: str, files: Path) -> Path:
        """Serve the files of a release folder under <url>/<name>/."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        for p in Path(files).iterdir():
            if p.is_file():
                shutil.copyfile(p, folder / p.name)
        return folder

    def requested(self) -> list[str]:
        return [s.path for s in self.server.log]


def key_bomb_index(n_keys: int = 10_000, key_len: int = 4000) -> bytes:
    """A valid-looking bundle index of n_keys keys of key_len bytes, each sharing all but 4 bytes with the
    last: ~11 bytes of file per key, so 10,000 x 4000-byte names (40 MB of names) fit in ~80 KB."""
    block = _BlockBuilder(restart_interval=1 << 30)
    block.add(b"", encode_header(1))
    stem = b"m" * (key_len - 8)
    for i in range(n_keys):
        block.add(stem + b"%08d" % i, b"")
    out = bytearray()

    def write(raw: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(raw))
        out.extend(raw + bytes([NO_COMPRESSION]) + struct.pack("<I", mask_crc(crc32c(b"\0", crc32c(raw)))))
        return handle

    data_handle = write(block.finish())
    index = _BlockBuilder(1)
    index.add(stem + b"\xff" * 8, data_handle)
    meta_handle = write(_BlockBuilder(16).finish())
    index_handle = write(index.finish())
    return bytes(out + (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC))
