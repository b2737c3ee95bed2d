"""S3, one way for `pull --source s3://…` and `mirror … s3://…`: addressing, the client, and a bucket as a source.

`parse` reads `s3://bucket/prefix` and checks the bucket name by S3's rules; `endpoint` is the custom
endpoint in force (the argument, else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL); `client` builds a
botocore client that addresses any custom endpoint path style (MinIO, SeaweedFS, Ceph), as both commands must.
`S3Source` reads a release's files from a prefix laid out `<prefix>/<folder>/<file>`, for pull.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass
from typing import Iterator

from . import settings
from .errors import S3AddressError, TransferError
from .remote import CHUNK, CONNECT_TIMEOUT, READ_TIMEOUT, RETRYABLE_STATUS, RemoteStat

SCHEME = "s3://"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # botocore's own order: the S3-specific one first
# S3's bucket naming rules (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


@dataclass(frozen=True)
class Location:
    """A bucket and a key prefix (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


def check_bucket(bucket: str, url: str) -> str:
    """`bucket` if S3 allows it as a bucket name, else S3AddressError naming `url` and the rule."""
    why = None
    if not 3 <= len(bucket) <= 63:
        why = "must be 3 to 63 characters"
    elif not _BUCKET.fullmatch(bucket):
        why = "may hold only lowercase letters, digits, dots and hyphens, and must start and end with a letter or digit"
    elif ".." in bucket:
        why = "may not hold two dots in a row"
    elif _is_ip(bucket):
        why = "may not be an IP address"
    elif bucket.startswith(RESERVED_PREFIXES) or bucket.endswith(RESERVED_SUFFIXES):
        why = "uses a prefix or suffix S3 reserves"
    if why:
        raise S3AddressError(f"{url}: bucket name {bucket[:80]!r} {why}")
    return bucket


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse(url: str) -> Location:
    """`s3://bucket[/prefix]` as a Location, or one-line S3AddressError."""
    if not url.startswith(SCHEME):
        raise S3AddressError(f"{url}: not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    if not bucket:
        raise S3AddressError(f"{url}: no bucket; use s3://bucket/prefix")
    return Location(check_bucket(bucket, url), prefix.strip("/"))


def endpoint(explicit: str | None = None) -> str | None:
    """The custom S3 endpoint in force, or None for AWS itself."""
    return explicit or next((url for url in map(settings.library, ENDPOINT_ENVS) if url), None)


def client(endpoint_url: str | None = None, *, session=None, anonymous_without_credentials: bool = False, **config):
    """A boto3 S3 client from the standard credential chain; path-style addressing for any custom endpoint.

    `session`: the boto3 Session to build it from (None: a new one). `config`: botocore Config settings
    (timeouts, retries, pool size). `anonymous_without_credentials`: unsigned requests where no credentials
    are found (public buckets)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    url = endpoint(endpoint_url)
    if url:
        config["s3"] = {**config.get("s3", {}), "addressing_style": "path"}
    session = session or boto3.session.Session()
    if anonymous_without_credentials and session.get_credentials() is None:
        config["signature_version"] = UNSIGNED
    return session.client("s3", endpoint_url=url, region_name=session.region_name or "us-east-1",
                          config=Config(**config))


# --- a bucket as a source of a release's files ---------------------------------------------------

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

    def __init__(self, url: str, endpoint_url: str | None = None, connections: int = settings.CONNECTIONS):
        where = parse(url)  # S3AddressError (a ValueError) for a bad bucket name
        self.bucket, self.prefix = where.bucket, where.prefix
        self.name = url.rstrip("/")
        self._endpoint_url, self._connections = endpoint_url, connections
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    self._client = client(self._endpoint_url, anonymous_without_credentials=True,
                                          max_pool_connections=max(10, self._connections),
                                          connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                          retries={"max_attempts": 1})
                except ImportError:
                    raise TransferError("s3:// sources need boto3 (pip install 'gpt2hub[s3]')", retryable=False) from None
            return self._client

    def remote(self, folder: str, file: str) -> S3Remote:
        key = "/".join(p for p in (self.prefix, folder, file) if p)
        return S3Remote(self.client(), self.bucket, key)
