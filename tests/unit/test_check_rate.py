"""`check` of a profile saved before the rate left out each answer's first token compares on today's terms
(a scripted measurement stands in for llama-server; the real `check` runs in tests/integration/test_demo.py)."""

from __future__ import annotations

from ggufpair.cli.main import main
from ggufpair.engine.binary import find_llama_server
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.measure import Measurement
from ggufpair.tune import sweep
from ggufpair.tune.profile import profile_data, save_profile
from tests.ggufmake import model_kv, vocab_kv, write_gguf


def _profile(tmp_path, rate: str | None):
    target = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    recommended = {"label": "no draft, KV f16/f16", "tokens_per_second": 40.0, "n_predict": 16, "kind": "none",
                   "categories": ["chat"]}
    if rate:
        recommended["rate"] = rate
    data = profile_data("t", ServerConfig(target=target, ctx=512), find_llama_server(), "cpu",
                        {"recommended": recommended, "points": []})
    return save_profile(data, tmp_path / "t.toml")


def test_an_older_profiles_rate_is_compared_on_todays_terms(tmp_path, monkeypatch, capsys):
    def run_point(binary, dialect, config, prompts, **kw):  # today's rate: 15 of 16 tokens counted
        m = Measurement(False, 37.6, (37.5, 37.7), 64, 0, 0, 0, ())
        return sweep.PointResult(config, m, None, 1.0)

    monkeypatch.setattr(sweep, "run_point", run_point)
    assert main(["check", str(_profile(tmp_path, None)), "--tolerance", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "counted each answer's first token; compared as 37.5 tok/s" in out and "ok: 37.6 tok/s now" in out
    # the same figure in a profile of today's definition is a regression beyond 5%
    assert main(["check", str(_profile(tmp_path, "after-first-token")), "--tolerance", "0.05"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
