"""A loopback fake of the Hugging Face Hub HTTP API, for tests that drive the real `huggingface_hub` client.

It speaks the routes that huggingface_hub 2.x uses to create a repo, upload a folder through the LFS path
(``HF_HUB_DISABLE_XET=1``), open a PR, create a branch and download files (see HUB-API.md in the shared design notes).
Everything lives in memory: repos with branches, PR refs and commits, and an LFS object store.

    server = HubServer(token="hf_test_token").start()
    ... HF_ENDPOINT=server.endpoint ...
    server.stop()

Failure injection (plain attributes, cleared by :meth:`HubServer.reset`):

* ``reject_yaml``: truthy -> ``/api/validate-yaml`` answers 400 with an error list (a string is used as the
  message); the client's ``create_commit``/``upload_folder`` then raises ``ValueError`` before uploading.
* ``drop_next_lfs_upload``: an int (``True`` = 1); that many LFS PUTs are read and then answered by closing the
  connection without a response. The client retries a dropped PUT after ~1 s, so ``True`` exercises the retry.
* ``race_next_commit``: truthy -> before handling the next commit POST the server itself pushes a commit to the
  target branch, so a commit that sent the previous head as ``parentCommit`` gets 412.
  :meth:`HubServer.concurrent_commit` does the same on demand.
* ``on_request``: a callable given the route name (a method name of ``HubServer``: ``"commit"``, ``"lfs_put"``,
  ...) of each request before it is handled; when it returns true the request is read and answered by closing
  the connection without a response, and nothing is done. Tests use it to drop one route, or to kill a client
  at an exact request.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024  # files above this size are LFS, as on the Hub
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".zip")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SHA_COUNTER = itertools.count()


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class Blob:
    """One file of a commit's tree: regular content, or the sha256 of an object in the LFS store."""

    size: int
    git_oid: str
    data: bytes | None = None
    lfs_oid: str | None = None

    @classmethod
    def regular(cls, data: bytes) -> Blob:
        return cls(size=len(data), git_oid=git_blob_sha(data), data=data)

    @classmethod
    def lfs(cls, oid: str, size: int) -> Blob:
        return cls(size=size, git_oid=git_blob_sha(lfs_pointer(oid, size)), lfs_oid=oid)


