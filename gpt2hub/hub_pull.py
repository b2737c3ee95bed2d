"""`gpt2hub pull hf://ORG/REPO[@REVISION]`: a Hugging Face Hub repo's GPT-2 weights and tokenizer, imported.

The repo's revision is pinned to its commit first (`GET /api/models/{repo}/revision/{rev}`), and the commit's
files are listed with their sizes, git blob ids and LFS sha256s (`GET /api/models/{repo}/tree/{commit}`).
config.json, the weights (model.safetensors, else pytorch_model.bin; or their shards with the index) and the
tokenizer files are fetched from `{endpoint}/{repo}/resolve/{commit}/{file}` by pull's own machinery (parallel
ranges, resume from `.part`, progress) into the store's cache folder for the commit (`fetch_repo`); every LFS
file must have the sha256 the Hub lists for it and every other file the git blob id the Hub lists (both the repo's
word, labelled so: trust.Check.HUB_SHA256, HUB_GIT_OID), or nothing is imported. Then
`importing.import_checkpoint` puts them in the store as release NAME (hard links: the downloaded files are
gpt2hub's own), and the folder goes. `verify hf://` (verification/remote.py) fetches the same way and keeps it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from . import offline, settings, store
from .errors import MAX_JSON_BYTES, DownloadError, Gpt2hubError
from .importing import ImportResult, check_new_name, import_checkpoint
from .layout import HParams
from .manifest import FileRecord, ReleaseManifest
from .progress import Reporter
from .pull_file import FileResult
from .pull_plan import PullJob
from .pulling import TO_LOCK_NAME, run_locked
from .remote import CONNECT_TIMEOUT, READ_TIMEOUT, redact
from .retry import RetryPolicy
from .trust import Check, HashStatus

SCHEME = "hf://"
HF_ENDPOINT = "HF_ENDPOINT"  # huggingface_hub's own variable, read through settings.library
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
MAX_API_BYTES = 8 << 20  # one JSON reply of the Hub's API (a tree page of 1,000 entries is ~300 KB)
MAX_TREE_PAGES = 16
MAX_REVISION = 255
# What a GPT-2 repo needs, besides the weights: the config and the tokenizer files transformers writes.
CONFIG = "config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")
# The weights, as transformers prefers them: (the one file, its shard index, its shards' names).
WEIGHTS = (("model.safetensors", "model.safetensors.index.json", re.compile(r"model-\d{5}-of-\d{5}\.safetensors")),
           ("pytorch_model.bin", "pytorch_model.bin.index.json", re.compile(r"pytorch_model-\d{5}-of-\d{5}\.bin")))
# The Hub's rules for a user, organisation or repo name: letters, digits, '-', '_', '.'; no '--' or '..'; no
# '-' or '.' at either end; at most 96 characters.
_NAME = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubRepo:
    """hf://ORG/REPO[@REVISION], checked."""

    repo_id: str
    revision: str = DEFAULT_REVISION

    @property
    def name(self) -> str:
        return self.repo_id.split("/")[1]

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo_id}" + ("" if self.revision == DEFAULT_REVISION else f"@{self.revision}")


def is_hub(spec: str) -> bool:
    return spec.startswith(SCHEME)


def parse(spec: str) -> HubRepo:
    """hf://ORG/REPO[@REVISION] as a HubRepo, or a one-line DownloadError saying what is wrong."""
    rest = spec[len(SCHEME):] if is_hub(spec) else spec
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise DownloadError(f"{spec[:120]!r}: not hf://ORG/REPO[@REVISION] with ORG and REPO names the Hub allows "
                            "(letters, digits, '-', '_', '.')")
    if at and (not revision or len(revision) > MAX_REVISION or any(ord(c) < 32 or ord(c) == 127 for c in revision)):
        raise DownloadError(f"{spec[:120]!r}: the revision after '@' must be 1 to {MAX_REVISION} printable characters")
    return HubRepo(repo_id, revision or DEFAULT_REVISION)


