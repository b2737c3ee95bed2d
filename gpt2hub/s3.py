"""S3 addressing, one way for `pull --source s3://…` and `mirror … s3://…`.

`parse` reads `s3://bucket/prefix` and checks the bucket name by S3's rules; `endpoint` is the custom
endpoint in force (the argument, else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL); `client` builds a
botocore client that addresses any custom endpoint path style (MinIO, SeaweedFS, Ceph), as both commands must.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from .errors import S3AddressError

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
    return explicit or next((os.environ[v] for v in ENDPOINT_ENVS if os.environ.get(v)), None)


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
