"""A stand-in for the Hugging Face Hub's write API on 127.0.0.1, for tests. It is not the real Hub.

It implements the HTTP calls huggingface_hub 2.x makes for `create_repo`, `create_branch` and
`create_commit` on the legacy (non-Xet) path, and records what it receives:

    POST /api/repos/create                           {"name", "organization", "visibility"?, "type"}
    POST /api/validate-yaml                          README metadata check
    POST /api/models/{repo}/branch/{branch}          create a branch from main
    POST /api/models/{repo}/preupload/{rev}          "regular" or "lfs" per file, and the remote oid
    POST /{repo}.git/info/lfs/objects/batch          git-lfs batch API; no "actions" = already stored
    PUT  /lfs/{oid}                                  the LFS object's bytes (sha256 checked)
    POST /api/models/{repo}/commit/{rev}             NDJSON: header, file (base64), lfsFile
    GET  /api/models/{repo}/revision/{rev}           repo info (used when a commit would be empty)

Every request but the LFS PUT (a pre-signed URL on the Hub) needs `Authorization: Bearer <token>`;
any other token gets 401. Xet must be off in
the client (huggingface_hub.constants.HF_HUB_DISABLE_XET), or it asks for a xet-write-token (404 here).
Files at least LFS_THRESHOLD bytes, or whose sample has a NUL byte, go to LFS, as on the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 10 * 1024 * 1024

TOKEN = "hf_test_token"  # what the tests' stand-in is started with


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, dict]] = field(default_factory=lambda: {"main": {}})  # branch -> path -> entry
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})


@dataclass
class Commit:
    repo: str
    revision: str
    summary: str
    description: str
    files: dict[str, dict]  # path -> {"kind": "regular"|"lfs", "content": bytes | None, "oid", "size"}
    oid: str


class HubState:
    """What the stand-in holds: repos, LFS objects, commits and a log of every request."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.commits: list[Commit] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def file(self, repo: str, path: str, revision: str = "main") -> bytes:
        entry = self.repos[repo].branches[revision][path]
        return entry["content"] if entry["kind"] == "regular" else self.lfs[entry["oid"]]


class _Handler(BaseHTTPRequestHandler):
    server: "HubServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: object | None = None, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        body = self._body()
        with state.lock:
            state.requests.append((method, path))
        presigned = method == "PUT" and path.startswith("/lfs/")  # like the Hub's pre-signed storage URLs
        if not presigned and self.headers.get("Authorization") != f"Bearer {state.token}":
            return self._reply(401, {"error": "Invalid credentials in Authorization header"},
                               {"X-Error-Message": "Invalid credentials in Authorization header"})
        for pattern, m, handler in _ROUTES:
            match = re.fullmatch(pattern, path)
            if match and m == method:
                with state.lock:
                    return handler(self, state, body, *match.groups())
        self._reply(404, {"error": f"no route {method} {path}"}, {"X-Error-Code": "EntryNotFound"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")


def _repo_or_404(h: _Handler, state: HubState, repo: str) -> Repo | None:
    if repo not in state.repos:
        h._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return None
    return state.repos[repo]


def _create_repo(h, state, body):
    req = json.loads(body)
    repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
    if repo in state.repos:
        return h._reply(409, {"error": "You already created this model repo", "url": f"{h.server.url}/{repo}"})
    state.repos[repo] = Repo(private=req.get("visibility") == "private")
    h._reply(200, {"url": f"{h.server.url}/{repo}", "name": repo})


def _validate_yaml(h, state, body):
    content = json.loads(body)["content"]
    if not content.startswith("---\n") or "\n---\n" not in content[4:]:
        return h._reply(400, {"errors": [{"message": "no YAML front matter"}], "warnings": []})
    h._reply(200, {"errors": [], "warnings": []})


def _create_branch(h, state, body, repo, branch):
    r = _repo_or_404(h, state, repo)
    if r is None:
        return
    if branch in r.branches:
        return h._reply(409, {"error": "Reference already exists"})
    r.branches[branch] = dict(r.branches["main"])
    r.heads[branch] = r.heads["main"]
    h._reply(200, {})


def _preupload(h, state, body, repo, rev):
    r = _repo_or_404(h, state, repo)
    if r is None:
        return
    files = []
    for f in json.loads(body)["files"]:
        sample = base64.b64decode(f["sample"])
        lfs = f["size"] >= LFS_THRESHOLD or b"\0" in sample
        existing = r.branches.get(rev, {}).get(f["path"])
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                      "oid": existing["oid"] if existing else None})
    h._reply(200, {"files": files, "commitOid": r.heads.get(rev)})


