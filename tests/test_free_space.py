"""Space checked before writing (convert, pull --to) and a full disk named in one line, on real small filesystems:
a tmpfs of a chosen size (or number of inodes) mounted in a mount namespace of the test's own (`unshare`), so the
kernel's own statvfs and ENOSPC are what gpt2hub meets, and the mount is gone when the command ends."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2hub import registry
from gpt2hub.conversion import output_bytes
from gpt2hub.layout import HParams
from gpt2hub.testing.trained import build_demo_release
from tests.checks import DEAD_PROXY
from tests.httpserver import Faults, FaultyServer

NAME = "gpt2hub-demo"
DATA = "model.ckpt.data-00000-of-00001"
LEFT = "left in the mount:"


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="unshare cannot make a mount namespace here "
                                "(no user namespaces): no small filesystem to fill")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    """(the demo's release folder served/gpt2hub-demo, its manifest): 143,936 float32 parameters, 575,744 bytes."""
    root = tmp_path_factory.mktemp("free-space")
    folder = build_demo_release(root / "served" / NAME)
    manifest = registry.write_manifest(registry.create_manifest(folder, NAME), root / f"{NAME}.json")
    return folder, manifest


def in_small_fs(tmp_path: Path, options: str, *commands: list[str], before: str = "") -> tuple[list[str], list[str]]:
    """Run each `gpt2hub` command (its arguments; "MNT" stands for the mount) with a tmpfs mounted with `options` at
    MNT, in a mount namespace of its own; return (every command's stderr lines, what was left in the mount)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    gpt2hub = [sys.executable, "-m", "gpt2hub.cli"]
    runs = "; ".join(shlex.join(gpt2hub + [str(mnt) + a[3:] if a.startswith("MNT") else a for a in args])
                     for args in commands)
    script = f'mount -t tmpfs -o {options} tmpfs "$0" || exit 99; {before} {runs}; echo "{LEFT}" $(ls -A "$0")'
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPT2HUB_") or k == "GPT2HUB_STRICT_TESTS"}
    env.update(GPT2HUB_HOME=str(tmp_path / "home"), HTTPS_PROXY=DEAD_PROXY, https_proxy=DEAD_PROXY,
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, str(mnt)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 99, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    left = r.stdout.split(LEFT, 1)[1].split()
    return r.stderr.splitlines(), left


def test_convert_refuses_an_output_larger_than_the_free_space_before_writing(release, tmp_path):
    folder, _ = release
    errors, left = in_small_fs(tmp_path, "size=256k", ["convert", str(folder), "--to", "safetensors", "--out", "MNT/st"])
    need = 4 * HParams.from_file(folder / "hparams.json").parameters
    assert need == output_bytes(need, "f32") == 575_744
    assert errors == [f"gpt2hub: error: {tmp_path}/small/st: not enough free space for safetensors f32: needs at least "
                      f"575.7 KB (575,744 bytes), 262.1 KB (262,144 bytes) free"]
    assert left == []


def test_the_check_counts_the_dtype_an_output_is_written_in(release, tmp_path):
    """256 KiB holds the weights as q8_0 (152,932 bytes at least) but not as f16 (287,872)."""
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("needs gguf (pip install 'gpt2hub[gguf]')")
    folder, _ = release
    errors, left = in_small_fs(tmp_path, "size=256k",
                               ["convert", str(folder), "--to", "gguf", "--dtype", "f16", "--out", "MNT/"],
                               ["convert", str(folder), "--to", "gguf", "--dtype", "q8_0", "--out", "MNT/", "--quiet"])
    assert output_bytes(575_744, "f16") == 287_872 and output_bytes(575_744, "q8_0") == 152_932
    assert errors == [f"gpt2hub: error: {tmp_path}/small/{NAME}-f16.gguf: not enough free space for gguf f16: needs at "
                      f"least 287.9 KB (287,872 bytes), 262.1 KB (262,144 bytes) free"]
    assert left == [f"{NAME}-q8_0.gguf"]


def test_a_disk_filling_up_while_converting_is_one_line_naming_the_output_and_nothing_is_left(release, tmp_path):
    """600 KiB passes the check (the weights alone fit) but not the whole folder: the kernel says ENOSPC mid-write."""
    folder, _ = release
    errors, left = in_small_fs(tmp_path, "size=600k", ["convert", str(folder), "--to", "safetensors", "--out", "MNT/st"])
    assert errors == [f"gpt2hub: error: {tmp_path}/small/st: no space left on the device (No space left on device) "
                      "while writing safetensors f32; nothing was left behind"]
    assert left == []


def test_no_inode_left_while_converting_is_the_same_one_line(release, tmp_path):
    folder, _ = release
    errors, left = in_small_fs(tmp_path, "size=16m,nr_inodes=4",
                               ["convert", str(folder), "--to", "safetensors", "--out", "MNT/st"])
    assert len(errors) == 1 and errors[0].startswith(f"gpt2hub: error: {tmp_path}/small/st: no space left on the device")
    assert left == []


def test_pull_to_a_folder_without_room_refuses_before_fetching(release, tmp_path):
    folder, manifest = release
    errors, left = in_small_fs(tmp_path, "size=16m",
                               ["pull", NAME, "--manifest", str(manifest), "--source", str(folder.parent), "--to", "MNT/p"])
    assert errors == [f"gpt2hub: error: {tmp_path}/small/p: not enough free space for {NAME}: needs 67.7 MB "
                      "(586.0 KB to download + 67.1 MB to spare), 16.8 MB free"]
    assert left == ["p"]  # the folder asked for, holding only the pull's lock


@pytest.mark.parametrize("inodes", [3, 5])
def test_no_inode_left_while_pulling_names_the_file(release, tmp_path, inodes):
    folder, manifest = release
    errors, _ = in_small_fs(tmp_path, f"size=80m,nr_inodes={inodes}",
                            ["pull", NAME, "--manifest", str(manifest), "--source", str(folder.parent), "--to", "MNT/p"])
    assert len(errors) == 1 and errors[0].startswith(f"gpt2hub: error: {tmp_path}/small/p/"), errors
    assert "No space left on device" in errors[0]


def test_a_disk_filled_by_another_program_during_a_pull_is_one_line_naming_the_part_file(release, tmp_path):
    """The check passes (70 MiB free); then another program takes every free byte while the data file trickles in."""
    folder, manifest = release
    with FaultyServer(folder.parent) as srv:
        srv.faults = Faults(only=DATA, rate=100_000)  # ~6 s for the data file
        errors, _ = in_small_fs(tmp_path, "size=70m",
                                ["pull", NAME, "--manifest", str(manifest), "--source", srv.url, "--to", "MNT/p"],
                                before='(sleep 1.5; cat /dev/zero > "$0/filler" 2>/dev/null) &')
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"gpt2hub: error: {tmp_path}/small/p/{DATA}.part: "), errors[0]
    assert "disk full" in errors[0] or "No space left on device" in errors[0], errors[0]
