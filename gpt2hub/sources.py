"""Where a release's bytes come from: an HTTP(S) base URL, an S3 prefix or a local folder.

Every source lays a release out as OpenAI does, `<base>/<folder>/<file>`. A source opens a
`Remote` for one file; a remote tells its size and streams any byte range of it. Failures are
`TransferError`s that say whether trying again can help (`retryable`) and how long to wait first.
"""

from __future__ import annotations

import email.utils
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import s3, settings

OPENAI_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
# The origin whose index vouches for a data file without a published sha256; tests point it at loopback.
ORIGIN_ENV = settings.ORIGIN
NO_PUBLIC_MIRRORS_ENV = settings.NO_PUBLIC_MIRRORS  # on: never fall back to the public third-party copies
# Public copies in OpenAI's layout (research/gpt2-release.md §1.2), tried after OpenAI.
PUBLIC_MIRRORS = (
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2",
    "https://huggingface.co/rasbt/gpt2-tensorflow/resolve/main",
)
SOURCE_ENV = settings.SOURCE
# A transfer slower than SPEED_LIMIT bytes/s over SPEED_TIME seconds is a failed attempt (curl's --speed-limit/-time);
# a reply's headers must arrive within SPEED_TIME seconds of the request.
SPEED_LIMIT_ENV, SPEED_TIME_ENV = settings.SPEED_LIMIT, settings.SPEED_TIME
SPEED_LIMIT, SPEED_TIME = 1024, 60.0
CHUNK = 256 << 10  # bytes per read from a stream; a broken read loses at most this much
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0
MAX_RETRY_AFTER = 120.0  # seconds; a longer Retry-After is a reason to try another source
# Replies that are an error page whatever the status says (openai/gpt-2 #190, #282).
ERROR_CONTENT_TYPES = ("text/html", "application/xml", "text/xml", "application/xhtml+xml")
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def origin_url() -> str:
    """OpenAI's base URL, or $GPT2HUB_ORIGIN where set (tests: a loopback server)."""
    return settings.text(ORIGIN_ENV) or OPENAI_URL


def redact(url: str) -> str:
    """A URL fit to print or save: no user:password, query string or fragment (signed URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class TransferError(Exception):
    """One failed request; `retryable` says whether the same source may succeed on a retry."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None, missing: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.missing = missing  # the source does not have this file (404 / NoSuchKey / no such path)


