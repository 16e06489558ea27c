"""Hub references (`org/repo[:QUANT]`) downloaded by the real huggingface_hub client from a fake Hub.

The fake Hub is two threaded HTTP servers on 127.0.0.1: the Hub itself (the tree listing behind
`HfApi.list_repo_files` and the `/resolve/` HEAD that `hf_hub_download` asks for metadata) and a "CDN" on
another port that serves the bytes, reached the way the real Hub sends LFS files: a 302 from `/resolve/` carrying
`X-Repo-Commit`, `X-Linked-Etag` and `X-Linked-Size`. Any other request is recorded as unexpected and fails
the test, so the fake stays exactly what the installed client calls.

huggingface_hub reads `HF_ENDPOINT` and its cache folder when it is imported, so every resolution runs in a
fresh interpreter with those set to the fake Hub and a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest
from gguf import GGUFValueType as T, LlamaFileType

from ggufpair.format.model_info import read_model_info
from tests.ggufmake import model_kv, vocab_kv, write_gguf

pytestmark = pytest.mark.integration  # 13 fresh interpreters importing huggingface_hub: 6-7 s

ROOT = Path(__file__).resolve().parents[2]

TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
BLOB = re.compile(r"^/blobs/(?P<sha>[0-9a-f]{64})$")

RUN = """
import json, sys
from ggufpair.errors import GgufpairError
from ggufpair.locate import resolve

query, download = sys.argv[1], sys.argv[2] == "1"
events = []
try:
    path = resolve(query, candidates=[], download=download, on_event=events.append)
except GgufpairError as e:
    out = {"error": type(e).__name__, "message": e.message, "hint": e.hint, "events": events}
else:
    out = {"path": str(path), "events": events}
