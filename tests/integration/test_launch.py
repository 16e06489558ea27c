"""`ggufpair launch` and `check` of a saved profile with the real llama-server: found by name, models checked
before any start, and llama-server taking the launching process's place so a service manager's SIGTERM stops it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.state import state_dir
from ggufpair.tune.profile import profile_data, save_profile

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ggufpair.cli.main", *args]


def _slots_when_up(proc: subprocess.Popen, port: int, timeout: float = 120) -> list | None:
    """The launched server's /slots once it answers; None if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.5)
    return None


def test_launch_by_name_serves_with_speculation_and_stops_on_sigterm(gemma_f16, gemma_q4, llama_server):
    """By the saved name, on the port the profile (and its launch script) were made for."""
    port = _free_port()
    config = ServerConfig(target=gemma_f16, draft=gemma_q4, draft_max=4, ctx=1024, threads=2,
                          overrides=("tokenizer.ggml.add_bos_token=bool:true",))
    save_profile(profile_data("launch test pair", config, llama_server, "CPU", {}, port=port))
    proc = subprocess.Popen(_cli("launch", "launch test pair"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        slots = _slots_when_up(proc, port)
        assert slots and all(s.get("speculative") for s in slots), proc.stderr.read() if proc.poll() is not None else ""
        # The launching process became llama-server: the same pid, so SIGTERM reaches the server itself.
        assert "llama-server" in psutil.Process(proc.pid).name()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        echoed = proc.stderr.read().splitlines()[0]
        assert not any(p.info["name"] and "llama-server" in p.info["name"] and str(port) in " ".join(p.info["cmdline"] or [])
                       for p in psutil.process_iter(["name", "cmdline"]))
        argv = shlex.split(echoed)  # the command shown can be pasted into a shell as it is
        assert argv[0].endswith("llama-server") and argv[argv.index("--port") + 1] == str(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_missing_model_is_exit_3_before_any_server_starts(gemma_q4, tmp_path, llama_server):
    moved = tmp_path / "draft.gguf"
    moved.write_bytes(gemma_q4.read_bytes())
    config = ServerConfig(target=gemma_q4, draft=moved, draft_max=4, ctx=1024)
    path = save_profile(profile_data("missing draft", config, llama_server, "CPU", {}))
    moved.unlink()
    for command in ("launch", "check"):
        out = subprocess.run(_cli(command, str(path)), capture_output=True, text=True, timeout=60)
        assert out.returncode == 3, out.stderr
        assert "the profile's draft model is missing" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(_cli("launch", "no such profile"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "missing draft" in out.stderr  # the saved names are listed
    assert state_dir("profiles") == path.parent


def test_a_profile_whose_draft_no_longer_speculates_is_refused_unless_forced(gemma_f16, gemma_q4, tmp_path,
                                                                              llama_server):
    """The draft was replaced after the tune (another BOS id, say a re-download), so the profile's overrides no
    longer cover it: launch refuses (exit 10) rather than serve silently without speculation; --force serves,
    and the real server indeed does not speculate."""
    from tests.integration.variants import set_scalar

    draft = tmp_path / "draft.gguf"
    draft.write_bytes(gemma_q4.read_bytes())
    set_scalar(draft, "tokenizer.ggml.bos_token_id", 3)
    port = _free_port()
    config = ServerConfig(target=gemma_f16, draft=draft, draft_max=4, ctx=1024, threads=2)
    path = save_profile(profile_data("replaced draft", config, llama_server, "CPU", {}, port=port))
    out = subprocess.run(_cli("launch", str(path)), capture_output=True, text=True, timeout=60)
    assert out.returncode == 10, out.stderr
    assert "WITHOUT speculation" in out.stderr and "BOS ids differ" in out.stderr and "--force" in out.stderr
    proc = subprocess.Popen(_cli("launch", str(path), "--force"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        slots = _slots_when_up(proc, port)
        assert slots and not any(s.get("speculative") for s in slots)
    finally:
        proc.kill()
        proc.wait()