class RangeIgnored(TransferError):
    """The server answered a ranged request with the whole file (200, not 206)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class RemoteStat:
    size: int
    etag: str | None = None


class Remote(Protocol):
    """One file at one source."""

    url: str

    def stat(self) -> RemoteStat: ...

    def read(self, start: int, end: int, whole: bool = False, etag: str | None = None) -> Iterator[bytes]:
        """Stream bytes [start, end) (unchanged since `etag`); `whole`: the file in one unranged request."""
        ...


class Source(Protocol):
    name: str

    def remote(self, folder: str, file: str) -> Remote: ...


# --- HTTP -------------------------------------------------------------------------------------

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
        window = self._speed_time or settings.number(SPEED_TIME_ENV, SPEED_TIME)
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
                                    f"(${SPEED_TIME_ENV})", retryable=True) from None
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


# --- S3 ---------------------------------------------------------------------------------------

class S3Remote:
    def __init__(self, client, bucket: str, key: str):
        self._client, self.bucket, self.key = client, bucket, key
        self.url = f"s3://{bucket}/{key}"

    def _call(self, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, Key=self.key, **kw)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise TransferError(f"{self.url}: not found", retryable=False, missing=True) from None
            retryable = status in RETRYABLE_STATUS or code in ("SlowDown", "RequestTimeout", "InternalError")
            raise TransferError(f"{self.url}: {code or status} {e.response.get('Error', {}).get('Message', '')}".rstrip(),
                                retryable=retryable) from None
        except BotoCoreError as e:
            retryable = "Credentials" not in type(e).__name__
            raise TransferError(f"{self.url}: {e}", retryable=retryable) from None

    def stat(self) -> RemoteStat:
        head = self._call(self._client.head_object)
        return RemoteStat(int(head["ContentLength"]), head.get("ETag"))

    def read(self, start: int, end: int, whole: bool = False, etag: str | None = None) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        kw = {} if whole else {"Range": f"bytes={start}-{end - 1}"}
        if etag and not whole:
            kw["IfMatch"] = etag
        reply = self._call(self._client.get_object, **kw)
        body, got = reply["Body"], 0
        try:
            if int(reply.get("ContentLength", -1)) != end - start:
                raise TransferError(f"{self.url}: {reply.get('ContentLength')} bytes in the reply, expected {end - start}",
                                    retryable=True)
            while block := body.read(CHUNK):
                got += len(block)
                yield block
        except (BotoCoreError, OSError) as e:
            raise TransferError(f"{self.url}: {type(e).__name__} after {got} bytes", retryable=True) from None
        finally:
            body.close()
        if got != end - start:
            raise TransferError(f"{self.url}: stream ended after {got} of {end - start} bytes", retryable=True)


class S3Source:
    """`s3://bucket/prefix`: the standard AWS credential chain (anonymous where there is none)."""

    def __init__(self, url: str, endpoint_url: str | None = None, connections: int = 8):
        where = s3.parse(url)  # S3AddressError (a ValueError) for a bad bucket name
        self.bucket, self.prefix = where.bucket, where.prefix
        self.name = url.rstrip("/")
        self._endpoint_url, self._connections = endpoint_url, connections
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    self._client = s3.client(self._endpoint_url, anonymous_without_credentials=True,
                                             max_pool_connections=max(10, self._connections),
                                             connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                             retries={"max_attempts": 1})
                except ImportError:
                    raise TransferError("s3:// sources need boto3 (pip install 'gpt2hub[s3]')", retryable=False) from None
            return self._client

    def remote(self, folder: str, file: str) -> S3Remote:
        key = "/".join(p for p in (self.prefix, folder, file) if p)
        return S3Remote(self.client(), self.bucket, key)


# --- a local folder ---------------------------------------------------------------------------

class FileRemote:
    def __init__(self, path: Path):
        self.path = path
        self.url = str(path)

    def stat(self) -> RemoteStat:
        try:
            return RemoteStat(self.path.stat().st_size)
        except FileNotFoundError:
            raise TransferError(f"{self.path}: no such file", retryable=False, missing=True) from None
        except OSError as e:
            raise TransferError(f"{self.path}: {e.strerror}", retryable=False) from None

    def read(self, start: int, end: int, whole: bool = False, etag: str | None = None) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                left = end - start
                while left > 0:
                    block = f.read(min(CHUNK, left))
                    if not block:
                        raise TransferError(f"{self.path}: file ended {left} bytes early", retryable=False)
                    left -= len(block)
                    yield block
        except OSError as e:
            raise TransferError(f"{self.path}: {e.strerror}", retryable=False) from None


class FolderSource:
    """A local folder in OpenAI's layout, `<dir>/<folder>/<file>`, or holding the files directly."""

    def __init__(self, path: str | Path):
        self.root = Path(str(path).removeprefix("file://")).expanduser()
        self.name = str(self.root)

    def remote(self, folder: str, file: str) -> FileRemote:
        nested = self.root / folder / file
        if nested.exists() or not (self.root / file).exists():
            return FileRemote(nested)
        return FileRemote(self.root / file)


def open_source(spec: str, endpoint_url: str | None = None, connections: int = 8,
                speed_time: float | None = None) -> Source:
    """A source from what a user typed: http(s)://..., s3://bucket/prefix, or a folder path. `speed_time`:
    the seconds an HTTP reply's headers may take (None: $GPT2HUB_SPEED_TIME)."""
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec, speed_time)
    if spec.startswith("s3://"):
        return S3Source(spec, endpoint_url, connections)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec) and not spec.startswith("file://"):
        raise ValueError(f"{redact(spec)}: unsupported source (use http(s)://, s3://bucket/prefix or a folder)")
    return FolderSource(spec)


def user_sources(explicit: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The sources the user named: `--source`, else $GPT2HUB_SOURCE."""
    return list(explicit) or [s for s in re.split(r"[\s,]+", settings.text(SOURCE_ENV) or "") if s]


def no_public_mirrors() -> bool:
    return settings.flag(NO_PUBLIC_MIRRORS_ENV)


def default_sources(explicit: list[str] | tuple[str, ...] = (), manifest_sources: tuple[str, ...] = (), *,
                    openai: bool = True, public_mirrors: bool = True) -> list[str]:
    """Sources in the order they are tried: the user's (else $GPT2HUB_SOURCE), the manifest's, then, for a
    release OpenAI published (`openai`), OpenAI's origin and (unless refused) the public mirrors."""
    user = user_sources(explicit)
    out: list[str] = []
    public = [*PUBLIC_MIRRORS] if public_mirrors and not no_public_mirrors() else []
    for s in [*user, *manifest_sources, *([origin_url(), *public] if openai else [])]:
        if s.rstrip("/") not in (o.rstrip("/") for o in out):
            out.append(s)
    return out
