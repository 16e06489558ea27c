"""Model drafters no PyPI package ships, made here with random weights (`tests/ggufmake.random_model`) and run by
the real llama-server: a target carrying one NextN (MTP) block, tuned with its own MTP layers beside a draft
file, an EAGLE-3 head for a llama target, and DFlash and DSpark drafts for it. Random weights draft badly (acceptance near zero); what these
tests prove is that each drafter starts with speculation live, drafts on the timed requests, is measured and
ranked, and lands in the profile and launch script with its own --spec-type."""

from __future__ import annotations

import tomllib

import pytest

from ggufpair.cli.main import main
from ggufpair.state import state_dir
from tests.ggufmake import random_model

pytestmark = pytest.mark.integration

SHORT = ["--kv", "f16", "--draft-kv", "f16", "--tokens", "16", "--repeats", "1", "--categories", "chat,edit",
         "--ctx", "1024", "--threads", "2", "--p-min", "0"]


def _profile() -> dict:
    (profile,) = state_dir("profiles").glob("*.toml")
    return tomllib.loads(profile.read_text()) | {"_path": profile}


def test_mtp_and_a_draft_file_ranked_in_one_tune(tmp_path, llama_server, capsys):
    target = random_model(tmp_path / "tiny-mtp.gguf", "mtp")
    draft = random_model(tmp_path / "tiny-draft.gguf", "llama", n_layers=1, seed=1)  # the same 300-token vocabulary
    code = main(["tune", "--target", str(target), "--draft", str(draft), "--kinds", "draft", "--lengths", "2,3",
                 *SHORT])
    out = capsys.readouterr().out
    assert code == 0, out
    data = _profile()
    points = data["measurements"]["points"]
    mtp = [p for p in points if p.get("spec_type") == "draft-mtp"]
    simple = [p for p in points if p.get("spec_type") == "draft-simple"]
    assert {p["draft_max"] for p in mtp} == {2, 3} and {p["draft_max"] for p in simple} == {2, 3}
    for p in mtp + simple:
        assert p["speculative"] and p["draft_tokens"] > 0, p  # live, and drafting on the timed requests
    assert all(p["kind"] == "mtp" and "draft" not in p for p in mtp)  # no file: the target's own layers
    assert all(p["draft"] == str(draft) for p in simple)
    assert all(p["label"].startswith("MTP n_max") and "+ MTP f16/f16" in p["label"] for p in mtp), mtp
    flat = " ".join(out.split())
    assert "Drafts ranked: " in flat and "MTP " in flat and "tiny-draft.gguf " in flat, flat
    assert "model drafters, fastest first" in flat
    rows = data["measurements"]["drafters"]
    assert sorted(r["drafter"] for r in rows) == ["MTP", "tiny-draft.gguf"]
    assert all(r["positions_from"] == 3 and len(r["accept_by_position"]) == 3 and r["memory_bytes"] > 0 for r in rows)
    # the MTP runs' own logs: llama.cpp made an MTP context on the target, and loaded no draft file
    logs = sorted(state_dir("logs").rglob("draft-mtp-*.log"))
    assert len(logs) == 2, sorted(p.name for p in state_dir("logs").rglob("*.log"))
    text = logs[0].read_text()
    assert "creating MTP draft context against the target model" in text and "tiny-draft" not in text


def test_mtp_alone_on_a_target_without_draft_file(tmp_path, llama_server, capsys):
    target = random_model(tmp_path / "tiny-mtp.gguf", "mtp")
    code = main(["tune", "--target", str(target), "--kinds", "mtp", "--lengths", "2", *SHORT])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "own MTP layers" in out
    data = _profile()
    mtp = [p for p in data["measurements"]["points"] if p.get("spec_type") == "draft-mtp"]
    assert len(mtp) == 1 and mtp[0]["speculative"] and mtp[0]["draft_tokens"] > 0
    # whichever wins, the profile is named after the pair it served, and a launch of an MTP point is valid
    assert data["profile"]["name"] == "tiny-mtp+mtp"


def test_mtp_asked_of_a_target_without_nextn_layers_is_a_usage_error(tmp_path, llama_server, capsys):
    target = random_model(tmp_path / "plain.gguf", "llama")
    assert main(["tune", "--target", str(target), "--kinds", "mtp", *SHORT]) == 2
    assert "no NextN (MTP) layers" in " ".join(capsys.readouterr().err.split())


