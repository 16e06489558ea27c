"""The README's main command: the demo runs the whole path on the real pair, writes a profile and a launch
script, and the script really starts a llama-server."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from ggufpair.cli.main import main
from ggufpair.engine.process import free_port
from ggufpair.state import state_dir
from ggufpair.tune.profile import load_profile
from tests.conftest import shellcheck

pytestmark = pytest.mark.integration


def test_demo_end_to_end(capsys, llama_server, tmp_path):
    assert main(["demo", "--draft-lengths", "2,4", "--tokens", "16", "--repeats", "1", "--threads", "2",
                 "--categories", "chat,edit"]) == 0
    out = capsys.readouterr().out
    assert "Verdict: incompatible (add_bos)" in out
    assert "speculative=false" in out and "draft model bos tokens must match" in out
    assert "--override-kv tokenizer.ggml.add_bos_token=bool:true" in out
    assert "Lossless check:" in out and "4. recommendation" in out
    import re

    assert re.search(r"Lossless check: greedy output identical (with and without (the draft|speculation) on all 4 "
                     r"prompts|on \d of 4 prompts; \d diverge)", out.replace("\n", " "))
    assert "has no chat template" in out  # Gemma 3 270M is a base model
    assert "n_max 2" in out and "n_max 4" in out and "by category" in out and "edit" in out
    profiles = list(state_dir("profiles").glob("*.toml"))
    assert len(profiles) == 1
    data, config = load_profile(profiles[0])
    assert data["provenance"]["llama_server"] == str(llama_server.path)
    # the baseline, the draft and the n-gram kinds (no draft file) were measured, each point saying its kind
    kinds = {p["kind"] for p in data["measurements"]["points"]}
    assert {"none", "draft", "ngram-simple", "ngram-mod", "ngram-cache"} <= kinds
    assert data["models"]["target"]["size"] > 0
    if data["measurements"]["recommended"]["kind"] != "draft":  # why the draft model is not it, from the files
        assert re.search(r"From the files: a draft step reads \d+% of the weight bytes", out.replace("\n", " "))
    assert config.draft is not None or config.overrides == ()

    # the profile's rate leaves out each answer's first token, as `check` measures it (`check` re-measuring a
    # saved profile: test_tune_cli.py, for a draft profile and an n-gram one; an older rate: test_check_rate.py)
    assert data["measurements"]["recommended"]["rate"] == "after-first-token"

    script = state_dir("demo") / "launch-demo.sh"
    check = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    port = free_port()
    proc = subprocess.Popen(["bash", str(script), "--port", str(port), "-t", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the launch script's llama-server never became ready")
    finally:
        proc.terminate()
        proc.wait(30)
