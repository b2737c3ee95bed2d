"""The trust policy: how far a manifest's size and sha256 can be believed, and what vouched for a file.

Every module that labels a file asks here, so a status or a check means the same words and the same
"verified or not" everywhere: pull's record, `list`, `info`, `verify`, `convert` and `mirror`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import settings

MEASURED_LABEL = "checked: the sha256 you measured yourself (manifest create or import)"  # never "published": not OpenAI's


class HashStatus(str, enum.Enum):
    """Where a manifest's size and sha256 for a file come from (the manifests' `status` field)."""

    PUBLISHED = "published"  # printed by a public source; the shipped registry is the root of trust
    SHARED = "shared"  # the sha256 OpenAI published for 124M's byte-identical file (encoder.json, vocab.bpe, checkpoint)
    EXPECTED = "expected"  # derived but not yet confirmed by anyone
    MEASURED = "measured"  # measured by `gpt2hub manifest create` from the user's own files
    MIRROR = "mirror"  # claimed by a mirror's own manifest: never more than that, whatever it says
    HUB = "hub"  # the sha256 a Hugging Face Hub repo lists for an LFS file (`pull hf://`): the repo's word, not OpenAI's

    @property
    def vouches(self) -> bool:
        """True when a matching sha256 of this status verifies the file."""
        return self in (HashStatus.PUBLISHED, HashStatus.SHARED, HashStatus.MEASURED, HashStatus.HUB)

    @property
    def whose(self) -> str:
        """Whose hash it is, in words: "published", "mirror's", ..."""
        return _WHOSE[self]

    @property
    def check(self) -> "Check | None":
        """What a sha256 of this status that matches counts as (None: an expected hash vouches for nothing)."""
        return _SHA256_CHECKS.get(self)


class Check(str, enum.Enum):
    """What a file's bytes were checked against, strongest first; the first four count as verified."""

    PUBLISHED_SHA256 = "published-sha256"  # the sha256 OpenAI published, from a shipped manifest
    MEASURED_SHA256 = "measured-sha256"  # the sha256 the user measured from their own files (`manifest create`)
    SHARED_SHA256 = "shared-sha256"  # the sha256 of the identical file OpenAI published for 124M
    ORIGIN_CRC32C = "origin-crc32c"  # every tensor's CRC32C, from an index fetched from OpenAI's origin (or one
    # whose own sha256 was verified); for the index itself: fetched from the origin
    MIRROR_CRC32C = "mirror-crc32c"  # CRC32C from an index that came from a mirror only
    MIRROR_SHA256 = "mirror-sha256"  # the sha256 a mirror's own manifest gives
    SIZE = "size"  # the byte count only
    HUB_SHA256 = "hub-sha256"  # the sha256 a Hub repo lists for an LFS file (`pull hf://`): the repo's word
    HUB_GIT_OID = "hub-git-oid"  # the git blob id a Hub repo lists for a small (non-LFS) file: the repo's word

    @property
    def verified(self) -> bool:
        return self in (Check.PUBLISHED_SHA256, Check.MEASURED_SHA256, Check.SHARED_SHA256, Check.ORIGIN_CRC32C)

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def users_own(self) -> bool:
        """True for the sha256 the user measured from their own files: never to be called published."""
        return self is Check.MEASURED_SHA256

    @property
    def openais(self) -> bool:
        """True when what vouched was published by OpenAI (a model card may then call the weights OpenAI's)."""
        return self in (Check.PUBLISHED_SHA256, Check.SHARED_SHA256, Check.ORIGIN_CRC32C)


_WHOSE = {HashStatus.PUBLISHED: "published", HashStatus.MEASURED: "manifest's measured",
          HashStatus.SHARED: "124M's published", HashStatus.MIRROR: "mirror's", HashStatus.EXPECTED: "expected",
          HashStatus.HUB: "Hub's"}
_SHA256_CHECKS = {HashStatus.PUBLISHED: Check.PUBLISHED_SHA256, HashStatus.MEASURED: Check.MEASURED_SHA256,
                  HashStatus.SHARED: Check.SHARED_SHA256, HashStatus.MIRROR: Check.MIRROR_SHA256,
                  HashStatus.HUB: Check.HUB_SHA256}
_LABELS = {
    Check.PUBLISHED_SHA256: "verified: published sha256",
    Check.MEASURED_SHA256: MEASURED_LABEL,
    Check.SHARED_SHA256: "verified: sha256 of 124M's identical published file",
    Check.ORIGIN_CRC32C: ("verified: CRC32C from an index fetched from OpenAI (or matching a published sha256, "
                          "or the one you measured yourself)"),
    Check.MIRROR_CRC32C: "not verified: CRC32C from a mirror's index only",
    Check.MIRROR_SHA256: "not verified: the mirror's own sha256 only",
    Check.SIZE: "not verified: size only",
    Check.HUB_SHA256: "checked: the sha256 the Hub lists for the file (the repo's word, not OpenAI's)",
    Check.HUB_GIT_OID: "checked: the git blob id the Hub lists for the file (the repo's word, not OpenAI's)",
}


