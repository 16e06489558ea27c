"""`ggufpair inspect`: verdict first for people, JSON for machines, errors through one place with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gguf import GGUFValueType as T

from ggufpair.cli.main import main
from ggufpair.errors import EXIT_CODES
from tests.ggufmake import tiny_model
from tests.pair_cases import ADD_BOS


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "ggufpair.cli.main", *args], capture_output=True, text=True, env=env)


def test_incompatible_pair_verdict_first_with_fix(tmp_path):
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    out = _run("inspect", str(t), str(d))
    assert out.returncode == EXIT_CODES["incompatible pair, fixable (inspect)"] == 9
    first = out.stdout.splitlines()[0]
    assert first.startswith("Verdict: incompatible (add_bos)")
    assert "WITHOUT speculation" in out.stdout
    assert "tokenizer.ggml.add_bos_token=bool:true" in out.stdout


def test_json_output(tmp_path):
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    out = _run("inspect", "--json", str(t), str(d))
    data = json.loads(out.stdout)
    assert data["compatible"] is False and data["llama_check"] == "add_bos"
    blocker = next(f for f in data["findings"] if f["severity"] == "blocker")
    assert blocker["keys"] == [ADD_BOS] and blocker["fixes"][0]["route"] == "override-kv"
    assert data["draft"]["vocab"]["stored"]["add_bos"] is False


def test_override_kv_makes_the_pair_compatible(tmp_path):
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    out = _run("inspect", "--json", "--override-kv", f"{ADD_BOS}=bool:true", str(t), str(d))
    assert out.returncode == 0 and json.loads(out.stdout)["compatible"] is True


def test_single_model_json(tmp_path):
    out = _run("inspect", "--json", str(tiny_model(tmp_path / "m.gguf")))
    data = json.loads(out.stdout)
    assert out.returncode == 0 and data["vocab"]["n_tokens"] == 300 and data["architecture"] == "llama"


def test_bad_file_is_a_clear_error_with_its_exit_code(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + b"\0" * 16)
    out = _run("inspect", str(bad))
    assert out.returncode == EXIT_CODES["GGUF format"]
    assert str(bad) in out.stderr and "unsupported GGUF version 7" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # people get the error on stderr alone
    # a script that asked for JSON gets the error as JSON on stdout, beside the same exit code
    out = _run("inspect", "--json", str(bad))
    error = json.loads(out.stdout)["error"]
    assert out.returncode == EXIT_CODES["GGUF format"] == error["exit_code"]
    assert error["path"] == str(bad) and "unsupported GGUF version 7" in error["message"]
    assert error["kind"] == "GGUFFormatError" and "unsupported GGUF version 7" in out.stderr


def test_missing_file_and_bad_override(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.gguf")]) == EXIT_CODES["model file"]
    assert "no such file" in capsys.readouterr().err
    m = str(tiny_model(tmp_path / "m.gguf"))
    assert main(["inspect", m, m, "--override-kv", "k=bool:maybe"]) == EXIT_CODES["usage"]
    assert "is not a valid bool" in capsys.readouterr().err


def test_a_pair_metadata_cannot_fix_exits_10(tmp_path):
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", tokenizer="gpt2")
    out = _run("inspect", str(t), str(d))
    assert out.returncode == EXIT_CODES["incompatible pair (inspect)"] == 10, out.stdout


def test_a_closed_pipe_keeps_the_verdicts_exit_code_and_prints_no_traceback(tmp_path):
    """`ggufpair inspect T D | head -2`: the reader goes away before the table is written; the exit code is
    still the verdict's (it was 1, with no message), and nothing is said about the pipe."""
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    alone = _run("inspect", str(t), str(d)).returncode
    r, w = os.pipe()
    os.close(r)  # a reader that has already gone: the first write meets a closed pipe
    proc = subprocess.run([sys.executable, "-m", "ggufpair.cli.main", "inspect", str(t), str(d)], stdout=w,
                          stderr=subprocess.PIPE, text=True)
    os.close(w)
    assert alone == 9 and proc.returncode == alone
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and proc.stderr == ""


def test_an_override_shows_the_effective_values_it_made_and_which_keys(tmp_path):
    """Issue 18: with --override-kv the verdict was "compatible" while the table and the JSON showed the
    stored add_bos false and `overridden: []`."""
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    out = _run("inspect", "--json", "--override-kv", f"{ADD_BOS}=bool:true", str(t), str(d))
    draft = json.loads(out.stdout)["draft"]["vocab"]
    assert draft["add_bos"] is True and ADD_BOS in draft["overridden"]
    table = _run("inspect", "--override-kv", f"{ADD_BOS}=bool:true", str(t), str(d)).stdout
    assert "true (stored false)" in table


def test_turning_bos_off_for_a_gemma_pair_warns_that_the_target_loses_it_too(tmp_path):
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    t = write_gguf(tmp_path / "t.gguf", {**model_kv(arch="gemma3"), **vocab_kv()})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(arch="gemma3"), **vocab_kv(), ADD_BOS: (T.BOOL, False)})
    out = _run("inspect", "--json", "--override-kv", f"{ADD_BOS}=bool:false", str(t), str(d))
    data = json.loads(out.stdout)
    assert data["compatible"] is True
    warnings = [f for f in data["findings"] if f["check"] == "bos_off"]
    assert warnings and "turns BOS off for the target too" in warnings[0]["message"]