@dataclass
class Commit:
    sha: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, Blob]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    """A repo: ``refs`` maps branch names ("main") and PR refs ("refs/pr/1") to commit shas."""

    repo_type: str
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    num_prs: int = 0
    created_at: str = field(default_factory=_now)

    def add_commit(
        self, parent: str | None, files: dict[str, Blob], summary: str, description: str = ""
    ) -> str:
        seed = f"{parent}|{sorted((p, b.git_oid) for p, b in files.items())}|{summary}|{next(_SHA_COUNTER)}"
        sha = hashlib.sha1(seed.encode() + os.urandom(8)).hexdigest()
        self.commits[sha] = Commit(sha, parent, summary, description, dict(files))
        return sha

    def resolve(self, revision: str) -> str:
        """Branch, ``refs/heads/<branch>``, ``refs/pr/N`` or a full commit sha -> commit sha."""
        name = revision.removeprefix("refs/heads/")
        if name in self.refs:
            return self.refs[name]
        if revision in self.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class HubError(Exception):
    """An error answer: status, message (JSON ``error`` and ``X-Error-Message``), optional ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, body=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.body, self.headers = body or {}, headers or {}


class _DropConnection(Exception):
    """Raised by a route to close the connection without any response."""


_REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"  # "owner/name", or a bare "name"
_API = rf"/api/(?P<type>models|datasets|spaces)/{_REPO}"  # API routes name the repo type
_GIT = rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}"  # git-side routes: no prefix for models
_REV = r"(?P<rev>[^/]+)"  # URL-quoted by the client: "refs%2Fpr%2F1"
# (methods, path regex, HubServer method, requires a valid token)
ROUTES = [
    (("POST",), r"/api/repos/create", "create_repo", True),
    (("POST",), r"/api/validate-yaml", "validate_yaml", False),
    (("GET",), r"/api/whoami-v2", "whoami", True),
    (("POST",), rf"{_API}/preupload/{_REV}", "preupload", True),
    (("POST",), rf"{_API}/commit/{_REV}", "commit", True),
    (("POST",), rf"{_API}/branch/(?P<branch>[^/]+)", "create_branch", True),
    (("GET",), rf"{_API}/refs", "list_refs", False),
    (("GET",), rf"{_API}/tree/{_REV}(?:/(?P<path>.*))?", "tree", False),
    (("GET",), rf"{_API}(?:/revision/{_REV})?", "repo_info", False),
    (("POST",), rf"{_GIT}\.git/info/lfs/objects/batch", "lfs_batch", True),
    (("PUT",), r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put", False),
    (("GET", "HEAD"), rf"{_GIT}/resolve/{_REV}/(?P<path>.+)", "resolve", False),
]
ROUTES = [(methods, re.compile(p), name, auth) for methods, p, name, auth in ROUTES]


def _route(method: str, path: str) -> tuple[str, bool, re.Match]:
    """The ``HubServer`` method name, whether a token is required, and the match, for a request."""
    for methods, pattern, name, needs_auth in ROUTES:
        match = pattern.fullmatch(path)
        if method in methods and match:
            return name, needs_auth, match
    raise HubError(404, f"Sorry, we can't find the page you are looking for ({method} {path})")


class HubServer:
    """The fake Hub: a ThreadingHTTPServer on 127.0.0.1 (port 0 = a free one) served from a daemon thread."""

    def __init__(self, token: str, user: str = "test-user", host: str = "127.0.0.1", port: int = 0):
        self.token, self.user = token, user
        self._lock = threading.RLock()
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all repos and LFS objects and clear the failure injections and the request log."""
        with self._lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.lfs_objects: dict[str, bytes] = {}
            self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
            self.errors: list[str] = []  # tracebacks of requests the fake Hub failed on (500)
            self.reject_yaml: bool | str = False
            self.drop_next_lfs_upload: int = 0
            self.dropped_lfs_uploads = 0
            self.race_next_commit = False
            self.on_request: Callable[[str], object] | None = None
            self.tree_page_size = 1000

    # -- helpers for tests ------------------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, "Repository not found", "RepoNotFound") from None

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The content of every file of ``repo_id`` at ``revision``."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            tree = repo.commits[repo.resolve(revision)].files
            return {p: b.data if b.lfs_oid is None else self.lfs_objects[b.lfs_oid] for p, b in tree.items()}

    def concurrent_commit(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        """Push a commit (adding ``concurrent-<n>.txt``) to ``branch`` behind the client's back; returns its sha."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            head = repo.resolve(branch)
            files = dict(repo.commits[head].files)
            name = f"concurrent-{len(repo.commits)}.txt"
            files[name] = Blob.regular(b"written by someone else\n")
            repo.refs[branch.removeprefix("refs/heads/")] = repo.add_commit(head, files, "Concurrent edit")
            return repo.refs[branch.removeprefix("refs/heads/")]

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _readable_repo(self, m: dict, authed: bool) -> Repo:
        repo = self.repo(m["repo"], REPO_TYPES[m.get("type") or "models"])
        if repo.private and not authed:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _upload_mode(self, path: str, size: int) -> str:
        return "lfs" if path.endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD else "regular"

    # -- routes: each takes the route's match groups, the parsed query, the body and the auth flag -----------
    def create_repo(self, m, query, body, authed):
        """``POST /api/repos/create``: 200 ``{url}``; an existing repo is 409 whose body still has ``url``."""
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if (repo_type, repo_id) in self.repos:
            url = self._url(self.repos[(repo_type, repo_id)])
            raise HubError(409, "You already created this model repo", body={"url": url})
        repo = Repo(repo_type, repo_id, private=payload.get("visibility", "public") != "public")
        repo.refs["main"] = repo.add_commit(
            None, {".gitattributes": Blob.regular(GITATTRIBUTES)}, "initial commit"
        )
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": self._url(repo), "name": repo_id, "id": repo_id}, {}

    def validate_yaml(self, m, query, body, authed):
        """``POST /api/validate-yaml``: checks the README's YAML front matter (and ``reject_yaml``)."""
        content = json.loads(body or b"{}").get("content", "")
        errors = []
        if self.reject_yaml:
            msg = (
                self.reject_yaml
                if isinstance(self.reject_yaml, str)
                else '"license" must be a valid license id'
            )
            errors.append({"message": msg})
        elif content.startswith("---"):
            try:
                import yaml

                meta = yaml.safe_load(content.split("---", 2)[1]) if content.count("---") >= 2 else None
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except ImportError:
                pass
            except yaml.YAMLError as e:
                errors.append({"message": f"Invalid YAML: {e}"})
        if errors:
            raise HubError(400, "Invalid metadata in README.md", body={"errors": errors, "warnings": []})
        return 200, {"errors": [], "warnings": []}, {}

    def whoami(self, m, query, body, authed):
        """``GET /api/whoami-v2``: the user owning the accepted token."""
        return (
            200,
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": "Test User",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
            },
            {},
        )

    def preupload(self, m, query, body, authed):
        """``POST /api/{type}s/{repo}/preupload/{rev}``: upload mode per file, and the oid of a file already there."""
        repo = self._readable_repo(m, authed)
        tree = repo.commits[repo.resolve(m["rev"])].files
        out = []
        for f in json.loads(body)["files"]:
            mode = self._upload_mode(f["path"], f["size"])
            old = tree.get(f["path"])
            oid = None if old is None else (old.lfs_oid if mode == "lfs" else old.git_oid)
            out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": out, "commitOid": repo.resolve(m["rev"])}, {}

    def lfs_batch(self, m, query, body, authed):
        """``POST /{repo}.git/info/lfs/objects/batch``: basic-transfer upload actions for objects not stored yet."""
        self._readable_repo(m, authed)
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}

    def lfs_put(self, m, query, body, authed):
        """``PUT /_lfs/{oid}``: the storage upload (a presigned URL on the Hub, so no token); checks the sha256."""
        if self.drop_next_lfs_upload:
            self.drop_next_lfs_upload = int(self.drop_next_lfs_upload) - 1
            self.dropped_lfs_uploads += 1
            raise _DropConnection
        if hashlib.sha256(body).hexdigest() != m["oid"]:
            raise HubError(400, "Uploaded content does not match the oid")
        self.lfs_objects[m["oid"]] = body
        return 200, None, {"ETag": f'"{m["oid"]}"'}

    def commit(self, m, query, body, authed):
        """``POST /api/{type}s/{repo}/commit/{rev}``: NDJSON header + file/lfsFile/deletedFile/deletedFolder.

        A stale ``parentCommit`` is 412. ``create_pr=1`` opens ``refs/pr/N`` from ``rev`` and leaves ``rev`` alone.
        """
        repo = self._readable_repo(m, authed)
        revision = m["rev"]
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.refs:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        create_pr = query.get("create_pr") == "1"
        if self.race_next_commit:
            self.race_next_commit = False
            self.concurrent_commit(repo.repo_id, branch, repo.repo_type)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), None)
        if header is None:
            raise HubError(400, "Missing header line in the commit payload")
        head = repo.refs[branch]
        parent = header.get("parentCommit")
        if parent is not None and parent != head and not (create_pr and parent in repo.commits):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        base = parent if create_pr and parent else head
        files = dict(repo.commits[base].files)
        for item in lines:
            key, v = item["key"], item["value"]
            path = v.get("path", "")
            if key == "file":
                files[path] = Blob.regular(base64.b64decode(v["content"]))
            elif key == "lfsFile":
                if v["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS file {path} ({v['oid']}) was not uploaded")
                files[path] = Blob.lfs(v["oid"], len(self.lfs_objects[v["oid"]]))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            elif key != "header":
                raise HubError(400, f"Unknown commit operation {key!r}")
        sha = repo.add_commit(base, files, header.get("summary", ""), header.get("description", ""))
        answer = {"success": True, "commitOid": sha, "commitUrl": f"{self._url(repo)}/commit/{sha}"}
        if create_pr:
            repo.num_prs += 1
            repo.refs[f"refs/pr/{repo.num_prs}"] = sha
            answer["pullRequestUrl"] = f"{self._url(repo)}/discussions/{repo.num_prs}"
        else:
            repo.refs[branch] = sha
        return 200, answer, {}

    def create_branch(self, m, query, body, authed):
        """``POST /api/{type}s/{repo}/branch/{branch}`` ``{startingPoint?}`` (``HfApi.create_branch``)."""
        repo = self._readable_repo(m, authed)
        branch = m["branch"]
        if branch.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", branch):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo.refs[branch] = repo.resolve(start)
        return 200, {}, {}

    def list_refs(self, m, query, body, authed):
        """``GET /api/{type}s/{repo}/refs`` (``HfApi.list_repo_refs``)."""
        repo = self._readable_repo(m, authed)

        def ref(name, full):
            return {
                "name": name,
                "ref": full,
                "targetCommit": repo.refs[full if full.startswith("refs/pr/") else name],
            }

        branches = [ref(n, f"refs/heads/{n}") for n in repo.refs if not n.startswith("refs/")]
        answer = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs") == "1":
            answer["pullRequests"] = [
                ref(n.removeprefix("refs/pr/"), n) for n in repo.refs if n.startswith("refs/pr/")
            ]
        return 200, answer, {}

    def repo_info(self, m, query, body, authed):
        """``GET /api/{type}s/{repo}[/revision/{rev}]``: ``{id, sha, siblings, private, ...}`` (``repo_info``)."""
        repo = self._readable_repo(m, authed)
        sha = repo.resolve(m.get("rev") or "main")
        commit = repo.commits[sha]
        return (
            200,
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            },
            {},
        )

    def tree(self, m, query, body, authed):
        """``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=``: files and folders, paged with ``Link``."""
        repo = self._readable_repo(m, authed)
        files = repo.commits[repo.resolve(m["rev"])].files
        base = (m.get("path") or "").strip("/")
        prefix = base + "/" if base else ""
        if base and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"{base} does not exist in the tree", "EntryNotFound")
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(
                    folder, {"type": "directory", "oid": git_blob_sha(folder.encode()), "size": 0}
                )
            if recursive or len(parts) == 1:
                blob = files[path]
                entry = {"type": "file", "oid": blob.git_oid, "size": blob.size}
                if blob.lfs_oid is not None:
                    pointer = lfs_pointer(blob.lfs_oid, blob.size)
                    entry["lfs"] = {"oid": blob.lfs_oid, "size": blob.size, "pointerSize": len(pointer)}
                entries[path] = entry
        listing = [{**e, "path": p} for p, e in sorted(entries.items())]
        start = int(query.get("cursor", "0"))
        page = listing[start : start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(listing):
            path = f"/api/{m['type']}/{repo.repo_id}/tree/{quote(m['rev'], safe='')}"
            if base:
                path += "/" + quote(base, safe="")
            params = f"recursive={str(recursive).lower()}&cursor={start + self.tree_page_size}"
            headers["Link"] = f'<{self.endpoint}{path}?{params}>; rel="next"'
        return 200, page, headers

    def resolve(self, m, query, body, authed):
        """``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` and for LFS
        files ``X-Linked-Etag``/``X-Linked-Size`` (served directly, not redirected). Missing: ``EntryNotFound``."""
        repo = self._readable_repo(m, authed)
        sha = repo.resolve(m["rev"])
        blob = repo.commits[sha].files.get(m["path"])
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if blob.lfs_oid is None:
            data = blob.data
            headers["ETag"] = f'"{blob.git_oid}"'
        else:
            data = self.lfs_objects[blob.lfs_oid]
            headers.update({"ETag": f'"{blob.lfs_oid}"', "X-Linked-Etag": f'"{blob.lfs_oid}"'})
            headers["X-Linked-Size"] = str(blob.size)
        return 200, data, headers


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, finds its route in ``ROUTES``, checks the token and writes the answer."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._read_body()
        hub.requests.append((method, url.path))
        auth = self.headers.get("Authorization", "")
        try:
            if auth and auth != f"Bearer {hub.token}":
                raise HubError(401, "Invalid credentials in Authorization header")
            name, needs_auth, match = _route(method, url.path)
            if needs_auth and not auth:
                raise HubError(401, "You must be authenticated to access this resource")
            groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            if hub.on_request is not None and hub.on_request(name):
                raise _DropConnection
            with hub._lock:
                status, payload, headers = getattr(hub, name)(groups, query, body, bool(auth))
        except _DropConnection:
            self.close_connection = True
            return
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            status, payload = e.status, {"error": e.message, **e.body}
        except Exception as e:  # a bug in the fake Hub: answer 500 and keep it for the test to report
            hub.errors.append(f"{method} {self.path}: {traceback.format_exc()}")
            status, payload, headers = 500, {"error": repr(e)}, {"X-Error-Message": repr(e)[:200]}
        self._send(method, status, payload, headers)

    def _send(self, method: str, status: int, payload, headers: dict) -> None:
        if payload is None or isinstance(payload, bytes):
            data = payload or b""
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if status == 200 and byte_range and method == "GET":
            start, end = int(byte_range[1]), min(int(byte_range[2] or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start : end + 1]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)