def endpoint() -> str:
    """The Hub's base URL: $HF_ENDPOINT (as huggingface_hub reads it), else huggingface.co."""
    return (settings.library(HF_ENDPOINT) or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class HubFile:
    """One file of a commit, as the Hub lists it."""

    name: str
    size: int
    git_oid: str
    sha256: str | None  # an LFS file's sha256 (the Hub's); None: a file stored in git itself


@dataclass
class HubPullResult:
    repo: str
    commit: str
    imported: ImportResult
    files: list[FileResult]
    fetched: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        from .printing import size_text

        width = max(len(f.name) for f in self.files)
        lines = [f"{f.name:<{width}}  {size_text(f.size):>9}  {f.check.label}" for f in self.files]
        lines.append(f"{self.repo}@{self.commit[:12]}: {len(self.files)} files, {size_text(self.fetched)} fetched "
                     f"in {self.seconds:.1f} s")
        return "\n".join([*lines, self.imported.to_text()])

    def to_dict(self) -> dict:
        return {"repo": self.repo, "commit": self.commit, "fetched": self.fetched, "seconds": round(self.seconds, 3),
                "files": [f.to_dict() for f in self.files], "imported": self.imported.to_dict(),
                "warnings": self.warnings}


def pull_hub(spec: str, *, name: str | None = None, endpoint_url: str | None = None,
             connections: int = settings.CONNECTIONS, force: bool = False, progress: Reporter | None = None,
             retry: RetryPolicy = RetryPolicy()) -> HubPullResult:
    """Fetch a Hub repo's GPT-2 files, check each against the Hub's hash, and import them as release `name`
    (default: the repo's name); see the module. Every failure is one line, and then nothing is imported."""
    t0 = time.monotonic()
    repo = parse(spec)
    name = name or repo.name
    check_new_name(name, force)  # before a byte moves
    got = fetch_repo(repo, endpoint_url=endpoint_url, connections=connections, progress=progress, retry=retry,
                     refusal="nothing imported")
    notes = {r.name: f"{repo.repo_id}@{got.commit}: {r.check.label}" for r in got.files}
    imported = import_checkpoint(got.folder, name, from_="hf", force=force, progress=progress, notes=notes,
                                 own_files=True, description=f"pulled from {SCHEME}{repo.repo_id}@{got.commit} "
                                                             f"({redact(got.base)})")
    shutil.rmtree(got.folder, ignore_errors=True)
    return HubPullResult(str(repo), got.commit, imported, got.files, got.fetched, time.monotonic() - t0, got.warnings)


@dataclass
class HubFiles:
    """A commit's GPT-2 files in the store's cache folder for it, each checked against the Hub's hash."""

    repo: HubRepo
    base: str
    commit: str
    folder: Path
    files: list[FileResult]
    fetched: int  # bytes downloaded by this call (0: every file was already in the cache)
    warnings: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{SCHEME}{self.repo.repo_id}@{self.commit[:12]}"

    def to_dict(self) -> dict:
        return {"repo": str(self.repo), "commit": self.commit, "folder": str(self.folder), "fetched": self.fetched,
                "files": [f.to_dict() for f in self.files], "warnings": self.warnings}


def cache_folder(repo: HubRepo, commit: str) -> Path:
    """Where a commit's files are fetched to in the store (pull imports them from there; verify keeps them)."""
    return store.home() / f".hf-{repo.repo_id.replace('/', '--')}-{commit[:12]}"


def fetch_repo(repo: HubRepo, *, endpoint_url: str | None = None, connections: int = settings.CONNECTIONS,
               progress: Reporter | None = None, retry: RetryPolicy = RetryPolicy(),
               refusal: str = "nothing kept") -> HubFiles:
    """The revision pinned to its commit, and the commit's GPT-2 files (see `select`) in cache_folder: resumed
    from `.part`, each checked against the Hub's sha256 or git blob id, none fetched again once recorded there.
    Every failure is one line ending in `refusal` (what the caller then does not do)."""
    if connections < 1:
        raise DownloadError(f"--connections must be at least 1, not {connections}")
    base = (endpoint_url or endpoint()).rstrip("/")
    if offline.enabled():
        offline.refuse(f"fetch {repo} from {redact(base)}")
    api = _Api(base, repo)
    commit = api.commit()
    listed = api.files(commit)
    wanted = select(repo, commit, listed)
    folder = cache_folder(repo, commit)
    where = f"{repo}@{commit[:12]}"
    m = _download_manifest(where, commit, wanted)
    folder.mkdir(parents=True, exist_ok=True)
    job = PullJob(m, folder, [f"{base}/{repo.repo_id}/resolve"], None, connections, False, False, progress, retry,
                  None)
    try:
        pulled = run_locked(job, folder / TO_LOCK_NAME)
    except Gpt2hubError as e:  # pull's errors name the download (`where`) and the file
        raise DownloadError(f"{e}; {refusal}") from None
    results = _check_git_oids(where, folder, wanted, pulled.files, refusal)
    return HubFiles(repo, base, commit, folder, results, pulled.fetched, job.warnings)


def select(repo: HubRepo, commit: str, listed: dict[str, HubFile]) -> list[HubFile]:
    """The files a GPT-2 checkpoint needs: config.json, one kind of weights (shards with their index), tokenizer."""
    where = f"{repo}@{commit[:12]}"
    if CONFIG not in listed:
        raise DownloadError(f"{where}: no {CONFIG}; not a Hugging Face model repo gpt2hub reads "
                            f"(it lists {_some(listed)})")
    for single, index, shard in WEIGHTS:
        if single in listed:
            weights = [single]
            break
        shards = sorted(n for n in listed if shard.fullmatch(n))
        if index in listed and shards:
            weights = [index, *shards]
            break
    else:
        raise DownloadError(f"{where}: no GPT-2 weights (model.safetensors or pytorch_model.bin, or their shards "
                            f"with the index); it lists {_some(listed)}")
    tokenizer = [n for n in TOKENIZER_FILES if n in listed]
    for n in [CONFIG, *tokenizer, *weights[:len(weights) > 1]]:  # the JSON and text files (and a shard index)
        if listed[n].size > MAX_JSON_BYTES:
            raise DownloadError(f"{where}: the Hub lists {n} at {listed[n].size:,} bytes; gpt2hub reads at most "
                                f"{MAX_JSON_BYTES:,} of such a file")
    return [listed[n] for n in [CONFIG, *weights, *tokenizer]]


def _some(listed: dict) -> str:
    names = sorted(listed)
    return (", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")) or "no files"


