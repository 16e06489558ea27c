"""One llama-server process: start on 127.0.0.1 on a free port, wait until ready, talk HTTP, stop.

The child gets PR_SET_PDEATHSIG on Linux, so it dies with ggufpair even when ggufpair is killed outright;
`stop()` sends SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from ggufpair.errors import EngineError

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServerProcess:
    """`with ServerProcess(binary, args) as server:` starts and waits; leaving the block stops it."""

    def __init__(self, binary: Path, args: Sequence[str], *, host: str = LOOPBACK, port: int | None = None,
                 log_path: Path | None = None, ready_timeout: float = 300.0, grace: float = 10.0,
                 env: dict[str, str] | None = None) -> None:
        self.binary = Path(binary)
        self.host = host
        self.port = port or free_port(host)
        self.args = [str(self.binary), *map(str, args), "--host", host, "--port", str(self.port)]
        self.owns_log = log_path is None  # a temporary log of its own, removed by `discard_log`
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        log.write(f"# ggufpair ran: {shlex.join(self.args)}\n".encode())  # to reproduce the run by hand
        log.flush()
        try:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent, env=self.env)
        except OSError as e:
            raise EngineError(f"cannot start {self.binary}: {e.strerror or e}") from None
        finally:
            log.close()
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise EngineError(f"llama-server exited with code {code} before it was ready:\n{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/health", timeout=2)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise EngineError(f"llama-server was not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def request(self, method: str, path: str, body: Any = None, timeout: float = 600) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        ctype_json = raw[:1] in (b"{", b"[")
        return status, json.loads(raw) if ctype_json else raw.decode(errors="replace")

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise EngineError(f"GET {path} answered {status}: {body}")
        return body

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def discard_log(self) -> None:
        """Remove the temporary log made for a caller that gave no log path (a log it named stays)."""
        if self.owns_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "ServerProcess":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            self.discard_log()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.discard_log()
