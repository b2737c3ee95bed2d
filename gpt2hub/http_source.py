"""Files under an HTTP(S) base URL: sizes by HEAD, bytes by ranged GET, every reply's headers under a deadline.

A source lays a release out as OpenAI does, `<base>/<folder>/<file>`. Error statuses and error pages
(whatever their status) are `TransferError`s; a server that ignores Range is `RangeIgnored`.
"""

from __future__ import annotations

import email.utils
import re
import socket
import threading
import time
from typing import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import settings
from .errors import RangeIgnored, TransferError
from .remote import CHUNK, CONNECT_TIMEOUT, READ_TIMEOUT, RETRYABLE_STATUS, RemoteStat, redact
from .retry import speed_time as speed_window

# Replies that are an error page whatever the status says (openai/gpt-2 #190, #282).
ERROR_CONTENT_TYPES = ("text/html", "application/xml", "text/xml", "application/xhtml+xml")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either a delay or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _check_reply(r: requests.Response, url: str) -> None:
    """Reject an error status or an error page, whatever its status."""
    if r.status_code == 404 or r.status_code == 410:
        raise TransferError(f"{url}: not found ({r.status_code})", retryable=False, missing=True)
    if r.status_code in RETRYABLE_STATUS:
        wait = retry_after_seconds(r.headers.get("Retry-After"))
        raise TransferError(f"{url}: server answered {r.status_code} {r.reason}", retryable=True, retry_after=wait)
    if r.status_code not in (200, 206):
        raise TransferError(f"{url}: server answered {r.status_code} {r.reason}", retryable=False)
    ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype in ERROR_CONTENT_TYPES:
        raise TransferError(f"{url}: server sent a {ctype} page, not the file (an error page?)", retryable=False)


# --- a deadline on each request's headers ------------------------------------------------------
# requests' read timeout restarts with every byte, so a server sending one header byte a second held a
# request for hours. Each request gets a deadline (its start + the speed window): a timer shuts the
# connection's socket down if the reply's headers, redirects included, are not all in by then.

_current = threading.local()  # .watch: the _Watch of the request this thread is making


class _Watch:
    """The deadline of one request's headers."""

    def __init__(self, seconds: float):
        self.seconds, self.until, self.expired = seconds, time.monotonic() + seconds, False

    def run(self, conn: HTTPConnection, getresponse):
        """`getresponse()`, with `conn`'s socket shut down (the read then fails) at the deadline."""
        lock, done = threading.Lock(), False

        def expire() -> None:
            with lock:
                if done:
                    return
                self.expired = True
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except (OSError, AttributeError):
                    pass

        timer = threading.Timer(max(0.0, self.until - time.monotonic()), expire)
        timer.daemon = True
        timer.start()
        try:
            return getresponse()
        finally:
            with lock:
                done = True
            timer.cancel()


