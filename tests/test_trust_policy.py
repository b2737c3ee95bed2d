"""The trust policy as a table: every manifest status against every outcome, judged without a server or a file."""

from __future__ import annotations

import pytest

from gpt2hub.trust import Check, Claim, HashStatus, Observed, announced_size, judge_file, size_refusal

NAME, DATA, INDEX = "encoder.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index"
GOOD, OTHER, RECORDED = "a" * 64, "b" * 64, "c" * 64
SIZE = 1_000
ENV = "GPT2HUB_ACCEPT_DIFFERENT_SHARED"
P, S, E, M, R = HashStatus.PUBLISHED, HashStatus.SHARED, HashStatus.EXPECTED, HashStatus.MEASURED, HashStatus.MIRROR


def _claim(status: HashStatus, sha256: str | None = GOOD, size: int | None = SIZE, name: str = NAME) -> Claim:
    return Claim(name, size, sha256, status)


def _seen(sha256: str | None = GOOD, size: int = SIZE, **kw) -> Observed:
    return Observed(size, sha256, **kw)


# --- a sha256 that matches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("status, check, against", [
    (P, Check.PUBLISHED_SHA256, f"published sha256 {GOOD[:16]}…"),
    (S, Check.SHARED_SHA256, f"124M's published sha256 {GOOD[:16]}…"),
    (M, Check.MEASURED_SHA256, f"manifest's measured sha256 {GOOD[:16]}…"),
    (R, Check.MIRROR_SHA256, f"mirror's sha256 {GOOD[:16]}…"),
    (E, Check.SIZE, f"size {SIZE:,} (expected)"),  # an expected hash vouches for nothing, even when it matches
])
def test_a_matching_sha256_vouches_as_far_as_its_status(status, check, against):
    v = judge_file(_claim(status), _seen())
    assert (v.check, v.against, v.refusal, v.warning) == (check, against, None, None)
    assert v.check.verified == status.vouches


# --- a sha256 that differs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("status, accept, refusal, warning", [
    (P, False, f"sha256 {OTHER[:16]}… is not the published {GOOD[:16]}…", None),
    (P, True, f"sha256 {OTHER[:16]}… is not the published {GOOD[:16]}…", None),  # the switch is for shared only
    (M, False, f"sha256 {OTHER[:16]}… is not the manifest's measured {GOOD[:16]}…", None),
    (R, False, f"sha256 {OTHER[:16]}… is not the mirror's {GOOD[:16]}…", None),
    (S, False, f"sha256 {OTHER[:16]}… is not 124M's published {GOOD[:16]}…; if you know this copy is right, "
               f"set {ENV}=1", None),
    (S, True, None, f"{NAME}: sha256 {OTHER[:16]}… is not 124M's published {GOOD[:16]}…; accepted, unverified "
                    f"(${ENV})"),
    (E, False, None, f"{NAME}: sha256 {OTHER[:16]}… differs from the expected {GOOD[:16]}…"),
])
def test_a_differing_sha256_is_refused_unless_expected_or_shared_with_the_override(status, accept, refusal, warning):
    v = judge_file(_claim(status), _seen(OTHER, accept_different_shared=accept))
    assert (v.refusal, v.warning) == (refusal, warning)
    assert v.check is (None if refusal else Check.SIZE)
    if refusal is None:
        assert v.against == f"size {SIZE:,} ({status.value})" and not v.check.verified


# --- no sha256, no size ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", list(HashStatus))
def test_without_a_sha256_only_the_size_is_checked(status):
    v = judge_file(_claim(status, sha256=None), _seen(OTHER))
    assert (v.check, v.against, v.refusal, v.warning) == (Check.SIZE, f"size {SIZE:,} ({status.value})", None, None)


@pytest.mark.parametrize("status", list(HashStatus))
def test_without_a_size_or_a_sha256_nothing_vouches(status):
    v = judge_file(_claim(status, sha256=None, size=None), _seen(OTHER, size=7))
    assert (v.check, v.against, v.refusal) == (Check.SIZE, "nothing: no size or hash known", None)


# --- a size that differs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("status", list(HashStatus))
@pytest.mark.parametrize("reused", [False, True])
def test_a_differing_size_is_refused_unless_expected_and_just_fetched(status, reused):
    refusal = f"{SIZE + 1:,} bytes, the manifest says {SIZE:,}"
    refused = status is not HashStatus.EXPECTED or reused
    assert size_refusal(_claim(status), SIZE + 1, reused) == (refusal if refused else None)
    v = judge_file(_claim(status), _seen(size=SIZE + 1, reused=reused))
    assert v.refusal == (refusal if refused else None) and (v.check is None) == refused


def test_a_refused_size_needs_no_sha256():
    v = judge_file(_claim(P), _seen(None, size=SIZE + 1))
    assert v.refusal == f"{SIZE + 1:,} bytes, the manifest says {SIZE:,}"