print("RESULT " + json.dumps(out))
"""


# --- the fake Hub -----------------------------------------------------------------------------------


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) in arrival order
    unexpected: list[str] = field(default_factory=list)
    endpoint: str = ""
    cdn: str = ""
    listing_order: str = "sorted"  # or "reversed": the Hub does not promise an order

    def add(self, repo_id: str, files: dict[str, bytes]) -> Repo:
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = Repo(files, commit)
        return self.repos[repo_id]

    def blob(self, sha: str) -> bytes | None:
        for repo in self.repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
        return None


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

        def send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def repo_not_found(self) -> None:
            self.send(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found",
                            "Content-Type": "application/json"}, b'{"error":"Repository not found"}')

        def route(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, f"{role}{path}"))
            if role == "cdn" and self.command == "GET" and (m := BLOB.match(path)) and hub.blob(m["sha"]) is not None:
                name = parse_qs(urlsplit(self.path).query).get("filename", ["blob"])[0]
                return self.send(200, {"Content-Type": "application/octet-stream", "ETag": f'"{m["sha"]}"',
                                       "Content-Disposition": f'inline; filename="{name}";', "Accept-Ranges": "bytes"},
                                 hub.blob(m["sha"]))
            if role == "hub" and self.command == "GET" and (m := TREE.match(path)):
                return self.tree(m["repo"], m["rev"])
            if role == "hub" and self.command == "HEAD" and (m := RESOLVE.match(path)):
                return self.resolve(m["repo"], m["rev"], unquote(m["path"]))
            hub.unexpected.append(f"{self.command} {role}{self.path}")
            self.send(404, {"Content-Type": "text/plain"}, b"not faked")

        def tree(self, repo_id: str, rev: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.repo_not_found()
            if rev != "main":
                return self.send(404, {"X-Error-Code": "RevisionNotFound"}, b"{}")
            entries = []
            for name in sorted({str(p) for f in repo.files for p in Path(f).parents if str(p) != "."}):
                entries.append({"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "path": name})
            for name, data in repo.files.items():
                entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                                "path": name, "lfs": {"oid": repo.sha256(name), "size": len(data), "pointerSize": 134}})
            entries.sort(key=lambda e: e["path"], reverse=hub.listing_order == "reversed")
            self.send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

        def resolve(self, repo_id: str, rev: str, name: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self.repo_not_found()
            if name not in repo.files or rev not in ("main", repo.commit):
                return self.send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
            sha = repo.sha256(name)
            location = f"{hub.cdn}/blobs/{sha}?{urlencode({'filename': Path(name).name})}"  # a signed CDN address
            body = f"Found. Redirecting to {location}".encode()
            self.send(302, {"Location": location, "X-Repo-Commit": repo.commit,
                            "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(repo.files[name])),
                            "ETag": f'W/"{hashlib.sha1(body).hexdigest()}"', "Content-Type": "text/plain"}, body)

        do_GET = do_HEAD = do_POST = do_PUT = route

    return Handler


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    servers = []
    for role in ("hub", "cdn"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, role))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
    hub.endpoint, hub.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    yield hub
    for server in servers:
        server.shutdown()
        server.server_close()
    assert not hub.unexpected, f"requests the fake Hub does not implement: {hub.unexpected}"


@dataclass
class Outcome:
    path: Path | None
    error: str | None
    message: str | None
    hint: str | None
    events: list[str]
    stderr: str


def hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """This process's environment with huggingface_hub pointed at `hub`: no token, no proxy, a private cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("HF_", "HUGGINGFACE")) and "proxy" not in k.lower()}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture
def hub_resolve(fake_hub, tmp_path):
    """hub_resolve(query, download=True) -> Outcome: `locate.resolve` in a fresh interpreter using the fake Hub."""
    cache = tmp_path / "hf-cache"

    def run(query: str, download: bool = True) -> Outcome:
        proc = subprocess.run([sys.executable, "-c", RUN, query, "1" if download else "0"], cwd=tmp_path,
                              env=hub_env(fake_hub, tmp_path), capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, f"resolution crashed:\n{proc.stdout}\n{proc.stderr}"
        out = json.loads(lines[-1].removeprefix("RESULT "))
        return Outcome(Path(out["path"]) if "path" in out else None, out.get("error"), out.get("message"),
                       out.get("hint"), out["events"], proc.stderr)

    run.cache = cache
    return run


def snapshot(cache: Path, repo_id: str, repo: Repo) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / repo.commit


# --- tiny GGUF files ----------------------------------------------------------------------------------


def head_kv(name: str, quant: str) -> dict:
    """A loadable model's metadata; `general.file_type` says `quant` (ModelInfo.quant reads it back)."""
    file_type = LlamaFileType[f"MOSTLY_{quant}"].value
    return {**model_kv(name=name), **vocab_kv(), "general.file_type": (T.UINT32, file_type)}


def gguf_bytes(tmp_path: Path, quant: str, name: str = "tiny") -> bytes:
    return write_gguf(tmp_path / f"src-{name}-{quant}.gguf", head_kv(name, quant)).read_bytes()


def split_bytes(tmp_path: Path, quant: str) -> list[bytes]:
    """A 2-shard model (llama.cpp's split.* keys): the vocab and one tensor in the first, more tensors in the second."""
    shards = [[("token_embd.weight", (8, 4)), ("output_norm.weight", (8,))],
              [("blk.0.attn_q.weight", (8, 8)), ("output.weight", (8, 16))]]
    out = []
    for no, tensors in enumerate(shards):
        split = {"split.no": (T.UINT16, no), "split.count": (T.UINT16, len(shards)),
                 "split.tensors.count": (T.INT32, sum(map(len, shards)))}
        kv = {**head_kv("split", quant), **split} if no == 0 else {"general.architecture": (T.STRING, "llama"), **split}
        out.append(write_gguf(tmp_path / f"src-split-{quant}-{no}.gguf", kv, tensors).read_bytes())
    return out


def downloads(hub: FakeHub) -> list[str]:
    return [p for m, p in hub.requests if p.startswith("cdn/")]


# --- cases --------------------------------------------------------------------------------------------


def test_quant_picks_its_file_among_several(fake_hub, hub_resolve, tmp_path):
    q4, q8 = gguf_bytes(tmp_path, "Q4_K_M"), gguf_bytes(tmp_path, "Q8_0")
    repo = fake_hub.add("org/tiny-GGUF", {"README.md": b"# tiny\n", ".gitattributes": b"*.gguf filter=lfs\n",
                                          "tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": q8})
    got = hub_resolve("org/tiny-GGUF:Q4_K_M")
    assert got.error is None, got.message
    assert got.path == snapshot(hub_resolve.cache, "org/tiny-GGUF", repo) / "tiny-Q4_K_M.gguf"
    assert got.path.read_bytes() == q4
    assert read_model_info(got.path).quant == "Q4_K_M"
    assert got.events == ["downloading org/tiny-GGUF/tiny-Q4_K_M.gguf"]
    assert downloads(fake_hub) == [f"cdn/blobs/{repo.sha256('tiny-Q4_K_M.gguf')}"]  # the Q8_0 file never fetched
    assert not (got.path.parent / "tiny-Q8_0.gguf").exists()
    assert ("HEAD", "hub/org/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf") in fake_hub.requests


def test_quant_is_matched_case_insensitively(fake_hub, hub_resolve, tmp_path):
    q4, q8 = gguf_bytes(tmp_path, "Q4_K_M"), gguf_bytes(tmp_path, "Q8_0")
    fake_hub.add("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": q8})
    got = hub_resolve("org/tiny-GGUF:q8_0")
    assert got.error is None, got.message
    assert got.path.name == "tiny-Q8_0.gguf" and got.path.read_bytes() == q8


