"""A tune against the real llama-server: a crash in the middle marks that point failed and the tune goes on,
with no llama-server left behind; a launch script with a hostile path really starts a server."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import psutil
import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.process import free_port
from ggufpair.format.model_info import read_model_info
from ggufpair.tune.profile import launch_script
from ggufpair.tune.prompts import builtin_prompts
from ggufpair.tune.search import TuneSpec, tune

pytestmark = pytest.mark.integration


def _kill_when_generating(log, stop):
    """Crash the server writing `log` (SIGKILL) once it is generating for a request."""
    while not stop.is_set():
        if log.exists() and "launch_slot_" in log.read_text(errors="replace"):
            for p in psutil.process_iter(["name", "cmdline"]):
                if p.info["name"] == "llama-server" and "4" in (p.info["cmdline"] or [])[-30:]:
                    cmd = p.info["cmdline"]
                    if "--spec-draft-n-max" in cmd and cmd[cmd.index("--spec-draft-n-max") + 1] == "4":
                        p.kill()
                        return
        time.sleep(0.05)


def test_crash_mid_tune_is_marked_and_the_tune_goes_on(gemma_f16, gemma_q4, llama_server, dialect, tmp_path):
    logs = tmp_path / "logs"
    spec = TuneSpec(base=ServerConfig(target=gemma_f16, draft=gemma_q4, ctx=1024, threads=2), lengths=(2, 4),
                    target_kv=("f16",), draft_kv=("f16",), prompts=tuple(builtin_prompts(["chat"], 1)),
                    n_predict=24, repeats=1, confirm=1)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when_generating, args=(logs / "draft4-f16-f16.log", stop), daemon=True)
    killer.start()
    try:
        result = tune(llama_server, dialect, spec, read_model_info(gemma_f16), read_model_info(gemma_q4), logs)
    finally:
        stop.set()
    failed = [p for p in result.points if not p.ok]
    assert len(failed) == 1 and failed[0].config.draft_max == 4
    assert "crashed" in failed[0].error or "exited" in failed[0].error
    assert [p.config.draft_max for p in result.points if p.ok and p.config.has_draft] == [2], [(p.label, p.error) for p in result.points]
    assert result.best_baseline is not None and result.recommended is not None
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "llama-server"]


def test_launch_script_with_a_hostile_path_starts_a_server_with_speculation_live(gemma_q4, model_copy, llama_server,
                                                                                   dialect, tmp_path):
    """A draft with the add_bos defect, fixed by --override-kv in the script, at paths full of shell syntax."""
    from tests.integration.variants import set_scalar

    folder = tmp_path / "my models; it's $HOME"
    folder.mkdir()
    target = folder / 'gemma "3" $x.gguf'
    shutil.copyfile(gemma_q4, target)
    draft = folder / "draft `id`.gguf"
    shutil.copyfile(gemma_q4, draft)
    set_scalar(draft, "tokenizer.ggml.add_bos_token", False)
    script = tmp_path / "launch.sh"
    port = free_port()
    config = ServerConfig(target=target, draft=draft, draft_max=4, ctx=512, threads=2,
                          overrides=("tokenizer.ggml.add_bos_token=bool:true",))
    script.write_text(launch_script(config, llama_server, dialect, port=port))
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=2) as r:
                    assert json.loads(r.read())["model_path"] == str(target)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=2) as r:
                    assert all(slot["speculative"] for slot in json.loads(r.read()))
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the script's server never came up"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