# --- the judgement: what a manifest says against what was observed ----------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a manifest says of one file."""

    name: str
    size: int | None
    sha256: str | None
    status: HashStatus

    @classmethod
    def of(cls, f) -> "Claim":
        """The claim of a manifest's file record (anything with name, size, sha256 and status)."""
        return cls(f.name, f.size, f.sha256, HashStatus(f.status))

    @property
    def binding(self) -> bool:
        """True where the sha256 vouches for the file (not a mirror's or an expected one)."""
        return self.sha256 is not None and self.status.vouches


@dataclass(frozen=True)
class Observed:
    """What was seen of a complete file's bytes, and where they came from."""

    size: int
    sha256: str | None  # None: not measured, where the size or the CRC32Cs already refuse the file
    crc: bool | None = None  # data file: every tensor matched the index's CRC32C (None: no index to check against)
    index_verified: bool = False  # the index those CRC32Cs came from was itself verified
    index: str = "?"  # that index's file name
    index_source: str | None = None  # where that index came from (None: a mirror, in words)
    origin: str | None = None  # the index itself: OpenAI's URL (secrets removed) where its bytes came from there
    recorded_sha256: str | None = None  # the sha256 an earlier pull recorded for this file
    reused: bool = False  # the file was already on disk, not fetched now
    accept_different_shared: bool = False  # $GPT2HUB_ACCEPT_DIFFERENT_SHARED: a differing "shared" file is accepted


@dataclass(frozen=True)
class Verdict:
    """What vouched for a file and in what words, or why it is refused; and a warning for the user, if any."""

    check: Check | None  # None: refused
    against: str = ""
    refusal: str | None = None
    warning: str | None = None  # reported even when the file is then refused


def size_refusal(claim: Claim, size: int, reused: bool = False) -> str | None:
    """Why `size` bytes cannot be the file (None: they can): a size the manifest vouches for, or any size
    it gives for a file already on disk, must match; an expected size that differs is judged by the rest."""
    if claim.size is not None and size != claim.size and (claim.status is not HashStatus.EXPECTED or reused):
        return f"{size:,} bytes, the manifest says {claim.size:,}"
    return None


def announced_size(claim: Claim, url: str, size: int) -> tuple[str | None, str | None]:
    """(refusal, warning) for the size a source announces before a byte is fetched."""
    if claim.size is None or size == claim.size:
        return None, None
    if claim.status is not HashStatus.EXPECTED:
        return f"{url} is {size:,} bytes; the manifest says {claim.size:,} ({claim.status.value})", None
    return None, (f"{claim.name}: {url} is {size:,} bytes, not the expected {claim.size:,}; "
                  "integrity rests on the checks below")


def judge_file(claim: Claim, seen: Observed) -> Verdict:
    """The verdict on a complete file: its size, its tensors' CRC32Cs, its sha256 against the manifest's and an
    earlier pull's record; what vouches is the first that holds of: a matching sha256 (any status but
    expected), the origin (the index), the index's CRC32Cs, the size."""
    refusal = size_refusal(claim, seen.size, seen.reused)
    if refusal is None and seen.crc is False:
        refusal = f"{claim.name}: tensors fail their CRC32C"
    if refusal is not None:
        return Verdict(None, refusal=refusal)
    sha, want, status = seen.sha256, claim.sha256, claim.status
    if sha is None:
        raise ValueError(f"{claim.name}: judged without its sha256")
    if want is not None and sha == want and status.check is not None:
        return Verdict(status.check, f"{status.whose} sha256 {want[:16]}…")
    warning = None
    if want is not None and sha != want and status is not HashStatus.EXPECTED:
        if status is HashStatus.SHARED and seen.accept_different_shared:
            warning = (f"{claim.name}: sha256 {sha[:16]}… is not {status.whose} {want[:16]}…; accepted, "
                       f"unverified (${settings.ACCEPT_DIFFERENT_SHARED})")
        else:
            hint = (f"; if you know this copy is right, set {settings.ACCEPT_DIFFERENT_SHARED}=1"
                    if status is HashStatus.SHARED else "")
            article = "" if status is HashStatus.SHARED else "the "
            return Verdict(None, refusal=f"sha256 {sha[:16]}… is not {article}{status.whose} {want[:16]}…{hint}")
    if seen.recorded_sha256 and sha != seen.recorded_sha256:
        return Verdict(None, refusal=f"sha256 {sha[:16]}… is not the {seen.recorded_sha256[:16]}… recorded "
                                     "when it was pulled", warning=warning)
    if want is not None and status is HashStatus.EXPECTED and sha != want:
        warning = (f"{claim.name}: sha256 {sha[:16]}… differs from the expected {want[:16]}…"
                   + ("; every tensor matches its index CRC32C" if seen.crc else ""))
    if seen.origin is not None:
        return Verdict(Check.ORIGIN_CRC32C, f"fetched from OpenAI ({seen.origin})", warning=warning)
    if seen.crc:
        check = Check.ORIGIN_CRC32C if seen.index_verified else Check.MIRROR_CRC32C
        whose = "a verified index" if check.verified else f"the index from {seen.index_source or 'a mirror'}"
        return Verdict(check, f"every tensor's CRC32C in {whose} ({seen.index})", warning=warning)
    if want is not None and status is HashStatus.MIRROR:
        return Verdict(Check.SIZE, "size only (the mirror's sha256 did not match)", warning=warning)
    return Verdict(Check.SIZE, f"size {claim.size:,} ({status.value})" if claim.size is not None
                   else "nothing: no size or hash known", warning=warning)