@pytest.mark.parametrize("order", ["sorted", "reversed"])  # list_repo_tree promises no order
def test_split_model_downloads_every_shard_and_returns_the_first(fake_hub, hub_resolve, tmp_path, order):
    fake_hub.listing_order = order
    q4, q8 = split_bytes(tmp_path, "Q4_K_M"), split_bytes(tmp_path, "Q8_0")
    names = ["model-Q4_K_M-00001-of-00002.gguf", "model-Q4_K_M-00002-of-00002.gguf"]
    repo = fake_hub.add("org/split-GGUF", {**dict(zip(names, q4)), "model-Q8_0-00001-of-00002.gguf": q8[0],
                                           "model-Q8_0-00002-of-00002.gguf": q8[1]})
    got = hub_resolve("org/split-GGUF:Q4_K_M")
    assert got.error is None, got.message
    folder = snapshot(hub_resolve.cache, "org/split-GGUF", repo)
    assert got.path == folder / names[0]
    assert sorted(p.name for p in folder.iterdir()) == names  # both Q4_K_M shards, no Q8_0 shard
    assert [(folder / n).read_bytes() for n in names] == q4
    assert sorted(got.events) == [f"downloading org/split-GGUF/{n}" for n in names]
    info = read_model_info(got.path)
    assert info.path == got.path and info.shards == tuple(folder / n for n in names)
    assert info.n_tensors == 4 and info.quant == "Q4_K_M"
    assert info.file_size == sum(map(len, q4))


def test_split_model_in_a_quant_subfolder(fake_hub, hub_resolve, tmp_path):
    """Large repos keep each split quant in its own folder (`Q4_K_M/name-00001-of-00002.gguf`)."""
    q4 = split_bytes(tmp_path, "Q4_K_M")
    names = ["Q4_K_M/big-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/big-Q4_K_M-00002-of-00002.gguf"]
    repo = fake_hub.add("org/big-GGUF", {**dict(zip(names, q4)), "big-Q8_0.gguf": gguf_bytes(tmp_path, "Q8_0")})
    got = hub_resolve("org/big-GGUF:Q4_K_M")
    assert got.error is None, got.message
    folder = snapshot(hub_resolve.cache, "org/big-GGUF", repo)
    assert got.path == folder / names[0]
    assert [(folder / n).read_bytes() for n in names] == q4
    assert read_model_info(got.path).shards == tuple(folder / n for n in names)


def test_several_files_without_a_quant_is_a_usage_error_listing_them(fake_hub, hub_resolve, tmp_path):
    q8 = split_bytes(tmp_path, "Q8_0")
    fake_hub.add("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": gguf_bytes(tmp_path, "Q4_K_M"),
                                   "tiny-Q8_0-00001-of-00002.gguf": q8[0], "tiny-Q8_0-00002-of-00002.gguf": q8[1]})
    got = hub_resolve("org/tiny-GGUF")
    assert got.error == "UsageError"
    assert got.message.splitlines() == ["org/tiny-GGUF has several GGUF files:", "  tiny-Q4_K_M.gguf",
                                        "  tiny-Q8_0-00001-of-00002.gguf"]  # a split model once, by its first shard
    assert got.hint == "name one: org/tiny-GGUF:QUANT"
    assert got.events == [] and downloads(fake_hub) == []


def test_quant_matching_nothing_is_model_not_found(fake_hub, hub_resolve, tmp_path):
    fake_hub.add("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": gguf_bytes(tmp_path, "Q4_K_M"),
                                   "tiny-Q8_0.gguf": gguf_bytes(tmp_path, "Q8_0")})
    got = hub_resolve("org/tiny-GGUF:Q5_K_S")
    assert got.error == "ModelNotFoundError"
    assert got.message == "org/tiny-GGUF has no GGUF file for Q5_K_S"
    assert downloads(fake_hub) == []


