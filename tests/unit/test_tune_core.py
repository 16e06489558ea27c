"""Tune logic without launches: the predictor, draft lengths, context fitting, memory pruning, the
recommendation when no draft helps, name resolution and Hub references, launch scripts with hostile paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFValueType as T

from ggufpair.tune.search import parse_lengths
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import parse_help
from ggufpair.engine.measure import Measurement
from ggufpair.engine.memory import estimate_pair
from ggufpair.errors import UsageError
from ggufpair.format.model_info import read_model_info
from ggufpair.locate import AmbiguousModelError, HubRef, ModelNotFoundError, discover, parse_hub_ref, resolve
from ggufpair.tune.predict import Predictor, StepSample
from ggufpair.tune.profile import launch_script
from ggufpair.tune.run import recommendation_text
from ggufpair.tune.search import TuneResult, TuneSpec, largest_context, tune
from ggufpair.tune.sweep import PointResult
from ggufpair.engine.binary import Binary
from tests.conftest import shellcheck
from tests.ggufmake import model_kv, vocab_kv, write_gguf

HELP = Path(__file__).resolve().parent.parent / "fixtures" / "help" / "llama-server-11434-spec.txt"


def test_predictor_recovers_a_known_cost_model():
    q = (0.9, 0.8, 0.6, 0.4, 0.2, 0.1)
    a, b = 20.0, 3.0
    sample = lambda n: StepSample(n, a + b * n, 1 + sum(q[:n]))  # noqa: E731
    p = Predictor.fit(sample(2), sample(6), q)
    assert p.a_ms == pytest.approx(a) and p.b_ms == pytest.approx(b)
    for n in range(1, 7):
        assert p.tps(n) == pytest.approx(1000 * (1 + sum(q[:n])) / (a + b * n))
    best_n, _ = p.best(range(1, 7))[0]
    assert best_n == max(range(1, 7), key=p.tps)
    assert [n for n, _ in p.best(range(1, 20))] == sorted(range(1, 7), key=lambda n: -p.tps(n))


def test_predictions_give_back_the_measured_runs_when_a_line_would_not():
    """Step costs seen in a tune on a loaded machine: 182 ms at n_max 4, 473 ms at n_max 8, so a line through
    them has a fixed cost of -108 ms. Clamped to 0, it predicted 17 tok/s for the n_max 4 run measured at 26.6.
    Through the measured points (and the baseline's step at n = 0), each measured run is given back."""
    q = (0.95, 0.95, 0.95, 0.95, 0.9, 0.9, 0.9, 0.9)
    short, long = StepSample(4, 182.0, 1 + sum(q[:4])), StepSample(8, 473.0, 1 + sum(q))
    p = Predictor.fit(short, long, q, baseline_step_ms=40.0)
    assert not p.linear and p.a_ms == pytest.approx(-109.0) and p.b_ms == pytest.approx(72.75)
    assert p.tps(4) == pytest.approx(1000 * short.tokens_per_step / 182.0)
    assert p.tps(8) == pytest.approx(1000 * long.tokens_per_step / 473.0)
    assert p.step_ms(2) == pytest.approx(40.0 + (182.0 - 40.0) / 2)  # between the baseline's step and n_max 4
    assert p.step_ms(10) == pytest.approx(473.0 + 2 * 72.75)  # the last segment's slope
    alone = Predictor.fit(short, long, q)  # no baseline: nothing shorter is assumed cheaper than n_max 4
    assert alone.step_ms(2) == 182.0 and alone.tps(4) == pytest.approx(p.tps(4))


@pytest.mark.parametrize("text,expected", [("1-4", (1, 2, 3, 4)), ("2,4,8", (2, 4, 8)), ("1-3,8", (1, 2, 3, 8))])
def test_parse_lengths(text, expected):
    assert parse_lengths(text) == expected


@pytest.mark.parametrize("bad", ["", "0-4", "a", "2-x"])
def test_bad_lengths(bad):
    with pytest.raises(UsageError):
        parse_lengths(bad)


def _tiny(tmp_path, name, n_layers=4, n_embd=256, ctx=8192, size="1B", basename="tiny", quant_type=0, tokens=300):
    kv = {**model_kv(n_layers=n_layers, n_embd=n_embd, ctx=ctx), **vocab_kv(n_tokens=tokens)}
    kv["general.size_label"] = (T.STRING, size)
    kv["general.basename"] = (T.STRING, basename)
    kv["general.file_type"] = (T.UINT32, quant_type)
    return write_gguf(tmp_path / name, kv, [("token_embd.weight", (n_embd, 64))])


def test_largest_context_fits_the_budget(tmp_path):
    t = read_model_info(_tiny(tmp_path, "t.gguf", n_layers=8, n_embd=512, ctx=65536))
    base = ServerConfig(target=t.path)
    budget = estimate_pair(t, None, base.with_(ctx=10000)).total
    ctx = largest_context(t, None, base, budget)
    assert estimate_pair(t, None, base.with_(ctx=ctx)).total <= budget
    assert estimate_pair(t, None, base.with_(ctx=ctx + 256)).total > budget
    assert largest_context(t, None, base, None) == 65536
    assert largest_context(t, None, base, 1) == 0


def test_configurations_that_cannot_fit_are_never_launched(tmp_path):
    t = read_model_info(_tiny(tmp_path, "t.gguf"))
    d = read_model_info(_tiny(tmp_path, "d.gguf", n_layers=2))
    spec = TuneSpec(base=ServerConfig(target=t.path, draft=d.path, ctx=2048), lengths=(2, 4), budget_bytes=1000)
    missing = Binary(tmp_path / "no-llama-server", "flag")  # would fail loudly if anything were launched
    result = tune(missing, parse_help(HELP.read_text()), spec, t, d, tmp_path / "logs")
    assert result.launches == 0
    assert len(result.pruned) == 3 + 9 and all("budget" in why for _, why in result.pruned)


def _point(draft_max, runs, draft=True):
    cfg = ServerConfig(target=Path("t"), draft=Path("d") if draft else None, draft_max=draft_max)
    m = Measurement(draft, sum(runs) / len(runs), tuple(runs), 100, 50 if draft else 0, 40 if draft else 0,
                    10 if draft else 0, (0.8, 0.6) if draft else ())
    return PointResult(cfg, m, None, 1.0)


def test_no_draft_is_recommended_when_no_draft_beats_the_baseline():
    result = TuneResult(points=[_point(0, [40.0, 41.0], draft=False), _point(4, [39.0, 42.0]), _point(8, [30.0, 31.0])])
    assert not result.draft_pays_off and not result.recommended.config.has_draft
    assert recommendation_text(result).startswith("no draft: the fastest draft configuration (n_max 4")


def test_no_speculation_recommended_is_the_faster_end_of_the_paired_baseline():
    """The baseline ran at both ends of the tune; when it is the answer, it is the run every comparison uses (the
    faster), so the answer's rate and the baseline column never show the same configuration at two rates."""
    first, again = _point(0, [40.0, 41.0], draft=False), _point(0, [42.0, 42.5], draft=False)
    for points in ([first, _point(4, [30.0, 31.0]), again], [again, _point(4, [30.0, 31.0]), first]):
        result = TuneResult(points=points)
        assert result.recommended is again is result.best_baseline


def test_a_draft_that_beats_every_baseline_run_is_recommended():
    result = TuneResult(points=[_point(0, [40.0, 41.0], draft=False), _point(4, [50.0, 52.0])])
    assert result.draft_pays_off and result.recommended.config.draft_max == 4
    assert "51.0 tok/s, 1.26x the paired baseline (40.5 tok/s)" in recommendation_text(result)  # 51.0 / 40.5


def test_recommendation_says_whether_another_tune_would_agree():
    close = TuneResult(points=[_point(0, [40.0, 40.5], draft=False), _point(4, [39.5, 40.0])])
    assert "Not a stable ranking" in recommendation_text(close) and "n_max 4" in recommendation_text(close)
    clear = TuneResult(points=[_point(0, [40.0, 40.5], draft=False), _point(4, [30.0, 30.2])])
    assert "Stable: the next best" in recommendation_text(clear)


def _kv_point(draft_max, runs, tkv="f16", dkv="f16", draft=True):
    p = _point(draft_max, runs, draft)
    cfg = p.config.with_(cache_type_k=tkv, cache_type_v=tkv, draft_cache_type_k=dkv, draft_cache_type_v=dkv)
    return PointResult(cfg, p.measurement, None, 1.0)


@pytest.mark.parametrize("q8_runs", [[41.0, 41.6], [39.6, 40.1]])
def test_two_tunes_agree_when_noise_reorders_equally_fast_configurations(q8_runs):
    """The same pair measured twice: KV q8_0 a little faster once, a little slower the other time. Both tunes
    recommend the simpler f16 cache and say that the two are within noise."""
    result = TuneResult(points=[_kv_point(0, [40.0, 40.6], draft=False), _kv_point(0, q8_runs, "q8_0", draft=False),
                                _kv_point(4, [30.0, 30.3])])
    assert result.recommended.config.cache_type_k == "f16"
    assert len(result.contenders) == 2
    text = recommendation_text(result)
    assert "2 configurations are within run-to-run noise" in text and "KV q8_0/q8_0" in text
    assert "Stable: the next best (n_max 4" in text


def test_equally_fast_drafts_resolve_to_the_shorter_draft_and_unquantized_cache():
    points = [_kv_point(0, [30.0, 30.2], draft=False), _kv_point(8, [45.0, 45.4]), _kv_point(4, [44.8, 45.1]),
              _kv_point(4, [45.3, 45.5], "f16", "q8_0"), _kv_point(2, [36.0, 36.1])]
    for order in (points, points[::-1]):
        result = TuneResult(points=list(order))
        rec = result.recommended.config
        assert (rec.draft_max, rec.draft_cache_type_k) == (4, "f16")
        assert "Stable: the next best (n_max 2" in recommendation_text(result)


def test_a_clearly_faster_configuration_wins_over_a_simpler_one():
    result = TuneResult(points=[_kv_point(0, [30.0, 30.2], draft=False), _kv_point(0, [36.0, 36.2], "q8_0", draft=False)])
    assert result.recommended.config.cache_type_k == "q8_0" and len(result.contenders) == 1


def test_a_draft_without_live_speculation_is_never_recommended():
    off = _point(4, [80.0, 81.0])
    off = PointResult(off.config, Measurement(False, 80.5, (80.0, 81.0), 100, 0, 0, 0, ()), None, 1.0)
    result = TuneResult(points=[_point(0, [40.0, 41.0], draft=False), off])
    assert not result.recommended.config.has_draft


def test_a_draft_faster_run_for_run_but_within_noise_is_not_recommended():
    """Every draft run above every baseline run, but by 2%: within launch-to-launch drift, so no draft, and
    the note says another tune may pick the draft."""
    result = TuneResult(points=[_point(0, [40.0, 40.2], draft=False), _point(4, [40.5, 40.9])])
    assert not result.recommended.config.has_draft
    text = recommendation_text(result)
    assert "Not a stable ranking: n_max 4" in text and "faster than no draft" in text and "Stable:" not in text


def test_a_noisy_slow_configuration_does_not_tie_with_a_steady_fast_one():
    result = TuneResult(points=[_kv_point(0, [26.0, 36.0], draft=False), _kv_point(0, [40.0, 40.2], "q8_0", draft=False)])
    assert result.recommended.config.cache_type_k == "q8_0" and len(result.contenders) == 1


def test_a_draft_clearly_faster_but_barely_beyond_the_noise_says_so():
    result = TuneResult(points=[_point(0, [40.0, 40.2], draft=False), _point(4, [42.0, 43.0])])
    assert result.recommended.config.has_draft
    assert "another tune may recommend no draft" in recommendation_text(result)


def test_name_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("GGUFPAIR_MODEL_DIRS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    elsewhere = tmp_path / "cwd"  # the current folder is searched too: an empty one, not the test tree's
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _tiny(tmp_path, "gemma-4-31b-it-Q4_K_M.gguf", size="31B", basename="gemma-4", quant_type=15)
    _tiny(tmp_path, "gemma-4-31b-it-Q8_0.gguf", size="31B", basename="gemma-4", quant_type=7)
    _tiny(tmp_path, "gemma-4-E2B-it-Q4_K_M.gguf", size="E2B", basename="gemma-4", quant_type=15)
    found = discover()
    assert len([c for c in found if c.path.parent == tmp_path]) == 3
    assert resolve("E2B", candidates=found).name == "gemma-4-E2B-it-Q4_K_M.gguf"
    assert resolve("31B Q8_0", candidates=found).name == "gemma-4-31b-it-Q8_0.gguf"
    assert resolve("gemma-4-31b-it Q4_K_M", candidates=found).name == "gemma-4-31b-it-Q4_K_M.gguf"
    with pytest.raises(AmbiguousModelError) as err:
        resolve("31B", candidates=found)
    assert len(err.value.candidates) == 2 and "Q8_0" in err.value.message and "Q4_K_M" in err.value.message
    with pytest.raises(ModelNotFoundError):
        resolve("70B", candidates=found)
    # inspect and fix take the same short names (local files only: they do not download)
    from ggufpair.cli.main import main

    assert main(["inspect", "31B Q8_0", "E2B"]) == 0
    assert main(["fix", "E2B", "--reference", "31B Q4_K_M", "--dry-run"]) == 0
    assert main(["inspect", "31B"]) == 2  # ambiguous: the candidates are listed
    assert main(["inspect", "org/some-GGUF:Q4_K_M"]) == 2


@pytest.mark.parametrize("text,ref", [
    ("unsloth/gemma-4-E2B-it-GGUF", HubRef("unsloth/gemma-4-E2B-it-GGUF", None)),
    ("Qwen/Qwen3-0.6B-GGUF:Q8_0", HubRef("Qwen/Qwen3-0.6B-GGUF", "Q8_0")),
    ("31B", None), ("./models/x.gguf", None), ("/abs/x.gguf", None), ("gemma-4-31b-it Q4_K_M", None),
])
def test_hub_reference_parsing(text, ref):
    assert parse_hub_ref(text) == ref


HOSTILE = ["with space", "it's", 'say "hi"', "cost $HOME", "a;rm -rf x", "back`tick`"]


@pytest.mark.parametrize("name", HOSTILE)
def test_launch_scripts_quote_hostile_paths(name, tmp_path):
    folder = tmp_path / name
    folder.mkdir()
    target, draft = folder / f"{name} target.gguf", folder / f"{name}.gguf"
    fake = tmp_path / f"fake {name} server"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    config = ServerConfig(target=target, draft=draft, overrides=("tokenizer.ggml.add_bos_token=bool:true",))
    dialect = parse_help(HELP.read_text())
    script = tmp_path / "launch.sh"
    profile = folder / f"{name} profile.toml"
    script.write_text(launch_script(config, Binary(fake, "flag"), dialect, profile=profile))
    check = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # the script's comments say true things: a plain path goes unquoted, so it claims no "every path" (issue 18)
    plain = launch_script(config.with_(target=Path("/m/t.gguf")), Binary(fake, "flag"), dialect)
    assert "-m /m/t.gguf" in plain and "every path is single-quoted" not in plain
    out = tmp_path / "args"
    env = {**os.environ, "ARGS_OUT": str(out)}
    env.pop("LLAMA_SERVER", None)
    run = subprocess.run(["bash", str(script), "--extra"], check=True, env=env, capture_output=True, text=True)
    args = out.read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in args] == [*config.with_(port=8080).argv(dialect), "--extra"] and run.stderr == ""
    # Another build through $LLAMA_SERVER: a note with the command that rewrites the flags for it, the
    # profile's path quoted for the shell; the arguments are passed unchanged.
    other = tmp_path / f"other {name} server"
    other.write_bytes(fake.read_bytes())
    other.chmod(0o755)
    run = subprocess.run(["bash", str(script)], check=True, env={**env, "LLAMA_SERVER": str(other)},
                         capture_output=True, text=True)
    assert "is not the build these flags were written for" in run.stderr
    quoted = run.stderr.split("ggufpair launch ", 1)[1].split(" --llama-server ")[0]
    echoed = subprocess.run(["bash", "-c", f"printf '%s' {quoted}"], capture_output=True, text=True).stdout
    assert echoed == str(profile)
    assert [a.decode() for a in out.read_bytes().split(b"\0")[:-1]] == config.with_(port=8080).argv(dialect)


def test_a_saved_profile_reads_back_to_the_same_recommendation():
    """The recorded real tune (tests/fixtures/profiles): its points read back give the recommendation and the
    text it was saved with."""
    from ggufpair.tune.profile import load_profile
    from ggufpair.tune.run import result_from_profile

    path = Path(__file__).resolve().parent.parent / "fixtures" / "profiles" / "demo-tune.toml"
    result, outputs = result_from_profile(path)
    saved = load_profile(path)[0]["measurements"]
    assert result.launches == saved["launches"] == len(saved["points"])
    assert result.recommended.label == saved["recommended"]["label"]
    assert recommendation_text(result) == outputs.recommendation == saved["recommendation"]


def test_a_profile_without_a_server_table_is_a_usage_error(tmp_path):
    from ggufpair.tune.run import result_from_profile

    (tmp_path / "p.toml").write_text('[profile]\nname = "x"\n')
    with pytest.raises(UsageError, match="not a ggufpair profile"):
        result_from_profile(tmp_path / "p.toml")


def test_drafts_without_a_baseline_are_not_recommended():
    failed = PointResult(ServerConfig(target=Path("t")), None, "out of memory", 1.0)
    result = TuneResult(points=[failed, _point(4, [50.0, 51.0])])
    assert result.recommended is None
    assert recommendation_text(result).startswith("no recommendation: no no-draft baseline could be measured")


def test_cpu_repacking_depends_on_the_cpu_and_the_row_count():
    """ggml-cpu repacks Q4_0/Q4_K/IQ4_NL/MXFP4 with AVX2 and Q2_K with AVX-512 on x86, the K-quants and Q8_0
    with dotprod/i8mm on ARM, and only when the rows divide the kernel's tile."""
    from gguf import GGMLQuantizationType as Q

    from ggufpair.engine.memory import repacked_on_cpu

    avx2, avx512 = frozenset({"avx2"}), frozenset({"avx2", "avx512f"})
    assert repacked_on_cpu(Q.Q4_K, 1024, avx2, "x86_64") and repacked_on_cpu(Q.MXFP4, 1024, avx2, "x86_64")
    assert not repacked_on_cpu(Q.Q4_K, 1020, avx2, "x86_64")  # 1020 rows: not a multiple of 8
    assert not repacked_on_cpu(Q.Q4_K, 1024, frozenset({"sse4_2"}), "x86_64")
    assert not repacked_on_cpu(Q.Q2_K, 1024, avx2, "x86_64") and repacked_on_cpu(Q.Q2_K, 1024, avx512, "x86_64")
    assert not repacked_on_cpu(Q.Q6_K, 1024, avx512, "x86_64")
    dot = frozenset({"asimd", "asimddp"})
    assert all(repacked_on_cpu(t, 1024, dot, "aarch64") for t in (Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.Q4_K))
    assert not repacked_on_cpu(Q.Q6_K, 1024, frozenset({"asimd"}), "aarch64")
    assert not repacked_on_cpu(Q.Q2_K, 1024, dot, "aarch64")


def test_a_kv_type_the_model_cannot_take_is_not_called_out_of_memory(tmp_path):
    """llama.cpp refuses a quantized cache whose block does not divide the head size, then logs 'failed to
    create context' (as it does for a failed allocation): that is a configuration, not memory, and a tune
    prunes it before launching."""
    from ggufpair.engine.runner import classify_start_failure
    from ggufpair.format.model_info import read_model_info
    from ggufpair.tune.search import kv_type_misfit
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    log = ("llama_init_from_model: K cache type q8_0 with block size 32 does not divide n_embd_head_k=48\n"
           "common_init_from_params: failed to create context with model '/m/x.gguf'\n")
    assert classify_start_failure(log)[0] == "config"
    assert classify_start_failure("common_init_from_params: failed to create context with model 'x'\n"
                                  "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer\n")[0] == "oom"
    head48 = read_model_info(write_gguf(tmp_path / "h48.gguf", {**model_kv(n_embd=192, n_head=4), **vocab_kv()}))
    head64 = read_model_info(write_gguf(tmp_path / "h64.gguf", {**model_kv(n_embd=256, n_head=4), **vocab_kv()}))
    assert "48 is not a multiple of 32" in kv_type_misfit(head48, "q8_0", "f16")
    assert kv_type_misfit(head48, "f16", "f16") is None and kv_type_misfit(head64, "q4_0", "q4_0") is None
    assert kv_type_misfit(head48, "q8_0", "f16", flash_attn=False) is None  # the check is made with FA only


def test_flash_attention_auto_means_off_on_builds_with_a_bare_switch():
    """On builds whose -fa is a bare switch, `auto` sends nothing and flash attention stays off, so the
    estimate takes the larger attention-score buffer; a quantized V cache makes ggufpair send -fa there."""
    from ggufpair.engine.memory import flash_attn_on as _flash_attn_on

    auto = ServerConfig(target=Path("t.gguf"))
    assert _flash_attn_on(auto, fa_takes_value=True) and not _flash_attn_on(auto, fa_takes_value=False)
    assert _flash_attn_on(auto.with_(cache_type_v="q8_0"), fa_takes_value=False)
    assert not _flash_attn_on(auto.with_(flash_attn="off"), fa_takes_value=True)


@pytest.mark.parametrize("name", ["macro ${PORT}", "two\nlines"])
def test_llama_swap_refuses_paths_it_would_rewrite(name, tmp_path):
    from ggufpair.errors import UsageError
    from ggufpair.tune.profile import llama_swap_entry

    config = ServerConfig(target=tmp_path / f"{name}.gguf")
    with pytest.raises(UsageError, match="llama-swap"):
        llama_swap_entry("m", config, Binary(tmp_path / "llama-server", "flag"), parse_help(HELP.read_text()))
    assert "--port ${PORT}" in llama_swap_entry("m", ServerConfig(target=tmp_path / "ok.gguf"),
                                                Binary(tmp_path / "llama-server", "flag"), parse_help(HELP.read_text()))


def test_stalled_requests_and_single_repetitions_are_never_called_stable():
    """A request at under half the others' rate is a stall (the machine, not the configuration); a
    tune that measured one with stalls, or measured each configuration once, does not claim a stable ranking."""
    from dataclasses import replace

    from ggufpair.engine.measure import count_stalls

    # without a draft, one run per prompt: the prompts are each other's peers
    assert count_stalls({"a": [22.1], "b": [21.5], "c": [2.2], "d": [22.0]}, drafted=False) == 1
    # one slow request dragged a baseline from 40 to 31.5 tok/s and made a quantized KV type look faster (a new
    # user's first tune here): under half the median is a stall; a spread that large is not the configuration
    assert count_stalls({"a": [39.9], "b": [18.8], "c": [41.7], "d": [40.6]}, drafted=False) == 1
    assert count_stalls({"a": [39.9], "b": [28.0], "c": [41.7], "d": [40.6]}, drafted=False) == 0
    # at the default two runs a prompt: a run against the prompt's other run
    assert count_stalls({"a": [39.9, 40.2], "b": [40.1, 18.8], "c": [41.7, 41.0]}, drafted=False) == 1
    # one run each: a prompt's peers are its category's other prompts (a long document decodes slower)
    rates = {"chat-0": [40.0], "chat-1": [41.0], "long-0": [18.0], "long-1": [19.0]}
    assert count_stalls(rates, drafted=False) == 2
    assert count_stalls(rates, drafted=False, category_of={k: k.split("-")[0] for k in rates}) == 0
    # a draft's rate follows each prompt's acceptance: prompts are no peers, only a prompt's own runs are
    assert count_stalls({"code": [40.0], "chat": [12.0]}, drafted=True) == 0
    assert count_stalls({"code": [40.0, 41.0, 9.0], "chat": [12.0, 12.5, 11.0]}, drafted=True) == 1
    steady = TuneResult(points=[_point(0, [20.0, 20.5], draft=False), _point(4, [30.0, 31.0])])
    assert "Stable" in recommendation_text(steady) and "Unreliable" not in recommendation_text(steady)
    once = TuneResult(points=[_point(0, [20.0], draft=False), _point(4, [30.0])])
    assert "One repetition each" in recommendation_text(once) and "Stable" not in recommendation_text(once)
    base = _point(0, [20.0, 20.5], draft=False)
    base = replace(base, measurement=replace(base.measurement, request_tps=(22.0, 2.1, 21.0, 22.5), stalls=1))
    busy = TuneResult(points=[base, _point(4, [30.0, 31.0])])
    text = recommendation_text(busy)
    assert "Unreliable" in text and "Stable" not in text


@pytest.mark.parametrize("args,message", [
    (["--tokens", "0"], "--tokens 0"), (["--margin", "2"], "--margin 2"), (["--port", "99999"], "not a TCP port"),
    (["--lengths", "4-2"], "the range 4-2 is empty"), (["--lengths", ""], "no draft lengths"),
    (["--kv", "f16,q9"], "q9 is not a KV cache type"), (["--repeats", "0"], "--repeats 0"),
    (["--gpu-layers", "lots"], "--gpu-layers 'lots'"), (["--gpu-layers", "-2"], "--gpu-layers '-2'"),
    (["--categories", "chta"], "unknown prompt categories: chta"),
])
def test_bad_tune_arguments_are_refused_before_any_work(args, message, tmp_path, capsys):
    """Checked before any model is read or server found: a missing target does not mask them."""
    from ggufpair.cli.main import main

    assert main(["tune", "--target", str(tmp_path / "none.gguf"), "--draft", "x.gguf", *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_prompts_are_refused_before_the_patch_route_changes_the_draft(tmp_path, capsys):
    """A usage error never follows a change to a model file: the fix comes after every argument is checked."""
    from ggufpair.cli.main import main

    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(), **vocab_kv(), "tokenizer.ggml.add_bos_token": (T.BOOL, False)})
    before = d.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{bad\n")
    for extra in (["--categories", "chta"], ["--prompts", str(bad)]):
        assert main(["tune", "--target", str(t), "--draft", str(d), "--route", "patch", *extra]) == 2
        assert d.read_bytes() == before, extra
    assert "applying it" not in capsys.readouterr().out


def test_check_refuses_a_tolerance_outside_0_to_1(tmp_path, capsys):
    from ggufpair.cli.main import main

    for value in ("1.5", "-0.1"):
        assert main(["check", str(tmp_path / "none.toml"), "--tolerance", value]) == 2
        assert f"--tolerance {float(value)}" in capsys.readouterr().err


def test_the_same_file_as_target_and_draft_is_refused(tmp_path, capsys):
    from ggufpair.cli.main import main

    model = write_gguf(tmp_path / "m.gguf", {**model_kv(), **vocab_kv()})
    assert main(["tune", "--target", str(model), "--draft", str(tmp_path / "." / "m.gguf")]) == 2
    assert "the target and the draft are the same file" in capsys.readouterr().err


def test_the_tui_without_a_terminal_is_a_clear_error():
    """Not a hang writing escape codes into a pipe."""
    out = subprocess.run([sys.executable, "-m", "ggufpair.cli.main", "tui"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "needs a terminal" in out.stderr and out.stdout == ""


def test_list_says_what_it_skipped_and_refuses_a_missing_folder(tmp_path, monkeypatch, capsys):
    from ggufpair.cli.main import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("GGUFPAIR_MODEL_DIRS", "")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "models"
    folder.mkdir()
    good = write_gguf(folder / "good.gguf", {**model_kv(), **vocab_kv()})
    (folder / "cut.gguf").write_bytes(good.read_bytes()[:100])
    assert main(["list", "--dir", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["path"] for m in data["models"]] == [str(good)]
    assert [s["path"] for s in data["skipped"]] == [str(folder / "cut.gguf")] and "at byte" in data["skipped"][0]["why"]
    assert main(["list", "--dir", str(tmp_path / "nowhere")]) == 2
    assert data["models"][0]["fix_model"] is None
    # a file `ggufpair fix MODEL` repairs is marked beside its name (issue 18: a Gemma file with add_bos false)
    write_gguf(folder / "nobos.gguf", {**model_kv(arch="gemma3"), **vocab_kv(),
                                       "tokenizer.ggml.add_bos_token": (T.BOOL, False)})
    assert main(["list", "--dir", str(folder), "--json"]) == 0
    marked = {Path(m["path"]).name: m["fix_model"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert marked["good.gguf"] is None and marked["nobos.gguf"]
    assert main(["list", "--dir", str(folder)]) == 0
    assert "`ggufpair fix MODEL` repairs it" in capsys.readouterr().out
    # a path too long for its column is folded onto more lines, never cut short: it is there to be copied
    deep = folder / ("a-long-folder-name-" * 6) / ("b-long-folder-name-" * 6)
    deep.mkdir(parents=True)
    far = write_gguf(deep / "far.gguf", {**model_kv(), **vocab_kv()})
    assert main(["list", "--dir", str(deep)]) == 0
    out = capsys.readouterr().out
    assert str(far) in "".join(out.split()) and "…" not in out, out


@pytest.mark.parametrize("launch", ['launch = "x"', '[launch]\nport = "abc"', '[launch]\nhost = 5', '[launch]\nport = 99999'])
def test_a_malformed_launch_table_is_a_clear_error(launch, tmp_path):
    from ggufpair.errors import UsageError
    from ggufpair.tune.profile import load_profile

    recorded = Path(__file__).resolve().parent.parent / "fixtures" / "profiles" / "demo-tune.toml"
    path = tmp_path / "p.toml"
    path.write_text(launch + "\n" + recorded.read_text())  # first: top-level keys come before any table
    with pytest.raises(UsageError, match=r"\[launch\]"):
        load_profile(path)


def test_the_current_folder_is_searched_with_its_direct_subfolders(tmp_path, monkeypatch):
    from ggufpair.locate import _gguf_files

    for rel in ("a.gguf", "models/b.gguf", "models/deep/c.gguf"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_gguf(tmp_path / rel, {**model_kv(), **vocab_kv()})
    assert sorted(p.name for p in _gguf_files(tmp_path, max_depth=2)) == ["a.gguf", "b.gguf"]
    assert sorted(p.name for p in _gguf_files(tmp_path, max_depth=3)) == ["a.gguf", "b.gguf", "c.gguf"]


# ---- the lossless check, `check`'s verdict and draft suggestions: their decisions, on values made to differ


def _completion(tokens, top2=None):
    from ggufpair.engine.runner import Completion

    return Completion("".join(f"<{t}>" for t in tokens), 10, 1.0, len(tokens), 1.0, 0, 0, tuple(tokens),
                      tuple(top2 or [None] * len(tokens)), "length")


def test_lossless_check_finds_where_outputs_diverge_and_whether_at_a_near_tie():
    from ggufpair.engine.measure import Prompt, compare_outputs

    prompts = [Prompt(f"p{i}", "chat", "x") for i in range(4)]
    baseline = [_completion([1, 2, 3]), _completion([1, 2, 3, 4], [None, None, (-0.50, -0.55), None]),
                _completion([7, 8, 9], [(-0.1, -2.0), None, None]), _completion([5, 6, 7])]
    drafted = [_completion([1, 2, 3]), _completion([1, 2, 9, 9]), _completion([6, 8, 9]), _completion([5, 6])]
    report = compare_outputs(prompts, baseline, drafted)
    assert (report.prompts, report.identical, report.all_identical) == (4, 1, False)
    by_prompt = {d.prompt_id: d for d in report.divergences}
    assert (by_prompt["p1"].index, by_prompt["p1"].baseline_token, by_prompt["p1"].draft_token) == (2, 3, 9)
    assert by_prompt["p1"].near_tie is True and abs(by_prompt["p1"].baseline_margin - 0.05) < 1e-9
    assert (by_prompt["p2"].index, by_prompt["p2"].near_tie) == (0, False)  # a clear choice: not noise
    assert (by_prompt["p3"].index, by_prompt["p3"].draft_token, by_prompt["p3"].near_tie) == (2, -1, None)  # cut short
    assert "identical on 1 of 4 prompts; 3 diverge, 1 of them at a near tie" in report.summary()
    same = compare_outputs(prompts[:2], baseline[:2], baseline[:2])
    assert same.all_identical and same.summary() == "greedy output identical with and without the draft on all 2 prompts"


@pytest.mark.parametrize("now,runs,stalls,status", [
    (95.0, (94.0, 96.0), 0, "ok"),  # within the 10% tolerance
    (85.0, (80.0, 92.0), 0, "INCONCLUSIVE"),  # the median below, one repetition within
    (85.0, (84.0, 86.0), 1, "INCONCLUSIVE"),  # a stalled request: the machine, not the build
    (85.0, (84.0, 86.0), 0, "REGRESSION"),
    (50.0, (49.0, 51.0), 0, "REGRESSION"),
])
def test_check_tells_a_regression_from_noise(now, runs, stalls, status):
    from ggufpair.cli.tune_cmds import check_status

    assert check_status(100.0, now, runs, stalls, tolerance=0.1) == status


@pytest.mark.parametrize("now,base_before,base_now,status", [
    (70.0, 50.0, 35.0, "INCONCLUSIVE"),  # the baseline fell as much (0.70x): the speedup held at 2.0x
    (70.0, 50.0, 50.0, "REGRESSION"),  # the baseline held: the speculation itself is slower (2.0x -> 1.4x)
    (40.0, 50.0, 35.0, "REGRESSION"),  # the baseline fell, and the speedup with it (2.0x -> 1.14x)
    (70.0, 50.0, None, "REGRESSION"),  # no baseline measured now: the profile's figure alone
    (70.0, None, 35.0, "REGRESSION"),  # the profile holds no baseline to compare with
])
def test_check_tells_a_slower_machine_from_a_regression_by_the_paired_baseline(now, base_before, base_now, status):
    """`check` measures the paired baseline again: a machine slower now (load, clocks) slows it as much, and
    the speedup over it holds; a build whose speculation got slower shows in the speedup. Profiled: 100 tok/s."""
    from ggufpair.cli.tune_cmds import check_status

    assert check_status(100.0, now, (now, now), 0, 0.1, base_before, base_now) == status


def test_suggested_drafts_are_small_and_of_the_targets_vocabulary(tmp_path):
    from ggufpair.locate import Candidate
    from ggufpair.tune.run import suggest_drafts

    def model(name, n_embd, tokenizer="llama", **changes):
        kv = {**model_kv(n_embd=n_embd), **vocab_kv(tokenizer), **changes}
        path = write_gguf(tmp_path / f"{name}.gguf", kv, [("token_embd.weight", (n_embd, 300))])
        return Candidate(path, read_model_info(path), "given")

    target = model("target", 256)
    small = model("small", 16)
    flipped = model("flipped", 16, **{"tokenizer.ggml.add_bos_token": (T.BOOL, False)})
    other_vocab = model("other-vocab", 16, "gpt2")
    too_big = model("too-big", 128)  # half the target's weights
    found = suggest_drafts(target.info, [target, small, flipped, other_vocab, too_big])
    local = {s.path.name: s.why for s in found if s.path is not None}
    assert set(local) == {"small.gguf", "flipped.gguf"}
    assert local["small.gguf"] == "compatible; 6% of the target's weights"
    assert local["flipped.gguf"].startswith("compatible after `ggufpair fix`")
    # What was found but not suggested is said, with why (issue 18: "no drafts found" beside seven files)
    left_out = []
    suggest_drafts(target.info, [target, small, other_vocab, too_big], left_out)
    assert [(s.path.name, s.why) for s in left_out] == [
        ("too-big.gguf", "50% of the target's weights, above the 30% a draft needs to pay off")]


def test_a_cancelled_tune_saves_no_profile_and_says_so(tmp_path):
    """Cancelled in the TUI after the baseline only: the result says CANCELLED and that no draft was measured,
    and no profile or script replaces one a complete tune saved."""
    from types import SimpleNamespace

    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.state import state_dir
    from ggufpair.tune.run import save_outputs

    binary = find_llama_server(None)
    dialect = probe_dialect(binary.path)
    args = SimpleNamespace(tokens=16, categories="chat", profile=None, script=None, format="bash", host="127.0.0.1",
                           port=8080)
    cancelled = TuneResult(points=[_point(0, [40.0, 41.0], draft=False)], cancelled=True, planned=5)
    out = save_outputs(cancelled, binary, dialect, "CPU", args, "", measure_memory=False)
    assert out.profile is None and out.script is None and list(state_dir("profiles").glob("*")) == []
    assert out.recommendation.startswith("CANCELLED after 1 of 5 launches, so no profile was saved")
    assert "no draft configuration was measured" in out.recommendation and "speculation live" not in out.recommendation


def test_a_no_draft_answer_is_saved_under_the_pair_tuned(tmp_path, monkeypatch):
    """Tunes of one target with two drafts that both answer "no draft" keep two profiles, not one."""
    monkeypatch.chdir(tmp_path)
    for name in ("t", "d"):
        write_gguf(tmp_path / name, {**model_kv(), **vocab_kv()})
    from types import SimpleNamespace

    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.tune.run import save_outputs

    binary = find_llama_server(None)
    args = SimpleNamespace(tokens=16, categories="chat", profile=None, script=None, format="bash", host="127.0.0.1",
                           port=8080)
    result = TuneResult(points=[_point(0, [40.0, 41.0], draft=False), _point(4, [30.0, 31.0])])
    out = save_outputs(result, binary, probe_dialect(binary.path), "CPU", args, "", measure_memory=False)
    assert not result.recommended.config.has_draft and out.profile.name == "t+d.toml"


def test_the_recommendation_says_whether_greedy_answers_stayed_the_same():
    from dataclasses import replace

    base, fast = _point(0, [40.0, 41.0], draft=False), _point(4, [50.0, 52.0])
    base = replace(base, measurement=replace(base.measurement, outputs=(("a", "x"), ("b", "y"), ("c", "z"))))
    same = replace(fast, measurement=replace(fast.measurement, outputs=(("a", "x"), ("b", "y"), ("c", "z"))))
    text = recommendation_text(TuneResult(points=[base, same]))
    assert "greedy answers identical to the baseline's on all 3 prompts" in text
    changed = replace(fast, measurement=replace(fast.measurement, outputs=(("a", "x"), ("b", "Y"), ("c", "z"))))
    text = recommendation_text(TuneResult(points=[base, changed]))
    assert "identical to the baseline's on 2 of 3 prompts (differing: b)" in text
    assert "greedy answers" not in recommendation_text(TuneResult(points=[_point(0, [40.0], draft=False),
                                                                           _point(4, [50.0, 52.0])]))


def test_a_tune_whose_every_configuration_was_pruned_says_so():
    pruned = TuneResult(points=[], pruned=[("no draft, KV f16", "needs 30 GiB, budget 20 GiB")])
    assert recommendation_text(pruned).startswith("nothing was launched: no configuration fits the memory budget")


@pytest.mark.parametrize("lengths,kv,planned", [((2, 4), ("f16",), 4), ((4,), ("f16",), 3), ((2, 4, 8), ("f16",), 5),
                                                (tuple(range(1, 17)), ("f16",), 6), ((2, 4), ("f16", "q8_0"), 7),
                                                (tuple(range(1, 17)), ("f16", "q8_0"), 2 + 2 * 2 + 2 + 1),
                                                ((2, 4, 8), ("f16", "q8_0"), 2 + 2 * 2 + 2 + 1)])  # n_max 2 in each
def test_planned_launches_count_only_confirmations_that_can_happen(lengths, kv, planned):
    """A baseline per target KV, a long and a short run per KV pair (one when one length is asked), and up to
    two confirmations in all of lengths not measured yet (none when only two lengths are asked), and the
    closing baseline."""
    spec = TuneSpec(base=ServerConfig(target=Path("t"), draft=Path("d")), lengths=lengths, target_kv=kv,
                    draft_kv=("f16",))
    assert spec.planned_launches(with_draft=True) == planned


def test_a_baseline_disturbed_at_the_start_is_replaced_by_the_closing_one():
    """The machine was busy while the first baseline ran (8.3 tok/s); the draft (26 tok/s) looked 3x faster.
    The baseline measured again at the end (32.4) is the one compared with: no draft, and the move is said."""
    busy, quiet = _point(0, [8.0, 8.6], draft=False), _point(0, [32.0, 32.8], draft=False)
    result = TuneResult(points=[busy, _point(4, [26.0, 26.6]), quiet])
    assert result.best_baseline is quiet and result.baseline_for(quiet.config) is quiet
    assert not result.recommended.config.has_draft
    assert "baseline (KV f16) moved from 8.3 to 32.4 tok/s" in recommendation_text(result)


def test_tune_of_a_pair_metadata_cannot_fix_is_exit_10_before_any_launch(tmp_path, capsys):
    """As inspect, fix and launch say of such a pair (it was a usage error, exit 2)."""
    from ggufpair.cli.main import main

    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv("llama")})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(), **vocab_kv("gpt2")})
    assert main(["tune", "--target", str(t), "--draft", str(d), "--lengths", "2,4"]) == 10
    assert "metadata cannot fix it" in capsys.readouterr().err


def test_tune_refuses_a_pair_llama_cpp_would_not_speculate_with_before_any_launch(tmp_path):
    """The CLI fixes the pair first and the TUI asks for the fix; tune itself refuses what is still
    incompatible, with what llama-server would do, and the no-copy fix's overrides make it pass."""
    from ggufpair.errors import IncompatiblePairError

    t = read_model_info(write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()}))
    d = read_model_info(write_gguf(tmp_path / "d.gguf", {**model_kv(), **vocab_kv(),
                                                        "tokenizer.ggml.add_bos_token": (T.BOOL, False)}))
    spec = TuneSpec(base=ServerConfig(target=t.path, draft=d.path, ctx=2048), lengths=(2, 4), budget_bytes=1000)
    missing = Binary(tmp_path / "no-llama-server", "flag")  # would fail loudly if anything were launched
    with pytest.raises(IncompatiblePairError, match="incompatible, so llama-server would serve WITHOUT speculation"):
        tune(missing, parse_help(HELP.read_text()), spec, t, d, tmp_path / "logs")
    fixed = TuneSpec(base=spec.base.with_(overrides=("tokenizer.ggml.add_bos_token=bool:true",)), lengths=(2, 4),
                     budget_bytes=1000)
    assert tune(missing, parse_help(HELP.read_text()), fixed, t, d, tmp_path / "logs").launches == 0  # all pruned


def test_a_crash_is_reported_by_its_reason_not_by_the_debuggers_backtrace():
    """ggml's abort handler attaches gdb: a crashed llama-server's log ends in frames and "No such file" lines.
    The reason quoted is the assertion (a real log: a DFlash draft reading a layer its target lacks), its
    build folder left out; an rpc-server that went away is named by llama.cpp's own line."""
    from ggufpair.engine.runner import classify_start_failure, crash_reason

    log = (Path(__file__).resolve().parent.parent / "fixtures" / "logs" / "dflash-layer-beyond-abort.log").read_text()
    assert "Inferior 1" in log.splitlines()[-1]  # the raw tail is the debugger's
    assert crash_reason(log) == ["llama.cpp/src/llama-context.cpp:1242: GGML_ASSERT(lid <= model.hparams.n_layer()) "
                                 "failed"]
    kind, lines = classify_start_failure(log)
    assert kind == "unknown" and lines == crash_reason(log)
    rpc = ("/tmp/pip-wheel-x/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp:547: Failed to connect to 127.0.0.1:50161\n"
           "[New LWP 5219]\n#12 0x0000562e595be1b1 in _start ()\n360\t../csu/libc-start.c: No such file or directory.\n"
           "[Inferior 1 (process 5218) detached]\n")
    assert crash_reason(rpc) == ["llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp:547: Failed to connect to 127.0.0.1:50161"]


def test_the_answer_words_a_slower_draft_and_a_repeated_baseline_truly():
    """A draft at half the baseline's rate is said to be slower (not merely "not faster beyond the spread"); the
    baseline and its own repeat at the other end are one configuration, not two within the noise; the next best's
    gap is how much slower it is (49%, not the fastest's 98% lead)."""
    result = TuneResult(points=[_point(0, [40.0, 41.0], draft=False), _point(4, [20.0, 21.0]),
                                _point(0, [40.0, 40.5], draft=False)])
    text = recommendation_text(result)
    assert "against 40.5 without a draft, 0.51x: slower" in text
    assert "configurations are within run-to-run noise" not in text
    assert "is 49% slower" in text
    close = TuneResult(points=[_point(0, [40.0, 41.0], draft=False), _point(4, [39.0, 40.0])])
    assert "not faster beyond the run-to-run spread" in recommendation_text(close)  # within the noise: not "slower"


def test_a_profile_is_named_after_the_answers_draft_else_after_every_draft_tuned():
    """A tune of one draft is named after that pair whatever its answer; a tune of two whose answer is no draft
    names both (not the first alone, which a tune of that draft alone would be named); a long list is cut."""
    from ggufpair.tune.run import profile_name

    def drafted(draft, runs):
        p = _point(4, runs)
        return PointResult(p.config.with_(draft=Path(draft)), p.measurement, None, 1.0)

    base = _point(0, [40.0, 41.0], draft=False)
    t = Path("/m/target.gguf")
    assert profile_name(TuneResult(points=[base, drafted("/m/a.gguf", [50.0, 51.0])]), t) == "target+a"
    assert profile_name(TuneResult(points=[base, drafted("/m/a.gguf", [30.0, 31.0])]), t) == "target+a"
    two = [base, drafted("/m/a.gguf", [30.0, 31.0]), drafted("/m/b.gguf", [31.0, 30.0])]
    assert profile_name(TuneResult(points=two), t) == "target+a+b"
    two[2] = drafted("/m/b.gguf", [60.0, 61.0])  # b is the answer
    assert profile_name(TuneResult(points=two), t) == "target+b"
    many = [base] + [drafted(f"/m/{'x' * 40}{i}.gguf", [30.0, 31.0]) for i in range(4)]
    assert profile_name(TuneResult(points=many), t) == f"target+{'x' * 40}0+3-more"
    assert profile_name(TuneResult(points=[base]), t) == "target"
    # in whatever order the drafts were given, one name
    assert profile_name(TuneResult(points=[base, two[2], two[1]]), t) == "target+b"
    assert profile_name(TuneResult(points=[base, drafted("/m/b.gguf", [30.0, 31.0]), two[1]]), t) == "target+a+b"
    # the target's own MTP layers: `mtp` when they are the answer, or beside the files when nothing drafts
    def mtp(runs):
        p = _point(3, runs)
        return PointResult(p.config.with_(draft=None, spec_type="draft-mtp"), p.measurement, None, 1.0)

    assert profile_name(TuneResult(points=[base, mtp([60.0, 61.0])]), t) == "target+mtp"
    assert profile_name(TuneResult(points=[base, mtp([30.0, 31.0])]), t) == "target+mtp"
    assert profile_name(TuneResult(points=[base, drafted("/m/a.gguf", [30.0, 31.0]), mtp([30.0, 31.0])]), t) == \
        "target+a+mtp"
    assert profile_name(TuneResult(points=[base, drafted("/m/a.gguf", [30.0, 31.0]), mtp([60.0, 61.0])]), t) == \
        "target+mtp"


def test_a_profile_about_to_be_replaced_is_described(tmp_path):
    from ggufpair.tune.run import previous_profile

    path = tmp_path / "p.toml"
    assert previous_profile(path) is None
    path.write_text('[profile]\ncreated = "2026-12-03T07:10:42+00:00"\n[measurements.recommended]\n'
                    'label = "ngram-simple size_n 4"\ntokens_per_second = 73.51\n')
    assert previous_profile(path) == \
        "the profile of that name tuned 2026-12-03 07:10 UTC: ngram-simple size_n 4, 73.5 tok/s"
    path.write_text("not toml [")
    assert previous_profile(path) == "an unreadable profile of that name"


def test_a_prediction_for_a_value_already_measured_shows_the_measurement_beside_it():
    from ggufpair.tune.stages import predictions_text

    assert predictions_text([(8, 62.9), (16, 62.6)], {8: 87.0}) == "8: 62.9 (measured 87.0), 16: 62.6"
    assert predictions_text([(4, 50.0)], {}, "n_max ") == "n_max 4: 50.0"


def test_the_noise_a_kind_that_drafted_nothing_shows_is_said():
    """An n-gram kind that drafted nothing ran as the baseline does (measure() marks such a run not live): how
    far it measured from the baseline is noise seen on this machine, said beside the assumed 5% (a new user
    saw 1.07x from one), and no stable ranking is then claimed on a narrower band."""
    from dataclasses import replace

    from ggufpair.tune.run import observed_noise

    base = _point(0, [40.0, 40.5], draft=False)
    idle = _point(0, [43.0, 43.4], draft=False)  # not live, nothing drafted: as measure() leaves such a run
    idle = PointResult(idle.config.with_ngram("ngram-mod"), idle.measurement, None, 1.0)
    fast = _point(4, [60.0, 61.0])
    result = TuneResult(points=[base, idle, fast])
    off, label = observed_noise(result)
    assert round(off, 3) == round(43.2 / 40.25 - 1, 3) and label.startswith("ngram-mod")
    text = recommendation_text(result)
    assert "What noise is here: ngram-mod" in text and "7% off it" in text and "Stable:" not in text
    assert observed_noise(TuneResult(points=[base, fast])) is None  # every speculating run drafted
    # a build without the speculation counters: a live run with no draft counts is no evidence of noise
    blind = PointResult(idle.config, replace(idle.measurement, speculative=True), None, 1.0)
    assert observed_noise(TuneResult(points=[base, blind, fast])) is None


def test_check_compares_with_the_paired_baseline_the_tune_recorded():
    """The tune records its answer's paired baseline; a profile from before that falls back to its
    no-speculation points at the answer's KV type and concurrency (points without a kind: no draft_max, no
    n-gram)."""
    from ggufpair.cli.tune_cmds import profiled_baseline

    cfg = ServerConfig(target=Path("t"), cache_type_k="f16")
    points = [{"kind": "none", "tokens_per_second": 40.0, "target_kv": "f16", "concurrency": 1},
              {"kind": "none", "tokens_per_second": 44.0, "target_kv": "q8_0", "concurrency": 1},
              {"kind": "none", "tokens_per_second": 90.0, "target_kv": "f16", "concurrency": 4},
              {"kind": "ngram-simple", "tokens_per_second": 80.0, "target_kv": "f16", "concurrency": 1}]
    recorded = {"measurements": {"recommended": {"paired_baseline_tps": 41.5}, "points": points}}
    assert profiled_baseline(recorded, cfg) == 41.5
    assert profiled_baseline({"measurements": {"points": points}}, cfg) == 40.0
    old = [{"tokens_per_second": 39.0, "draft_max": 0}, {"tokens_per_second": 70.0, "draft_max": 4}]
    assert profiled_baseline({"measurements": {"points": old}}, cfg) == 39.0
    assert profiled_baseline({"measurements": {}}, cfg) is None
