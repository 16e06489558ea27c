"""Finding models: a path, a short name matched against local GGUF files by their metadata ("31B", "E2B",
"gemma-4-31b-it Q4_K_M"), or a Hub reference `org/repo[:QUANT]` downloaded with huggingface_hub.

Local files are looked for in the Hugging Face cache (`scan_cache_dir`), folders named in
`$GGUFPAIR_MODEL_DIRS` (colon-separated), LM Studio's and llama.cpp's cache folders, and the current folder.
An ambiguous name lists its candidates; it never guesses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ggufpair.errors import GgufpairError, ModelFileError, UsageError
from ggufpair.format.model_info import ModelInfo, read_model_info
from ggufpair.format.shards import SPLIT_RE

HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<quant>[\w.-]+))?$")


class AmbiguousModelError(UsageError):
    def __init__(self, query: str, candidates: list["Candidate"]) -> None:
        listing = "\n".join(f"  {c.describe()}" for c in candidates[:20])
        super().__init__(f"{query!r} matches {len(candidates)} models:\n{listing}",
                         hint="add words to the name (the quant, the finetune) or pass a path")
        self.candidates = candidates


class ModelNotFoundError(UsageError):
    pass


@dataclass(frozen=True)
class Candidate:
    path: Path
    info: ModelInfo
    where: str  # which search location found it

    @property
    def fields(self) -> tuple[str, ...]:
        i = self.info
        return tuple(f for f in (i.size_label, i.basename, i.finetune, i.quant, i.name, i.architecture) if f)

    def describe(self) -> str:
        i = self.info
        return (f"{i.display_name} {i.quant} ({i.file_size / 2**30:.2f} GiB, vocab {i.vocab.n_tokens}, "
                f"ctx {i.context_length}) {self.path}  [{self.where}]")


@dataclass(frozen=True)
class HubRef:
    repo: str
    quant: str | None


def parse_hub_ref(text: str) -> HubRef | None:
    """`org/repo` or `org/repo:Q4_K_M`; None for anything else (paths, short names)."""
    if text.startswith((".", "/", "~")) or text.endswith(".gguf") or os.path.exists(text):
        return None
    m = HUB_REF.match(text)
    return HubRef(m["repo"], m["quant"]) if m else None


def search_dirs() -> list[tuple[str, Path]]:
    home = Path.home()
    out: list[tuple[str, Path]] = []
    for d in filter(None, os.environ.get("GGUFPAIR_MODEL_DIRS", "").split(os.pathsep)):
        out.append(("configured", Path(d).expanduser()))
    out.append(("llama.cpp cache", Path(os.environ.get("LLAMA_CACHE") or home / ".cache" / "llama.cpp")))
    out.append(("LM Studio", home / ".lmstudio" / "models"))
    out.append(("LM Studio", home / ".cache" / "lm-studio" / "models"))
    out.append(("current folder", Path.cwd()))
    return out


def _gguf_files(folder: Path, max_depth: int = 4) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder, followlinks=True):
        if len(Path(root).parts) - base_depth >= max_depth - 1:  # the folder is level 1: max_depth levels in all
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "__pycache__", ".venv")]
        for name in files:
            if not is_model_file(name):
                continue
            m = SPLIT_RE.match(name)
            if m and int(m["no"]) != 1:
                continue  # a split model is listed once, by its first shard
            found.append(Path(root) / name)
    return found


def is_model_file(name: str) -> bool:
    """A GGUF file name that can be a model: not hidden, not a vision projector (mmproj-*.gguf)."""
    return name.lower().endswith(".gguf") and not name.startswith(".") and "mmproj" not in name.lower()


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the Hub or the network fails: its own HTTP errors, and those of the
    HTTP client it was built on (httpx or requests), which are not OSErrors."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _hf_cache_files() -> list[Path]:
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache yet, or an unreadable one: nothing to list
        return []
    out = []
    for repo in info.repos:
        for rev in repo.revisions:
            for f in rev.files:
                if is_model_file(f.file_name) and not (SPLIT_RE.match(f.file_name) and "-00001-of-" not in f.file_name):
                    out.append(Path(f.file_path))
    return out


def discover(extra_dirs: list[Path] | None = None, skipped: list[tuple[Path, str]] | None = None) -> list[Candidate]:
    """Every readable local GGUF model, each once. Files that are not readable models go to `skipped`, with
    why. The current folder is searched with its direct subfolders (./models/x.gguf), model folders four levels
    deep."""
    seen: set[Path] = set()
    out: list[Candidate] = []
    sources = [("Hugging Face cache", p) for p in _hf_cache_files()]
    for where, folder in [*(("given", d) for d in extra_dirs or []), *search_dirs()]:
        sources += [(where, p) for p in _gguf_files(folder, max_depth=2 if where == "current folder" else 4)]
    for where, path in sources:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        path = path.absolute()  # models and skipped files alike are named by their full path
        try:
            out.append(Candidate(path, read_model_info(path), where))
        except GgufpairError as e:
            if skipped is not None:  # not a model we can read: listing says so, inspect explains it
                from ggufpair.fix.apply import recovery_note

                note = recovery_note(path)
                skipped.append((path, e.message + (f" ({note})" if note else "")))
    return out


def _token_matches(token: str, cand: Candidate) -> bool:
    t = token.lower()
    if any(t == f.lower() for f in cand.fields):
        return True
    pattern = re.compile(rf"(?<![a-z0-9]){re.escape(t)}(?![a-z0-9])")
    haystack = " ".join([cand.path.stem.lower(), *(f.lower() for f in cand.fields)])
    return bool(pattern.search(haystack))


def match(query: str, candidates: list[Candidate]) -> list[Candidate]:
    tokens = query.split()
    return [c for c in candidates if tokens and all(_token_matches(t, c) for t in tokens)]


def resolve(query: str, *, candidates: list[Candidate] | None = None, download: bool = True,
            on_event=lambda _: None) -> Path:
    """A model path for `query`: an existing path, a Hub reference, or a unique short-name match."""
    path = Path(query).expanduser()
    try:
        if path.exists():
            return path.absolute()  # profiles and launch scripts must work from any folder
    except PermissionError as e:
        raise ModelFileError(path, f"cannot be reached ({e.strerror}: a folder on the way is not open to you)") from None
    hub = parse_hub_ref(query)
    if hub is not None:
        if not download:
            raise ModelNotFoundError(f"{query} is a Hub reference, and this command does not download",
                                     hint="`ggufpair tune --target ...` downloads; or pass the local file")
        return hub_download(hub, on_event)
    if query.endswith(".gguf") or "/" in query:
        raise ModelFileError(path, "no such file")
    found = match(query, candidates if candidates is not None else discover())
    if not found:
        raise ModelNotFoundError(f"no local model matches {query!r}",
                                 hint="`ggufpair list` shows what was found; pass a path, or org/repo[:QUANT] to download")
    if len(found) > 1:
        exact = [c for c in found if any(t.lower() == (c.info.size_label or "").lower() for t in query.split())]
        if len(exact) != 1:
            raise AmbiguousModelError(query, found)
        found = exact
    return found[0].path


def hub_download(ref: HubRef, on_event=lambda _: None) -> Path:
    """Download the GGUF file of `ref` (the one matching its quant) with huggingface_hub; every shard of a split model."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise UsageError("huggingface_hub is not installed") from None
    failures = _network_errors()
    unreachable = _hub_unreachable()
    if unreachable:  # huggingface_hub would retry for about 25 s before saying the same
        raise ModelNotFoundError(f"cannot list {ref.repo} on the Hub: {unreachable}",
                                 hint="check the name and the network, or pass a local path")
    try:
        files = [f for f in HfApi().list_repo_files(ref.repo) if is_model_file(Path(f).name)]
    except failures as e:
        raise ModelNotFoundError(f"cannot list {ref.repo} on the Hub: {_first_line(e)}",
                                 hint="check the name and the network, or pass a local path") from None
    if ref.quant:
        files = [f for f in files if ref.quant.lower() in Path(f).name.lower()]
    firsts = [f for f in files if not SPLIT_RE.match(Path(f).name) or "-00001-of-" in f]
    if not firsts:
        raise ModelNotFoundError(f"{ref.repo} has no GGUF file{' for ' + ref.quant if ref.quant else ''}")
    if len(firsts) > 1:
        listing = "\n".join(f"  {f}" for f in firsts)
        raise UsageError(f"{ref.repo} has several GGUF files:\n{listing}", hint=f"name one: {ref.repo}:QUANT")
    first = firsts[0]
    m = SPLIT_RE.match(Path(first).name)
    wanted = [f for f in files if m and f.startswith(first.split("-00001-of-")[0])] if m else [first]
    paths = []
    for f in wanted:
        on_event(f"downloading {ref.repo}/{f}")
        try:
            paths.append(Path(hf_hub_download(ref.repo, f)))
        except failures as e:
            raise ModelNotFoundError(f"downloading {ref.repo}/{f} failed: {_first_line(e)}",
                                     hint="run the command again: finished files are kept in the Hugging Face cache") from None
    return paths[wanted.index(first)]  # llama.cpp loads a split model from its first shard


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub's endpoint takes no connection (refused, no route, no such host), or None. Not asked
    through a proxy, which alone knows the way."""
    import os
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {url.hostname}:{port} ({e.strerror or e})"
    return None


def _first_line(err: BaseException) -> str:
    """What went wrong in a line: huggingface_hub's messages run to several (URL, request id, help links)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(err, GatedRepoError):
        return "the repository is gated: accept its terms on the Hub, then log in with `hf auth login`"
    if isinstance(err, RepositoryNotFoundError):
        return "Repository Not Found (or private: log in with `hf auth login`)"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
