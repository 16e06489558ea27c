"""The runner against a real llama-server: baseline and draft runs with speculation proven live, an
incompatible draft reported as speculation off with llama.cpp's reason, an impossible configuration
reported cleanly, and no llama-server left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.measure import Prompt, compare_outputs, greedy_outputs, measure
from ggufpair.engine.runner import LlamaServer, ServerStartError, SpeculationOffError, wait_gone
from tests.integration.variants import set_scalar
from tests.conftest import sigint_default

pytestmark = pytest.mark.integration

PROMPTS = [
    Prompt("count", "chat", ({"role": "user", "content": "Count from one to twenty in words."},)),
    Prompt("story", "chat", ({"role": "user", "content": "Tell a short story about a lighthouse keeper."},)),
]


def _config(target, draft=None, **kw):
    return ServerConfig(target=target, draft=draft, ctx=1024, threads=2, draft_max=4, **kw)


def test_baseline_and_draft_runs_with_speculation_live(gemma_f16, gemma_q4, llama_server, dialect, tmp_path):
    with LlamaServer(llama_server, _config(gemma_f16), dialect=dialect, log_path=tmp_path / "base.log") as base:
        assert base.speculative is None
        m_base = measure(base, PROMPTS, n_predict=32, repeats=1)
        out_base = greedy_outputs(base, PROMPTS, 32)
    with LlamaServer(llama_server, _config(gemma_f16, gemma_q4), dialect=dialect, log_path=tmp_path / "d.log") as spec:
        assert spec.speculative is True
        m_spec = measure(spec, PROMPTS, n_predict=32, repeats=1)
        out_spec = greedy_outputs(spec, PROMPTS, 32)
        # One token per request leaves nothing to draft: /slots says speculative, but these requests did not
        # speculate, and the measurement says so.
        m_one = measure(spec, PROMPTS, n_predict=1, repeats=1, warmup=False)
    assert m_spec.speculative and not m_one.speculative and m_one.draft_tokens == 0
    assert m_base.draft_tokens == 0 and m_base.tokens_per_second > 0
    assert m_spec.draft_tokens > 0 and m_spec.accepted_tokens > 0 and m_spec.acceptance_rate > 0
    assert m_spec.drafts > 0 and len(m_spec.accept_by_position) == 4
    assert m_spec.accept_by_position[0] >= m_spec.accept_by_position[-1]
    report = compare_outputs(PROMPTS, out_base, out_spec)
    assert report.prompts == 2
    for d in report.divergences:  # if greedy text diverges, the report says where and whether it was a near tie
        assert d.index >= 0 and d.baseline_margin is not None
    # The measurement keeps each prompt's greedy answer: the tune's agreement check compares the very runs it
    # timed, and says what the token-level check says (same n_predict, same prompts, greedy both).
    from ggufpair.engine.measure import greedy_agreement

    assert [pid for pid, _ in m_spec.outputs] == ["count", "story"]
    assert dict(m_base.outputs)["count"] == out_base[0].content and dict(m_spec.outputs)["count"] == out_spec[0].content
    same, compared, differ = greedy_agreement(m_base, m_spec)
    assert compared == 2 and same == report.identical and sorted(differ) == sorted(d.prompt_id for d in report.divergences)


def test_incompatible_draft_is_reported_as_speculation_off(gemma_q4, model_copy, llama_server, dialect, tmp_path):
    draft = model_copy(gemma_q4, "runner-bad-bos.gguf")
    set_scalar(draft, "tokenizer.ggml.add_bos_token", False)
    with pytest.raises(SpeculationOffError) as err:
        LlamaServer(llama_server, _config(gemma_q4, draft), dialect=dialect, log_path=tmp_path / "s.log").start()
    assert "WITHOUT speculation" in err.value.message
    assert any("failed to initialize speculative decoding context" in line for line in err.value.log_lines)


def test_a_server_given_no_log_path_leaves_no_log_behind(gemma_q4, model_copy, llama_server, dialect, tmp_path,
                                                         monkeypatch):
    """The tune's memory measure and the benches give no log path: the temporary log goes with the server,
    whether it served or refused to start (its error has quoted the lines already)."""
    import tempfile

    logs = tmp_path / "tmp"
    logs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(logs))
    with LlamaServer(llama_server, _config(gemma_q4), dialect=dialect) as server:
        assert server.process.log_path.parent == logs and "listening" in server.log_text()
    draft = model_copy(gemma_q4, "runner-no-log-bad-bos.gguf")
    set_scalar(draft, "tokenizer.ggml.add_bos_token", False)
    with pytest.raises(SpeculationOffError) as err:
        with LlamaServer(llama_server, _config(gemma_q4, draft), dialect=dialect):
            pass
    assert err.value.log_lines
    assert list(logs.iterdir()) == []


def test_a_context_that_cannot_be_allocated_is_an_oom(gemma_q4, llama_server, dialect, tmp_path):
    """A context far beyond memory. The server runs under an address-space limit, so its allocation fails
    inside llama.cpp (as a GPU's cudaMalloc would) instead of the kernel's OOM killer picking a process on
    the machine running the suite."""
    from ggufpair.engine.binary import Binary

    wrapper = tmp_path / "llama-server"
    wrapper.write_text(f"#!/bin/sh\nulimit -v 4000000\nexec '{llama_server.path}' \"$@\"\n")
    wrapper.chmod(0o755)
    config = ServerConfig(target=gemma_q4, ctx=2_000_000, threads=2, extra=("-fit", "off"))
    with pytest.raises(ServerStartError) as err:
        LlamaServer(Binary(wrapper, "flag"), config, dialect=dialect, log_path=tmp_path / "oom.log").start()
    assert err.value.kind == "oom", err.value.log_lines
    assert any("alloc" in line for line in err.value.log_lines)


def _signal_the_loading_server(sig: int):
    """A started thread that sends `sig` to this process's llama-server as soon as one is loading a model
    (not a --list-devices probe)."""
    import threading

    def send():
        for _ in range(600):
            for child in psutil.Process().children(recursive=True):
                try:
                    serving = child.name() == "llama-server" and "-m" in child.cmdline()
                except psutil.Error:
                    continue
                if serving:
                    child.send_signal(sig)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_server_killed_while_starting_is_called_an_oom(gemma_f16, llama_server, dialect, tmp_path):
    """SIGKILL while loading, which only the kernel's OOM killer (or a person) sends: kind `oom`, said so."""
    killer = _signal_the_loading_server(signal.SIGKILL)
    with pytest.raises(ServerStartError) as err:
        LlamaServer(llama_server, _config(gemma_f16), dialect=dialect, log_path=tmp_path / "killed.log").start()
    killer.join(10)
    assert err.value.kind == "oom" and "out-of-memory killer" in err.value.message


def test_missing_model_is_a_load_failure(tmp_path, llama_server, dialect):
    with pytest.raises(ServerStartError) as err:
        LlamaServer(llama_server, ServerConfig(target=tmp_path / "nope.gguf"), dialect=dialect).start()
    assert err.value.kind == "load"


_CHILD = textwrap.dedent("""
    import sys, time
    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.config import ServerConfig
    from ggufpair.engine.runner import LlamaServer
    server = LlamaServer(find_llama_server(), ServerConfig(target=sys.argv[1], ctx=512, threads=1))
    with server:
        print(server.process.proc.pid, flush=True)
        if sys.argv[2] == "raise":
            raise RuntimeError("boom")
        time.sleep(600)
""")


@pytest.mark.parametrize("how", ["raise", "sigint", "sigkill"])
def test_no_llama_server_is_left_behind(how, gemma_q4):
    parent = subprocess.Popen([sys.executable, "-c", _CHILD, str(gemma_q4), how], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    pid = int(parent.stdout.readline())
    assert psutil.pid_exists(pid) and "llama-server" in psutil.Process(pid).name()
    if how == "sigint":
        parent.send_signal(signal.SIGINT)
    elif how == "sigkill":
        parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)
    assert wait_gone(pid, 15), f"llama-server {pid} outlived its parent ({how})"
    assert not [c for c in psutil.process_iter(["ppid", "name"]) if c.info["ppid"] == parent.pid]


def test_a_server_killed_by_a_signal_while_starting_is_a_crash(gemma_f16, llama_server, dialect, tmp_path):
    """A real llama-server dying of SIGSEGV while loading (as the AMX kernels make it on some CPUs): kind
    `crash`, the signal named, and on an AMX CPU the hint for llama.cpp's known AMX bug."""
    from ggufpair.engine.runner import cpu_has_amx

    killer = _signal_the_loading_server(signal.SIGSEGV)
    with pytest.raises(ServerStartError) as err:
        with LlamaServer(llama_server, _config(gemma_f16), dialect=dialect, log_path=tmp_path / "crash.log"):
            pass
    killer.join(10)
    assert err.value.kind == "crash"
    assert "crashed while starting" in err.value.message and "SIGSEGV" in err.value.message
    assert ("#20824" in (err.value.hint or "")) == cpu_has_amx()