def test_missing_repo_is_model_not_found_with_a_clear_message(fake_hub, hub_resolve):
    got = hub_resolve("org/no-such-repo:Q4_K_M")
    assert got.error == "ModelNotFoundError"
    assert got.message.startswith("cannot list org/no-such-repo on the Hub: ")
    assert "Repository Not Found" in got.message and "org/no-such-repo" in got.message
    assert got.hint and "check the name" in got.hint
    assert fake_hub.requests == [("GET", "hub/api/models/org/no-such-repo/tree/main")]


def test_vision_projector_beside_one_model_is_not_a_candidate(fake_hub, hub_resolve, tmp_path):
    model = gguf_bytes(tmp_path, "Q4_K_M", name="vision")
    repo = fake_hub.add("org/vision-GGUF", {"vision-Q4_K_M.gguf": model,
                                            "mmproj-F16.gguf": gguf_bytes(tmp_path, "F16", name="proj")})
    got = hub_resolve("org/vision-GGUF")
    assert got.error is None, got.message
    assert got.path == snapshot(hub_resolve.cache, "org/vision-GGUF", repo) / "vision-Q4_K_M.gguf"
    assert got.path.read_bytes() == model
    assert downloads(fake_hub) == [f"cdn/blobs/{repo.sha256('vision-Q4_K_M.gguf')}"]


def test_vision_projector_of_the_same_quant_is_not_a_candidate(fake_hub, hub_resolve, tmp_path):
    f16 = gguf_bytes(tmp_path, "F16", name="vision")
    fake_hub.add("org/vision-GGUF", {"vision-F16.gguf": f16, "vision-Q8_0.gguf": gguf_bytes(tmp_path, "Q8_0"),
                                     "MMPROJ-vision-F16.gguf": gguf_bytes(tmp_path, "F16", name="proj")})
    got = hub_resolve("org/vision-GGUF:F16")
    assert got.error is None, got.message
    assert got.path.name == "vision-F16.gguf" and got.path.read_bytes() == f16


def test_repo_holding_only_a_vision_projector_has_no_model(fake_hub, hub_resolve, tmp_path):
    fake_hub.add("org/proj-GGUF", {"mmproj-model-f16.gguf": gguf_bytes(tmp_path, "F16", name="proj")})
    got = hub_resolve("org/proj-GGUF")
    assert got.error == "ModelNotFoundError"
    assert got.message == "org/proj-GGUF has no GGUF file"
    assert downloads(fake_hub) == []


def test_no_download_means_no_request(fake_hub, hub_resolve, tmp_path):
    fake_hub.add("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": gguf_bytes(tmp_path, "Q4_K_M")})
    got = hub_resolve("org/tiny-GGUF:Q4_K_M", download=False)
    assert got.error == "ModelNotFoundError"
    assert got.message == "org/tiny-GGUF:Q4_K_M is a Hub reference, and this command does not download"
    assert fake_hub.requests == []
    assert not hub_resolve.cache.exists()


def test_tune_command_downloads_its_hub_target(fake_hub, models_folder, tmp_path):
    """`ggufpair tune --target org/repo:QUANT` (no draft: it lists draft suggestions) downloads and reads the target."""
    q4 = gguf_bytes(tmp_path, "Q4_K_M")
    fake_hub.add("org/tiny-GGUF", {"tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": gguf_bytes(tmp_path, "Q8_0"),
                                   "mmproj-F16.gguf": gguf_bytes(tmp_path, "F16", name="proj")})
    proc = subprocess.run([sys.executable, "-m", "ggufpair.cli.main", "tune", "--target", "org/tiny-GGUF:Q4_K_M"],
                          cwd=tmp_path, env=hub_env(fake_hub, tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # downloaded and read, but no local draft to suggest
    assert "downloading org/tiny-GGUF/tiny-Q4_K_M.gguf" in proc.stdout
    assert "Drafts for tiny 1M Q4_K_M" in proc.stdout
    (path,) = (tmp_path / "hf-cache").glob("models--org--tiny-GGUF/snapshots/*/*.gguf")
    assert path.name == "tiny-Q4_K_M.gguf" and path.read_bytes() == q4


def test_no_network_is_a_clear_error_not_a_traceback(fake_hub, hub_resolve):
    """A Hub that cannot be reached (a closed port here; no network for users) is ModelNotFoundError naming the repo."""
    fake_hub.endpoint = "http://127.0.0.1:9"
    got = hub_resolve("org/tiny-GGUF:Q4_K_M")
    assert got.error == "ModelNotFoundError", got.stderr
    assert got.message.startswith("cannot list org/tiny-GGUF on the Hub") and "\n" not in got.message
    assert "network" in got.hint