def _download_manifest(name: str, commit: str, files: list[HubFile]) -> ReleaseManifest:
    """What pull's machinery fetches: the files under the folder `commit`, each with the Hub's size and (LFS)
    sha256 (HashStatus.HUB: a mismatch is refused). Never saved: `name` is what pull's messages call it; the
    hparams are GPT-2's, a placeholder (no file here is capped by them, since every size is the Hub's)."""
    return ReleaseManifest(name=name, aliases=(), released=None, parameters=0, hparams=HParams(50257, 1024, 768, 12, 12),
                           folders=(commit,), tensors=(),
                           files=tuple(FileRecord(f.name, f.size, f.sha256, HashStatus.HUB.value) for f in files))


def _check_git_oids(where: str, staging: Path, wanted: list[HubFile], pulled: list[FileResult],
                    refusal: str) -> list[FileResult]:
    """Each file stored in git itself (not LFS) checked against the git blob id the Hub lists for it; a file
    that differs is removed, and the pull refused."""
    by_name = {r.name: r for r in pulled}
    out = []
    for f in wanted:
        r = by_name[f.name]
        if f.sha256 is None:
            oid = git_blob_oid(staging / f.name)
            if oid != f.git_oid:
                (staging / f.name).unlink(missing_ok=True)
                raise DownloadError(f"{where}: {f.name}: git blob id {oid[:16]}… is not the Hub's {f.git_oid[:16]}…; "
                                    f"{refusal}")
            r = FileResult(r.name, r.size, r.sha256, Check.HUB_GIT_OID, f"Hub's git blob id {f.git_oid[:16]}…",
                           r.source, r.fetched)
        out.append(r)
    return out


