"""`gpt2hub pull` against real servers on loopback: an HTTP server with injected faults, SeaweedFS S3, a folder."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gpt2hub
from gpt2hub import crc_repair, registry, store
from gpt2hub.errors import DownloadError
from gpt2hub.integrity import Check
from gpt2hub.pulling import pull
from gpt2hub.ranges import MAX_RANGE, MIN_RANGE, plan_ranges, record_path
from gpt2hub.remote import CHUNK
from gpt2hub.retry import RetryPolicy
from gpt2hub.tfcheckpoint import read_index
from tests.httpserver import Faults, FaultyServer

DATA = "model.ckpt.data-00000-of-00001"
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)
SPAN = 1 << 20
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens on the discard port: every https request fails at once


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A fresh GPT2HUB_HOME, and no internet: https goes to a dead proxy, so OpenAI and the mirrors fail fast."""
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    for var in ("GPT2HUB_SOURCE", "GPT2HUB_MANIFESTS", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", DEAD_PROXY)
    monkeypatch.setenv("https_proxy", DEAD_PROXY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def mirror_root(tiny_release, tmp_path_factory) -> Path:
    """A folder in OpenAI's layout holding the tiny release as `tiny/`."""
    root = tmp_path_factory.mktemp("mirror")
    shutil.copytree(tiny_release, root / "tiny")
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_release, tmp_path_factory) -> Path:
    """A manifest of the tiny release (sizes and sha256 measured from its files)."""
    m = registry.create_manifest(tiny_release, "tiny")
    return registry.write_manifest(m, tmp_path_factory.mktemp("manifests") / "tiny.json")


@pytest.fixture
def server(mirror_root):
    with FaultyServer(mirror_root) as srv:
        yield srv


def _manifest_variant(tiny_manifest: Path, tmp_path: Path, name: str = "tiny", **changes) -> Path:
    """The tiny manifest with some fields changed; `files` maps a file name to the fields to change."""
    data = json.loads(tiny_manifest.read_text())
    data["name"] = name
    for f in data["files"]:
        f.update(changes.get("files", {}).get(f["name"], {}))
    for k, v in changes.items():
        if k != "files":
            data[k] = v
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _pull(server, manifest, **kw):
    kw.setdefault("sources", [server.url])
    kw.setdefault("retry", FAST)
    kw.setdefault("span", SPAN)
    return pull("tiny", manifest=manifest, **kw)


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    return names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _tensor(release: Path, name: str):
    return read_index(release / "model.ckpt.index")[1][name]


def _run_cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2hub.cli", *args], capture_output=True, text=True, timeout=120, **kw)


# --- the normal path ------------------------------------------------------------------------------

def test_pull_fetches_every_file_and_records_them_verified(server, tiny_manifest, tiny_release):
    r = _pull(server, tiny_manifest)
    assert r.path == store.release_dir("tiny") and _same_files(r.path, tiny_release)
    record = store.read_verified("tiny")
    assert set(record.files) == set(registry.OPENAI_FILES)
    assert record.files[DATA].sha256 == registry.sha256_file(tiny_release / DATA)
    assert record.verified and {f.check for f in record.files.values()} == {Check.MEASURED_SHA256}  # a measured manifest
    assert store.original_state("tiny") == "verified"
    assert not list(r.path.glob("*.part*"))


def test_data_file_is_fetched_as_parallel_byte_ranges(server, tiny_manifest, tiny_release):
    _pull(server, tiny_manifest, connections=4)
    spans = sorted(server.served(DATA))
    size = (tiny_release / DATA).stat().st_size
    assert len(spans) == -(-size // SPAN) and all(end - start <= SPAN for start, end, _ in spans)
    assert sum(sent for *_, sent in spans) == size


def test_an_idle_connection_takes_half_of_a_slow_range(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, rate=4e6)
    span = 4 << 20  # three 4 MiB ranges and a short one: the short one's connection goes idle first
    r = _pull(server, tiny_manifest, connections=4, span=span)
    assert _same_files(r.path, tiny_release)
    assert [start for start, _, _ in server.served(DATA) if start % span]  # a range split while it ran


def test_api_returns_the_original_folder(server, tiny_manifest):
    path = gpt2hub.pull("tiny", manifest=tiny_manifest, sources=[server.url]).path
    assert path == store.release_dir("tiny", "original") and (path / DATA).is_file()


def test_pulling_a_verified_release_again_fetches_nothing(server, tiny_manifest):
    _pull(server, tiny_manifest)
    before = len(server.log)
    r = _pull(server, tiny_manifest)
    assert r.already and len(server.log) == before


def test_verify_rehashes_and_refetches_a_damaged_file(server, tiny_manifest, tiny_release):
    r = _pull(server, tiny_manifest)
    damaged = r.path / "vocab.bpe"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 1
    damaged.write_bytes(bytes(data))  # same size: only a hash can tell
    assert _pull(server, tiny_manifest).already
    r = _pull(server, tiny_manifest, verify=True)
    assert not r.already and (r.path / "vocab.bpe").read_bytes() == (tiny_release / "vocab.bpe").read_bytes()


def test_verify_catches_damage_to_a_file_with_no_published_sha256(server, tiny_manifest, tiny_release, tmp_path):
    manifest = _manifest_variant(tiny_manifest, tmp_path, files={"encoder.json": {"sha256": None, "status": "expected"}})
    r = _pull(server, manifest)
    damaged = r.path / "encoder.json"
    damaged.write_bytes(damaged.read_bytes().replace(b"the", b"teh", 1))
    r = _pull(server, manifest, verify=True)  # only the sha256 seen at the first pull can tell
    assert (r.path / "encoder.json").read_bytes() == (tiny_release / "encoder.json").read_bytes()


def test_json_summary_lists_files_bytes_sources_and_hashes(server, tiny_manifest, tiny_release):
    p = _run_cli("pull", "tiny", "--manifest", str(tiny_manifest), "--source", server.url, "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["sources"] == [server.url]
    assert summary["bytes"] == sum(f.stat().st_size for f in tiny_release.iterdir())
    assert {f["name"]: f["sha256"] for f in summary["files"]} == {
        f.name: registry.sha256_file(f) for f in tiny_release.iterdir()}
    assert summary["seconds"] > 0


# --- faults ------------------------------------------------------------------------------------------

def test_connection_cut_mid_body_resumes_within_the_range(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, cut_after=300_000, cut_times=3)
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    size = (tiny_release / DATA).stat().st_size
    assert sum(1 for _, _, sent in server.served(DATA) if sent == 300_000) == 3
    # Each cut range went on from the bytes it had (not from its start): at most a read's worth is lost.
    assert sum(1 for start, _, _ in server.served(DATA) if start % SPAN) == 3
    assert server.bytes_served(DATA) < size + 3 * CHUNK


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(server, tiny_manifest, tiny_release, status):
    server.faults = Faults(only=DATA, status=status, status_times=3)
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    assert sum(1 for s in server.log if s.status == status) == 3


def test_429_waits_as_long_as_retry_after_says(server, tiny_manifest, tiny_release):
    server.faults = Faults(only="vocab.bpe", status=429, status_times=1, retry_after="1")
    t0 = time.monotonic()
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    assert time.monotonic() - t0 >= 1.0  # FAST's own backoff is 10-50 ms: only Retry-After explains a second


def test_corrupt_byte_is_found_by_crc32c_and_only_its_tensor_refetched(server, tiny_manifest, tiny_release):
    e = _tensor(tiny_release, "model/h1/mlp/c_fc/w")
    server.faults = Faults(only=DATA, corrupt_at=e.offset + 1000)
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    size = (tiny_release / DATA).stat().st_size
    assert server.bytes_served(DATA) == size + e.size
    assert (e.offset, e.offset + e.size, e.size) in server.served(DATA)


def test_persistent_corruption_fails_and_keeps_the_good_bytes(server, tiny_manifest, tiny_release):
    e = _tensor(tiny_release, "model/wte")
    server.faults = Faults(only=DATA, corrupt_at=e.offset + 5, corrupt_times=100)
    with pytest.raises(DownloadError, match="CRC32C"):
        _pull(server, tiny_manifest)
    dest = store.release_dir("tiny")
    assert not (dest / DATA).exists() and (dest / (DATA + ".part")).is_file()
    server.faults = Faults()
    served = server.bytes_served(DATA)
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    assert server.bytes_served(DATA) - served == e.size  # only the bad tensor came again


def test_server_ignoring_range_is_read_as_one_stream(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, ignore_range=True)
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    whole = [s for s in server.log if s.file == DATA and s.status == 200 and s.sent == s.end]
    assert whole and whole[-1].sent == (tiny_release / DATA).stat().st_size


def test_a_cut_single_stream_is_read_again_without_rewriting_what_it_wrote(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, ignore_range=True, cut_after=300_000, cut_times=2)
    events = []
    r = _pull(server, tiny_manifest, connections=1, progress=events.append)  # one ranged GET, then the stream
    assert _same_files(r.path, tiny_release) and all(f.verified for f in r.files)
    size = (tiny_release / DATA).stat().st_size
    assert [s.sent for s in server.log if s.file == DATA and s.status == 200][-2:] == [300_000, size]
    assert sum(e.done for e in events if e.kind == "advance" and e.task == DATA) == size  # each byte written once


def test_tensor_crcs_are_computed_while_downloading_not_read_back(server, tiny_manifest, tiny_release, monkeypatch):
    calls = []
    monkeypatch.setattr(crc_repair, "range_crc32c", lambda *a, **k: calls.append(a) or 0)
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release) and all(f.verified for f in r.files) and not calls


def test_default_ranges_tile_the_gaps_in_order_and_shrink_toward_the_end():
    gaps = [(0, 100 << 20), (300 << 20, 700 << 20)]
    ranges = plan_ranges(gaps, 8)
    assert [r for r in ranges if r[0] < 100 << 20][-1][1] == 100 << 20 and ranges[-1][1] == 700 << 20
    assert sum(b - a for a, b in ranges) == 500 << 20 and ranges == sorted(ranges)
    sizes = [b - a for a, b in ranges]
    assert sizes[0] > 8 * MIN_RANGE and all(0 < n <= MAX_RANGE for n in sizes)
    assert sizes[-8:-1] == [MIN_RANGE] * 7  # the connections' last ranges: short, so they end together
    assert plan_ranges([(0, 5 << 20)], 8) == [(0, 1 << 20), (1 << 20, 2 << 20), (2 << 20, 3 << 20),
                                              (3 << 20, 4 << 20), (4 << 20, 5 << 20)]
    assert plan_ranges(gaps, 8, span=SPAN) == [(a, a + SPAN) for g0, b in gaps for a in range(g0, b, SPAN)]


@pytest.mark.parametrize("status", [200, 404])
def test_xml_error_page_is_never_saved(server, tiny_manifest, status):
    server.faults = Faults(xml_error=status)
    with pytest.raises(DownloadError, match="not found" if status == 404 else "application/xml"):
        _pull(server, tiny_manifest)
    dest = store.release_dir("tiny")
    assert not [p for p in dest.iterdir() if not p.name.endswith(".json")]  # nothing saved, not even a .part


def test_rate_capped_connections_share_the_file(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, rate=8e6)
    r = _pull(server, tiny_manifest, connections=4)
    assert _same_files(r.path, tiny_release)
    assert len(server.served(DATA)) > 4


def test_unreachable_first_source_falls_over_to_the_next(server, tiny_manifest, tiny_release):
    r = _pull(server, tiny_manifest, sources=["http://127.0.0.1:9/nothing", server.url])
    assert _same_files(r.path, tiny_release) and r.sources == [server.url]


def test_legacy_folder_name_is_tried_after_the_current_one(tiny_manifest, tiny_release, tmp_path):
    root = tmp_path / "mirror"
    shutil.copytree(tiny_release, root / "117M")
    manifest = _manifest_variant(tiny_manifest, tmp_path, name="tiny124", folders=["tiny124", "117M"])
    with FaultyServer(root) as srv:
        r = pull("tiny124", manifest=manifest, sources=[srv.url], retry=FAST)
    assert _same_files(r.path, tiny_release)
    assert any(s.status == 404 for s in srv.log)


# --- integrity rules ----------------------------------------------------------------------------------

def test_fake_124m_against_the_real_manifest_fails_with_nothing_at_the_final_path(tiny_release, tmp_path):
    root = tmp_path / "mirror"
    shutil.copytree(tiny_release, root / "124M")
    with FaultyServer(root) as srv:
        p = _run_cli("pull", "124M", "--source", srv.url, "--quiet")
    assert p.returncode == 1 and p.stderr.startswith("gpt2hub: error: 124M:") and len(p.stderr.splitlines()) == 1
    assert "the manifest says" in p.stderr
    dest = store.release_dir("124M")
    assert not [f for f in registry.OPENAI_FILES if (dest / f).exists()]
    assert store.read_verified("124M") is None


def test_published_sha256_mismatch_is_refused(server, tiny_manifest, tmp_path):
    manifest = _manifest_variant(tiny_manifest, tmp_path, files={DATA: {"sha256": "0" * 64, "status": "published"}})
    with pytest.raises(DownloadError, match="sha256"):
        _pull(server, manifest)
    assert not (store.release_dir("tiny") / DATA).exists()


def test_expected_sha256_mismatch_warns_and_rests_on_the_crcs(server, tiny_manifest, tiny_release, tmp_path):
    manifest = _manifest_variant(tiny_manifest, tmp_path, files={DATA: {"sha256": "0" * 64, "status": "expected"}})
    r = _pull(server, manifest)
    data = next(f for f in r.files if f.name == DATA)
    assert data.check == Check.ORIGIN_CRC32C and "verified index" in data.against  # the index matched its sha256
    assert data.sha256 == registry.sha256_file(tiny_release / DATA)
    assert any("differs from the expected" in w for w in r.warnings)


def test_without_a_published_sha256_the_seen_one_is_recorded(server, tiny_manifest, tiny_release, tmp_path):
    manifest = _manifest_variant(tiny_manifest, tmp_path,
                                 files={DATA: {"sha256": None, "size": None, "status": "expected"}})
    _pull(server, manifest)
    info = store.read_verified("tiny").files[DATA]
    assert (info.sha256, info.check) == (registry.sha256_file(tiny_release / DATA), Check.ORIGIN_CRC32C)


def test_not_enough_free_space_fails_before_downloading(server, tiny_manifest, tmp_path):
    manifest = _manifest_variant(tiny_manifest, tmp_path, files={DATA: {"size": 10**18, "status": "expected"}})
    with pytest.raises(DownloadError, match="not enough free space"):
        _pull(server, manifest)
    assert server.log == []


# --- interruptions and concurrency ------------------------------------------------------------------

def test_kill_9_then_resume_never_refetches_a_finished_range(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, rate=1e6)
    cmd = [sys.executable, "-m", "gpt2hub.cli", "pull", "tiny", "--manifest", str(tiny_manifest),
           "--source", server.url, "--connections", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = record_path(store.release_dir("tiny") / (DATA + ".part"))
    deadline = time.monotonic() + 60
    done: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(record.read_text())["done"]
        except (OSError, ValueError):
            pass
        if sum(b - a for a, b in done) >= 3 << 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(record.read_text())["done"]
    size = (tiny_release / DATA).stat().st_size
    assert 3 << 20 <= sum(b - a for a, b in done) < size  # killed midway, with finished ranges on record
    time.sleep(0.5)  # let the server log the requests the kill cut off
    first_run = len(server.log)
    server.faults = Faults()
    r = _pull(server, tiny_manifest)
    assert _same_files(r.path, tiny_release)
    again = [s for s in server.log[first_run:] if s.file == DATA]
    assert not [s for s in again for a, b in done if s.start < b and a < s.end]


def test_two_concurrent_pulls_download_once_and_both_succeed(server, tiny_manifest, tiny_release):
    server.faults = Faults(only=DATA, rate=8e6)
    cmd = [sys.executable, "-m", "gpt2hub.cli", "pull", "tiny", "--manifest", str(tiny_manifest),
           "--source", server.url, "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # One downloaded; the other waited for the lock and found the release verified.
    assert sorted(json.loads(out)["already_verified"] for out, _ in outs) == [False, True]
    assert server.bytes_served(DATA) < 2 * (tiny_release / DATA).stat().st_size
    assert _same_files(store.release_dir("tiny"), tiny_release)


# --- other sources and no network ----------------------------------------------------------------------

def test_local_folder_source(mirror_root, tiny_manifest, tiny_release):
    r = pull("tiny", manifest=tiny_manifest, sources=[str(mirror_root)])
    assert _same_files(r.path, tiny_release) and r.sources == [str(mirror_root)]


@pytest.fixture(scope="session")
def s3_mirror(s3_server, tiny_release) -> str:
    """The tiny release in a SeaweedFS bucket, in OpenAI's layout under a prefix."""
    c = s3_server.client()
    c.create_bucket(Bucket="pull-test")
    for f in tiny_release.iterdir():
        c.upload_file(str(f), "pull-test", f"mirrors/gpt2/tiny/{f.name}")
    return "s3://pull-test/mirrors/gpt2"


@pytest.mark.heavy
@pytest.mark.parametrize("credentials", [True, False], ids=["signed", "anonymous"])
def test_s3_source_in_openai_layout(s3_server, s3_mirror, tiny_manifest, tiny_release, monkeypatch, tmp_path,
                                    credentials):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    r = pull("tiny", manifest=tiny_manifest, sources=[s3_mirror], endpoint_url=s3_server.endpoint_url,
             retry=FAST, span=SPAN)
    assert _same_files(r.path, tiny_release) and r.sources == [s3_mirror]


def test_gpt2hub_source_sets_the_default_source(server, tiny_manifest, tiny_release, monkeypatch):
    monkeypatch.setenv("GPT2HUB_SOURCE", server.url)
    r = pull("tiny", manifest=tiny_manifest)
    assert _same_files(r.path, tiny_release) and r.sources == [server.url]


def test_pull_without_network_is_a_one_line_error():
    p = _run_cli("pull", "1.5B")
    assert p.returncode == 1
    assert p.stderr.startswith("gpt2hub: error: 1558M:") and len(p.stderr.splitlines()) == 1
    assert "openaipublic.blob.core.windows.net" in p.stderr and "Traceback" not in p.stderr
    assert "proxy unreachable" in p.stderr  # the proxy came from the environment


def test_ctrl_c_exits_130_and_keeps_the_finished_ranges(server, tiny_manifest):
    server.faults = Faults(only=DATA, rate=1.5e6)
    cmd = [sys.executable, "-m", "gpt2hub.cli", "pull", "tiny", "--manifest", str(tiny_manifest),
           "--source", server.url, "--connections", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = record_path(store.release_dir("tiny") / (DATA + ".part"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not record.is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip() == "gpt2hub: interrupted"
    assert json.loads(record.read_text())["done"]
    assert not (store.release_dir("tiny") / DATA).exists()


@pytest.mark.parametrize("spec", ["ftp://mirror.example/gpt-2", "s3://"])
def test_an_unusable_source_is_refused_before_anything_is_tried(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2HUB_HOME", str(tmp_path / "home"))
    with pytest.raises(DownloadError, match="ftp://|s3://") as e:
        gpt2hub.pull("124M", sources=[spec])
    assert "openaipublic" not in str(e.value) and "\n" not in str(e.value)

