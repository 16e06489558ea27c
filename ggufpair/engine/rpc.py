"""Other machines through llama.cpp's own RPC backend: `ggml-rpc-server` (older builds: `rpc-server`) on
each host, `llama-server --rpc host:port,...` on the main one, whose `--list-devices` then lists RPC0, RPC1...
beside its local devices. The target's layers spread over the devices; the draft stays local by default
(`-devd`; llama.cpp #23242 crashed when target and draft graphs shared one RPC device).

RPC is unauthenticated ("experimental and insecure", llama.cpp's tools/rpc/README): a host that is not
loopback is said so. An rpc-server that cannot be reached makes llama-server abort with a backtrace, so
every host is checked first and an unreachable one is a clear error.
"""

from __future__ import annotations

import ipaddress
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ggufpair.errors import EngineError, UsageError

DEFAULT_PORT = 50052
INSECURE = ("RPC is unauthenticated: anyone who can reach {where} can run code on it and read what it computes; "
            "keep it on a private network (llama.cpp calls it experimental and insecure)")


@dataclass(frozen=True)
class RpcHost:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def server_command(self, tool: str = "ggml-rpc-server") -> str:
        """What to run on that host (its own build of llama.cpp with -DGGML_RPC=ON)."""
        bind = "127.0.0.1" if self.loopback else "0.0.0.0"
        return f"{tool} -H {bind} -p {self.port}"


def parse_rpc(text: str | None) -> tuple[RpcHost, ...]:
    """`host:port,host2:port2` as llama-server's --rpc takes it (a missing port is llama.cpp's 50052)."""
    if not text:
        return ()
    out: list[RpcHost] = []
    for part in text.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, str(DEFAULT_PORT)
        host = host.strip("[]")
        if not host or any(c.isspace() for c in host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rpc {text}: {part!r} is not host:port", hint="e.g. --rpc 192.168.1.20:50052,192.168.1.21:50052")
        entry = RpcHost(host, int(port))
        if entry not in out:
            out.append(entry)
    return tuple(out)


def check_reachable(hosts: tuple[RpcHost, ...], timeout: float = 3.0) -> None:
    """Every rpc-server accepts a connection, or an EngineError (exit 5) naming those that do not and the
    command to start them; nothing is launched before."""
    down = []
    for h in hosts:
        try:
            with socket.create_connection((h.host, h.port), timeout=timeout):
                pass
        except OSError as e:
            down.append((h, e.strerror or str(e)))
    if down:
        raise EngineError("cannot reach the rpc-server at " + "; ".join(f"{h} ({why})" for h, why in down)
                          + ": llama-server would abort on it, so nothing was launched",
                          hint="start it on that host: " + "; ".join(h.server_command() for h, _ in down))


def warnings(hosts: tuple[RpcHost, ...]) -> list[str]:
    remote = [str(h) for h in hosts if not h.loopback]
    local = [str(h) for h in hosts if h.loopback]
    return ([INSECURE.format(where=", ".join(remote))] if remote else []) + (
        [f"the rpc-server(s) at {', '.join(local)} run on this machine: the memory each reports is this machine's "
         "own too, so the budget counts it more than once (loopback rpc-servers are for trying RPC out)"]
        if local else [])


def rpc_tool(llama_server: Path) -> Path | None:
    """The build's rpc-server, beside its llama-server (ggml-rpc-server; older builds: rpc-server)."""
    return next((p for p in (llama_server.with_name("ggml-rpc-server"), llama_server.with_name("rpc-server"))
                 if p.exists()), None)


@contextmanager
def local_rpc_servers(tool: Path, count: int = 2, threads: int = 1, timeout: float = 30.0):
    """`count` rpc-servers on 127.0.0.1 (loopback only: RPC is unauthenticated), each on a free port, yielded
    as their host:port once each one listens; stopped on the way out. For tests and benchmarks."""
    import subprocess
    import time

    from ggufpair.engine.process import free_port

    procs, hosts = [], []
    try:
        for _ in range(count):
            port = free_port()
            procs.append(subprocess.Popen([str(tool), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            hosts.append(f"127.0.0.1:{port}")
        for host in hosts:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", int(host.rsplit(":", 1)[1])), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise EngineError(f"the rpc-server at {host} never listened ({tool})") from None
                    time.sleep(0.1)
        yield tuple(hosts)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