def test_eagle3_head_is_run_by_its_own_spec_type_and_measured(tmp_path, llama_server, capsys):
    target = random_model(tmp_path / "tiny-target.gguf", "llama", n_layers=4)
    head = random_model(tmp_path / "tiny-eagle3.gguf", "eagle3", target_layers=(1, 2, 3), target_hidden=64, seed=2)
    code = main(["tune", "--target", str(target), "--draft", str(head), "--kinds", "draft", "--lengths", "2,4",
                 *SHORT])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "EAGLE-3 head" in " ".join(out.split())
    points = [p for p in _profile()["measurements"]["points"] if p.get("draft_max")]
    assert {p["draft_max"] for p in points} == {2, 4}
    for p in points:
        assert p["spec_type"] == "draft-eagle3" and p["speculative"] and p["draft_tokens"] > 0, p
    logs = [p for p in state_dir("logs").rglob("*.log") if "draft" in p.name]
    assert len(logs) == 2 and all("loading draft model" in p.read_text() and "tiny-eagle3.gguf" in p.read_text()
                                  for p in logs)


def test_dflash_and_dspark_drafts_are_run_by_their_own_spec_types_within_their_blocks(tmp_path, llama_server, capsys):
    """Both share llama.cpp's `dflash` architecture; the Markov head makes the DSpark one. With blocks of 4, llama.cpp
    lets DFlash draft 3 tokens (the block less its anchor) and DSpark 4 (it samples from the anchor): the tune
    measures no length llama.cpp would clamp."""
    target = random_model(tmp_path / "tiny-target.gguf", "llama", n_layers=4)
    dflash = random_model(tmp_path / "tiny-dflash.gguf", "dflash", target_layers=(1, 2, 3), block_size=4, seed=3)
    dspark = random_model(tmp_path / "tiny-dspark.gguf", "dspark", target_layers=(1, 2, 3), block_size=4, seed=4)
    code = main(["tune", "--target", str(target), "--draft", str(dflash), "--draft", str(dspark), "--kinds", "draft",
                 "--lengths", "2,4", *SHORT])
    out = capsys.readouterr().out
    assert code == 0, out
    flat = " ".join(out.split())
    assert "tiny-dflash.gguf: llama.cpp caps its drafts at 3 token(s)" in flat, flat
    points = [p for p in _profile()["measurements"]["points"] if p.get("draft_max")]
    by_type = {t: sorted(p["draft_max"] for p in points if p["spec_type"] == t) for t in ("draft-dflash", "draft-dspark")}
    assert by_type == {"draft-dflash": [2], "draft-dspark": [2, 4]}, points
    for p in points:
        assert p["speculative"] and p["draft_tokens"] > 0, p
        assert p["draft"] == str(dflash if p["spec_type"] == "draft-dflash" else dspark)
    logs = {p.name: p.read_text() for p in state_dir("logs").rglob("*.log") if "draft" in p.name}
    assert len(logs) == 3 and all("adding speculative implementation 'draft-d" in t for t in logs.values()), list(logs)
    assert not any("clamping" in t for t in logs.values())  # no length llama.cpp would have cut


def test_mtp_context_memory_estimate_matches_llama_cpp(tmp_path, llama_server, dialect):
    """The MTP context's KV cache (the NextN block only, at the draft KV types) and the target's (its trunk
    layers only), against llama.cpp's own per-context lines."""
    from ggufpair.engine.config import ServerConfig
    from ggufpair.engine.memory import estimate_pair, measured_from_log
    from ggufpair.engine.runner import LlamaServer
    from ggufpair.format.model_info import read_model_info

    target = random_model(tmp_path / "tiny-mtp.gguf", "mtp", n_layers=3, n_embd=128)  # heads of 32: q8_0 fits
    info = read_model_info(target)
    assert info.draft_kind == "mtp" and info.n_nextn == 1 and info.kv_layers == (0, 1, 2)
    cfg = ServerConfig(target=target, spec_type="draft-mtp", draft_max=2, ctx=2048, parallel=2, threads=2,
                       cache_type_k="f16", cache_type_v="f16", draft_cache_type_k="q8_0", draft_cache_type_v="q8_0",
                       flash_attn="on", extra=("-lv", "4"))
    with LlamaServer(llama_server, cfg, dialect=dialect) as server:
        assert server.speculative
        measured = measured_from_log(server.log_text())
    est = estimate_pair(info, None, cfg, "cpu", dialect.fa_takes_value)
    assert measured.draft is not None and measured.draft.kv > 0
    half_step = 0.005 * 2**20  # llama.cpp prints MiB to two decimals
    for mine, theirs in ((est.target, measured.target), (est.draft, measured.draft)):
        assert abs(mine.kv_k - theirs.kv_k) <= half_step and abs(mine.kv_v - theirs.kv_v) <= half_step, (mine, theirs)
    assert est.draft.weights == measured.draft.weights == 0  # MTP runs on the target's own weights