class _Watched:
    def getresponse(self, *args, **kwargs):
        watch, call = getattr(_current, "watch", None), super().getresponse  # type: ignore[misc]
        return call(*args, **kwargs) if watch is None else watch.run(self, lambda: call(*args, **kwargs))


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter, its connections (direct or through an HTTP proxy) under the request's `_Watch`."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS managers bring connection classes of their own
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class HttpRemote:
    """A file under an HTTP(S) base URL; one keep-alive session per thread. `url` is safe to show."""

    def __init__(self, url: str, sessions: threading.local, speed_time: float | None = None):
        self._url = url  # may carry credentials: used for requests only
        self.url = redact(url)
        self._sessions = sessions
        self._speed_time = speed_time  # None: $GPT2HUB_SPEED_TIME, read at each request

    def _session(self) -> requests.Session:
        s = getattr(self._sessions, "session", None)
        if s is None:
            s = requests.Session()  # trust_env: HTTP(S)_PROXY, NO_PROXY, .netrc from the environment
            s.headers.update({"User-Agent": "gpt2hub", "Accept-Encoding": "identity"})
            s.mount("http://", _WatchedAdapter())
            s.mount("https://", _WatchedAdapter())
            self._sessions.session = s
        return s

    def _get(self, method: str, headers: dict | None = None) -> requests.Response:
        window = self._speed_time or speed_window()
        _current.watch = watch = _Watch(window)
        try:
            # A read waiting longer than the speed window cannot meet the speed limit: no need to wait longer.
            return self._session().request(method, self._url, headers=headers, stream=True, allow_redirects=True,
                                           timeout=(CONNECT_TIMEOUT, min(READ_TIMEOUT, window)))
        except requests.exceptions.InvalidURL:
            raise TransferError(f"{self.url}: invalid URL", retryable=False) from None
        except requests.RequestException as e:
            if watch.expired:
                raise TransferError(f"{self.url}: no complete reply headers within {window:g} s "
                                    f"(${settings.SPEED_TIME})", retryable=True) from None
            raise TransferError(f"{self.url}: {_reason(e)}", retryable=True) from None
        finally:
            _current.watch = None

    def stat(self) -> RemoteStat:
        with self._get("HEAD") as r:
            if r.status_code in (403, 405, 501):  # some signed URLs and servers refuse HEAD: ask for one byte
                r.close()
                return self._stat_by_get()
            _check_reply(r, self.url)
            length = r.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise TransferError(f"{self.url}: no Content-Length in the reply", retryable=False)
            return RemoteStat(int(length), _strong(r.headers.get("ETag")))

    def _stat_by_get(self) -> RemoteStat:
        with self._get("GET", {"Range": "bytes=0-0"}) as r:
            _check_reply(r, self.url)
            m = re.fullmatch(r"bytes 0-0/(\d+)", r.headers.get("Content-Range", "").strip())
            if r.status_code != 206 or not m:
                raise TransferError(f"{self.url}: refuses HEAD and gives no size for a ranged GET", retryable=False)
            return RemoteStat(int(m.group(1)), _strong(r.headers.get("ETag")))

    def read(self, start: int, end: int, whole: bool = False, etag: str | None = None) -> Iterator[bytes]:
        headers = {} if whole else {"Range": f"bytes={start}-{end - 1}"}
        if etag and not whole:
            headers["If-Range"] = etag  # a changed file answers 200, which we refuse below
        r = self._get("GET", headers)
        try:
            _check_reply(r, self.url)
            length = r.headers.get("Content-Length")
            if not whole:
                if r.status_code == 200:
                    raise RangeIgnored(f"{self.url}: server ignored the Range header (200, not 206)")
                m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", r.headers.get("Content-Range", "").strip())
                if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
                    raise TransferError(f"{self.url}: asked for bytes {start}-{end - 1}, got "
                                        f"Content-Range {r.headers.get('Content-Range')!r}", retryable=True)
            if length is not None and length.isdigit() and int(length) != end - start:
                raise TransferError(f"{self.url}: Content-Length {length}, expected {end - start}", retryable=True)
            got = 0
            # read1: whatever has arrived, at once (iter_content waits to fill a whole CHUNK), so a source
            # that drips bytes is seen dripping and the caller's minimum-rate check can end it.
            read = getattr(r.raw, "read1", None) or r.raw.read
            try:
                while got < end - start:
                    block = read(min(CHUNK, end - start - got))
                    if not block:
                        break
                    got += len(block)
                    yield block
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                raise TransferError(f"{self.url}: {_reason(e)} after {got} bytes", retryable=True) from None
            if got != end - start:
                raise TransferError(f"{self.url}: connection closed after {got} of {end - start} bytes", retryable=True)
        finally:
            r.close()


def _strong(etag: str | None) -> str | None:
    """An ETag usable in If-Range (weak ones are not)."""
    return etag if etag and not etag.startswith("W/") else None


def _reason(e: Exception) -> str:
    """A short cause for a requests exception (they nest urllib3 errors several levels deep)."""
    if isinstance(e, requests.exceptions.ProxyError):
        return "proxy unreachable"
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(e, requests.exceptions.ReadTimeout):
        return "read timed out"
    if isinstance(e, requests.exceptions.ConnectionError):
        text = str(e)
        for needle, short in (("Name or service not known", "host not found"),
                              ("Temporary failure in name resolution", "host not found (no network?)"),
                              ("Connection refused", "connection refused"),
                              ("Network is unreachable", "network unreachable"),
                              ("Connection reset", "connection reset"),
                              ("RemoteDisconnected", "connection closed by server")):
            if needle in text:
                return short
        return "connection failed"
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)):
        return "connection broken mid-body"
    if isinstance(e, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "read timed out"
    return type(e).__name__


class HttpSource:
    """A base URL laid out `<base>/<folder>/<file>`."""

    def __init__(self, base: str, speed_time: float | None = None):
        parts = urlsplit(base)
        # A signed base URL keeps its query on every file's URL: <base>/<folder>/<file>?<query>.
        self._base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._query = parts.query
        self.name = redact(base).rstrip("/")
        self._sessions = threading.local()
        self._speed_time = speed_time

    def remote(self, folder: str, file: str) -> HttpRemote:
        url = f"{self._base}/{quote(folder)}/{quote(file)}" + (f"?{self._query}" if self._query else "")
        return HttpRemote(url, self._sessions, self._speed_time)