def _lfs_batch(h, state, body, repo):
    if _repo_or_404(h, state, repo) is None:
        return
    objects = []
    for o in json.loads(body)["objects"]:
        if o["oid"] in state.lfs:
            objects.append({"oid": o["oid"], "size": o["size"]})  # no actions: already stored
        else:
            objects.append({"oid": o["oid"], "size": o["size"],
                            "actions": {"upload": {"href": f"{h.server.url}/lfs/{o['oid']}", "header": {}}}})
    h._reply(200, {"transfer": "basic", "objects": objects})


def _lfs_put(h, state, body, oid):
    if hashlib.sha256(body).hexdigest() != oid:
        return h._reply(400, {"error": "sha256 of the body differs from the oid"})
    state.lfs[oid] = body
    h._reply(200, {})


def _commit(h, state, body, repo, rev):
    r = _repo_or_404(h, state, repo)
    if r is None:
        return
    if rev not in r.branches:
        return h._reply(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    header = next(x["value"] for x in lines if x["key"] == "header")
    files: dict[str, dict] = {}
    for x in lines:
        v = x["value"]
        if x["key"] == "file":
            content = base64.b64decode(v["content"])
            files[v["path"]] = {"kind": "regular", "content": content, "oid": git_blob_oid(content), "size": len(content)}
        elif x["key"] == "lfsFile":
            if v["oid"] not in state.lfs or len(state.lfs[v["oid"]]) != v["size"]:
                return h._reply(422, {"error": f"LFS object {v['oid']} for {v['path']} was never uploaded"})
            files[v["path"]] = {"kind": "lfs", "content": None, "oid": v["oid"], "size": v["size"]}
    oid = hashlib.sha1(f"{repo}{rev}{len(state.commits)}".encode()).hexdigest()
    state.commits.append(Commit(repo, rev, header.get("summary", ""), header.get("description", ""), files, oid))
    r.branches[rev].update(files)
    r.heads[rev] = oid
    h._reply(200, {"commitOid": oid, "commitUrl": f"{h.server.url}/{repo}/commit/{oid}", "pullRequestUrl": None})


def _revision(h, state, body, repo, rev):
    r = _repo_or_404(h, state, repo)
    if r is None:
        return
    h._reply(200, {"id": repo, "sha": r.heads.get(rev), "private": r.private,
                   "siblings": [{"rfilename": p} for p in sorted(r.branches.get(rev, {}))]})


_REPO = r"([^/]+/[^/]+)"
_ROUTES = [
    (r"/api/repos/create", "POST", _create_repo),
    (r"/api/validate-yaml", "POST", _validate_yaml),
    (rf"/api/models/{_REPO}/branch/([^/]+)", "POST", _create_branch),
    (rf"/api/models/{_REPO}/preupload/([^/]+)", "POST", _preupload),
    (rf"/{_REPO}\.git/info/lfs/objects/batch", "POST", _lfs_batch),
    (r"/lfs/([0-9a-f]{64})", "PUT", _lfs_put),
    (rf"/api/models/{_REPO}/commit/([^/]+)", "POST", _commit),
    (rf"/api/models/{_REPO}/revision/([^/]+)", "GET", _revision),
]


class HubServer(ThreadingHTTPServer):
    """`with HubServer(token) as hub:` serves on hub.url until the block ends."""

    daemon_threads = True

    def __init__(self, token: str = "hf_test_token"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = HubState(token)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