@pytest.mark.parametrize("status", list(HashStatus))
def test_an_announced_size_that_differs(status):
    refusal, warning = announced_size(_claim(status), "http://m/x", SIZE + 1)
    if status is HashStatus.EXPECTED:
        assert refusal is None and warning == (f"{NAME}: http://m/x is {SIZE + 1:,} bytes, not the expected "
                                               f"{SIZE:,}; integrity rests on the checks below")
    else:
        assert warning is None
        assert refusal == f"http://m/x is {SIZE + 1:,} bytes; the manifest says {SIZE:,} ({status.value})"
    assert announced_size(_claim(status), "http://m/x", SIZE) == (None, None)
    assert announced_size(_claim(status, size=None), "http://m/x", SIZE) == (None, None)


# --- the data file's CRC32Cs -------------------------------------------------------------------------------

@pytest.mark.parametrize("index_verified, source, check, whose", [
    (True, "http://m", Check.ORIGIN_CRC32C, "a verified index"),
    (False, "http://m", Check.MIRROR_CRC32C, "the index from http://m"),
    (False, None, Check.MIRROR_CRC32C, "the index from a mirror"),
])
@pytest.mark.parametrize("status", [E, R])
def test_crc32c_vouches_as_far_as_its_index(status, index_verified, source, check, whose):
    v = judge_file(_claim(status, sha256=None, name=DATA),
              _seen(crc=True, index_verified=index_verified, index=INDEX, index_source=source))
    assert (v.check, v.against, v.refusal) == (check, f"every tensor's CRC32C in {whose} ({INDEX})", None)


@pytest.mark.parametrize("status", list(HashStatus))
def test_a_matching_sha256_is_judged_before_the_crc32cs(status):
    v = judge_file(_claim(status, name=DATA), _seen(crc=True, index_verified=True, index=INDEX))
    assert v.check == (status.check or Check.ORIGIN_CRC32C)


def test_an_expected_sha256_that_differs_is_a_warning_the_crc32cs_answer():
    v = judge_file(_claim(E, name=DATA), _seen(OTHER, crc=True, index_verified=True, index=INDEX))
    assert v.check is Check.ORIGIN_CRC32C
    assert v.warning == (f"{DATA}: sha256 {OTHER[:16]}… differs from the expected {GOOD[:16]}…; "
                         "every tensor matches its index CRC32C")


@pytest.mark.parametrize("status", list(HashStatus))
def test_tensors_that_fail_their_crc32c_are_refused_before_any_sha256(status):
    v = judge_file(_claim(status, name=DATA), _seen(None, crc=False, index=INDEX))
    assert (v.check, v.refusal) == (None, f"{DATA}: tensors fail their CRC32C")


# --- the index, from OpenAI's origin or not ----------------------------------------------------------------

@pytest.mark.parametrize("status", [E, R])
def test_an_index_fetched_from_the_origin_is_vouched_for_by_it(status):
    v = judge_file(_claim(status, sha256=None, name=INDEX), _seen(origin="https://openai.example/models"))
    assert (v.check, v.against) == (Check.ORIGIN_CRC32C, "fetched from OpenAI (https://openai.example/models)")
    assert v.check.verified


@pytest.mark.parametrize("status", [E, R])
def test_an_index_from_a_mirror_is_size_only(status):
    v = judge_file(_claim(status, sha256=None, name=INDEX), _seen())
    assert (v.check, v.against) == (Check.SIZE, f"size {SIZE:,} ({status.value})") and not v.check.verified


# --- an earlier pull's record ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", list(HashStatus))
def test_a_sha256_that_left_the_recorded_one_is_refused_unless_the_manifest_vouches(status):
    v = judge_file(_claim(status, sha256=None), _seen(OTHER, recorded_sha256=RECORDED, reused=True))
    assert v.refusal == f"sha256 {OTHER[:16]}… is not the {RECORDED[:16]}… recorded when it was pulled"
    same = judge_file(_claim(status, sha256=None), _seen(RECORDED, recorded_sha256=RECORDED, reused=True))
    assert same.refusal is None and same.check is Check.SIZE


def test_the_shared_override_warns_even_when_the_record_then_refuses():
    v = judge_file(_claim(S), _seen(OTHER, recorded_sha256=RECORDED, accept_different_shared=True))
    assert v.check is None and v.refusal.endswith("recorded when it was pulled")
    assert v.warning.endswith(f"accepted, unverified (${ENV})")


# --- what a claim is ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", list(HashStatus))
def test_a_claim_binds_only_with_a_sha256_its_status_vouches_for(status):
    assert _claim(status).binding == status.vouches
    assert not _claim(status, sha256=None).binding


def test_a_claim_reads_a_manifests_file_record():
    class Record:
        name, size, sha256, status = NAME, SIZE, GOOD, "shared"

    assert Claim.of(Record()) == Claim(NAME, SIZE, GOOD, HashStatus.SHARED)


def test_a_verdict_that_needs_the_sha256_refuses_to_guess():
    with pytest.raises(ValueError):
        judge_file(_claim(P), _seen(None))