def git_blob_oid(path: Path) -> str:
    """git's id of a file's bytes: sha1 of 'blob <size>\\0' and the bytes."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class _Api:
    """The two Hub API calls a pull makes, each reply bounded and checked."""

    def __init__(self, base: str, repo: HubRepo):
        import requests

        self.base, self.repo = base, repo
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": "gpt2hub", "Accept": "application/json"})

    def commit(self) -> str:
        """The commit the revision names now (so every file comes from that one commit)."""
        url = f"{self.base}/api/models/{self.repo.repo_id}/revision/{quote(self.repo.revision, safe='')}"
        info, _ = self._get(url, revision=True)
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
            raise DownloadError(f"{self.repo}: {redact(url)} gave no commit id (sha) for the revision")
        return sha

    def files(self, commit: str) -> dict[str, HubFile]:
        """The commit's top-level files: name -> size, git blob id, LFS sha256 (following the tree's pages)."""
        url: str | None = f"{self.base}/api/models/{self.repo.repo_id}/tree/{commit}"
        out: dict[str, HubFile] = {}
        for _ in range(MAX_TREE_PAGES):
            if url is None:
                return out
            page, url = self._get(url)
            if not isinstance(page, list):
                raise DownloadError(f"{self.repo}: the Hub's file list is not a JSON list")
            for entry in page:
                f = _hub_file(entry, str(self.repo))
                if f is not None:
                    out[f.name] = f
        raise DownloadError(f"{self.repo}: the Hub's file list runs past {MAX_TREE_PAGES} pages")

    def _get(self, url: str, revision: bool = False) -> tuple[object, str | None]:
        """A JSON reply (at most MAX_API_BYTES) and the next page's URL, or a one-line DownloadError."""
        import requests

        from .errors import parse_json

        try:
            with self.session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as r:
                if r.status_code != 200:
                    self._refuse(r, url, revision)
                body = r.raw.read(MAX_API_BYTES + 1, decode_content=True)
                next_url = r.links.get("next", {}).get("url")
        except requests.RequestException as e:
            raise DownloadError(f"{self.repo}: {redact(url)}: {type(e).__name__} (is {redact(self.base)} a Hub?)") \
                from None
        if len(body) > MAX_API_BYTES:
            raise DownloadError(f"{self.repo}: {redact(url)}: reply larger than {MAX_API_BYTES:,} bytes")
        if next_url is not None and not next_url.startswith(self.base + "/"):
            raise DownloadError(f"{self.repo}: the Hub's next page is on another host ({redact(next_url)})")
        return parse_json(body, f"{self.repo}: {redact(url)}", DownloadError), next_url

    def _refuse(self, r, url: str, revision: bool) -> None:
        code = r.headers.get("X-Error-Code", "")
        if code == "RevisionNotFound" or (revision and code in ("RepoNotFound", "") and r.status_code in (401, 404)
                                          and self.repo.revision != DEFAULT_REVISION and self._repo_exists()):
            raise DownloadError(f"{self.repo}: no revision {self.repo.revision!r} in {self.repo.repo_id}")
        if code == "RepoNotFound" or r.status_code in (401, 404):
            raise DownloadError(f"{self.repo}: no such repository at {redact(self.base)} (or it is private or "
                                f"gated: gpt2hub reads public repos, without a token) ({r.status_code})")
        if code == "GatedRepo" or r.status_code == 403:
            raise DownloadError(f"{self.repo}: the repository is gated or forbidden ({r.status_code}); gpt2hub "
                                "reads public repos, without a token")
        raise DownloadError(f"{self.repo}: {redact(url)}: the Hub answered {r.status_code} {r.reason}")

    def _repo_exists(self) -> bool:
        """Whether the repo's default revision answers (a missing revision is then what was wrong)."""
        import requests

        try:
            with self.session.get(f"{self.base}/api/models/{self.repo.repo_id}/revision/{DEFAULT_REVISION}",
                                  stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as r:
                return r.status_code == 200
        except requests.RequestException:
            return False


def _hub_file(entry: object, where: str) -> HubFile | None:
    """A tree entry as a HubFile (None: a folder, or a file in one: GPT-2's files are at the top), checked."""
    if not isinstance(entry, dict) or entry.get("type") != "file":
        return None
    path, size, oid, lfs = entry.get("path"), entry.get("size"), entry.get("oid"), entry.get("lfs")
    if not isinstance(path, str) or "/" in path:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(oid, str) \
            or not _COMMIT.fullmatch(oid):
        raise DownloadError(f"{where}: the Hub's entry for {path[:80]!r} has no valid size and git blob id")
    sha256 = None
    if lfs is not None:
        sha256 = lfs.get("oid") if isinstance(lfs, dict) else None
        lfs_size = lfs.get("size") if isinstance(lfs, dict) else None
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or lfs_size != size:
            raise DownloadError(f"{where}: the Hub's LFS entry for {path[:80]!r} has no valid sha256 and size")
    return HubFile(path, size, oid, sha256)
