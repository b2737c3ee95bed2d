"""A loopback HTTP file server with Range support and injectable faults, for pull tests and benchmarks.

    with FaultyServer(root) as srv:            # serves root/<folder>/<file> at srv.url/<folder>/<file>
        srv.faults = Faults(status=503, status_times=2, retry_after=1)
        ...
        srv.served("model.ckpt.data-00000-of-00001")   # [(start, end, bytes_sent), ...]

Faults apply to GETs of files whose name contains `Faults.only` (default: every file) and, where a
count is given, only that many times. Every GET is logged with the byte span asked for and the
bytes actually sent, so tests can tell which ranges were fetched.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

XML_ERROR = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>NoSuchBucket</Code>'
             b"<Message>The specified bucket does not exist.</Message></Error>")


@dataclass
class Faults:
    only: str = ""  # apply to files whose name contains this
    status: int | None = None  # answer this status (500, 503, 429) with an empty body...
    status_times: int | None = None  # ...this many times (None: always)
    retry_after: str | None = None  # Retry-After header with `status`
    cut_after: int | None = None  # close the connection after this many body bytes...
    cut_times: int = 1
    corrupt_at: int | None = None  # flip the byte at this file offset in a reply covering it...
    corrupt_times: int = 1
    ignore_range: bool = False  # 200 with the whole file, whatever Range says
    xml_error: int | None = None  # answer every request with an XML error body and this status (200, 404)
    rate: float | None = None  # bytes per second per connection
    drip: float | None = None  # send one byte at a time, this many per second (alive, and useless)
    drip_headers: float | None = None  # send the status line and headers (HEAD and GET) one byte at a time, this many per second
    announce_size: int | None = None  # claim the file has this many bytes (HEAD's Content-Length, Content-Range's total)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up (a pull killed, a range cut short) are normal here, not tracebacks."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@dataclass
class Served:
    file: str  # the requested path's last part; `path` is all of it, with any query string
    start: int
    end: int  # exclusive: what was asked for
    sent: int  # body bytes actually written
    status: int
    path: str = ""


class FaultyServer:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.faults = Faults()
        self.log: list[Served] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

            def do_GET(self) -> None:
                server._handle(self, head=False)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def served(self, name: str) -> list[tuple[int, int, int]]:
        with self.lock:
            return [(s.start, s.end, s.sent) for s in self.log if s.file == name and s.status in (200, 206)]

    def bytes_served(self, name: str | None = None) -> int:
        with self.lock:
            return sum(s.sent for s in self.log if name is None or s.file == name)

    def _take(self, attr: str) -> bool:
        """Whether a counted fault fires now (and count it)."""
        with self.lock:
            times = getattr(self.faults, attr)
            if times <= 0:
                return False
            setattr(self.faults, attr, times - 1)
            return True

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        f = self.faults
        rel = h.path.split("?")[0].lstrip("/")
        path = (self.root / rel).resolve()
        name = path.name
        applies = f.only in name
        if applies and f.xml_error is not None:
            return self._reply(h, f.xml_error, XML_ERROR, {"Content-Type": "application/xml"}, head, name)
        if not path.is_file() or self.root.resolve() not in path.parents:
            return self._reply(h, 404, b"", {}, head, name)
        if applies and not head and f.status is not None and (f.status_times is None or self._take("status_times")):
            headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
            return self._reply(h, f.status, b"", headers, head, name)
        size = path.stat().st_size
        start, end, status = 0, size, 200
        rng = h.headers.get("Range")
        if rng and not (applies and f.ignore_range):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= size:
                return self._reply(h, 416, b"", {"Content-Range": f"bytes */{size}"}, head, name)
            start = int(m.group(1))
            end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            status = 206
        claimed = f.announce_size if applies and f.announce_size is not None else size
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(claimed if head and status == 200 else end - start))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{size:x}-{int(path.stat().st_mtime)}"')
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{claimed}")
        if applies and f.drip_headers:
            if not self._drip_headers(h, f.drip_headers, name, start, end, status):
                return
        else:
            h.end_headers()
        if head:
            return
        sent = 0
        cut = f.cut_after if applies and f.cut_after is not None and self._take("cut_times") else None
        try:
            with open(path, "rb") as fh:
                if applies and f.drip:
                    fh.seek(start)
                    while sent < end - start:
                        h.wfile.write(fh.read(1))
                        h.wfile.flush()
                        sent += 1
                        time.sleep(1 / f.drip)
                    return
                if cut is None and not (applies and f.corrupt_at is not None):
                    # Zero-copy, so the server is never the bottleneck; paced in 256 KiB steps under a rate cap.
                    h.wfile.flush()
                    step = 256 << 10 if applies and f.rate else end - start
                    t0 = time.monotonic()
                    while sent < end - start:
                        n = os.sendfile(h.connection.fileno(), fh.fileno(), start + sent, min(step, end - start - sent))
                        if n == 0:
                            break
                        sent += n
                        if applies and f.rate:
                            ahead = sent / f.rate - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)
                    return
                fh.seek(start)
                t0 = time.monotonic()
                while sent < end - start:
                    block = bytearray(fh.read(min(64 << 10, end - start - sent)))
                    if cut is not None and sent + len(block) >= cut:
                        block = block[:max(0, cut - sent)]
                        h.wfile.write(block)
                        sent += len(block)
                        h.close_connection = True
                        h.wfile.flush()
                        h.connection.shutdown(2)  # drop it mid-body
                        return
                    if applies and f.corrupt_at is not None and start + sent <= f.corrupt_at < start + sent + len(block) \
                            and self._take("corrupt_times"):
                        block[f.corrupt_at - start - sent] ^= 0xFF
                    h.wfile.write(block)
                    sent += len(block)
                    if applies and f.rate:
                        ahead = sent / f.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
        finally:
            with self.lock:
                self.log.append(Served(name, start, end, sent, status, h.path))

    def _drip_headers(self, h: BaseHTTPRequestHandler, per_second: float, name: str, start: int, end: int,
                      status: int) -> bool:
        """Send the buffered status line and headers a byte at a time; False if the client hung up."""
        h._headers_buffer.append(b"\r\n")
        raw, h._headers_buffer = b"".join(h._headers_buffer), []
        try:
            for i in range(len(raw)):
                h.wfile.write(raw[i:i + 1])
                h.wfile.flush()
                time.sleep(1 / per_second)
        except OSError:
            h.close_connection = True
            with self.lock:
                self.log.append(Served(name, start, end, 0, status, h.path))
            return False
        return True

    def _reply(self, h, status: int, body: bytes, headers: dict, head: bool, name: str) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)
        with self.lock:
            self.log.append(Served(name, 0, 0, len(body) if not head else 0, status, h.path))


def main() -> None:
    """Serve a folder (for benchmarks): python -m tests.httpserver ROOT [--rate BYTES_PER_S]."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--rate", type=float, default=None)
    a = p.parse_args()
    with FaultyServer(a.root) as srv:
        srv.faults = Faults(rate=a.rate)
        print(srv.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
