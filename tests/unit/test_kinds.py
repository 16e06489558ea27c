"""The n-gram kinds as data: what each build's --help offers, how each dialect spells a kind and its
parameters, the mix with a draft model, and the checks on their values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import parse_help
from ggufpair.engine.kinds import KINDS, kind, parse_kinds
from ggufpair.errors import UsageError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "help"
NEW = parse_help((FIXTURES / "llama-server-11434-spec.txt").read_text())
OLD = parse_help((FIXTURES / "llama-server-2025-draft.txt").read_text())
MID = parse_help((FIXTURES / "llama-server-2026-ngram-spec.txt").read_text())
T, D = Path("/m/t.gguf"), Path("/m/d.gguf")


def _flags(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("-")}


def test_each_build_offers_what_its_help_lists():
    assert NEW.ngram_kinds == ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")
    assert NEW.ngram_with_draft  # one comma list with the draft kinds
    assert set(MID.ngram_kinds) == set(KINDS) and not MID.ngram_with_draft  # draftless kinds only, no draft beside
    assert OLD.ngram_kinds == () and not OLD.ngram_with_draft


def test_ngram_mod_renders_every_parameter_for_the_2026_11_build():
    cfg = ServerConfig(T, ctx=2048).with_ngram("ngram-mod", {"n_min": 4, "n_max": 16})
    argv = cfg.argv(NEW)
    f = _flags(argv)
    assert f["--spec-type"] == "ngram-mod" and argv.count("--spec-type") == 1
    assert (f["--spec-ngram-mod-n-match"], f["--spec-ngram-mod-n-min"], f["--spec-ngram-mod-n-max"]) == ("24", "4", "16")
    assert "--spec-draft-model" not in f and "--spec-draft-n-max" not in f
    assert cfg.stateful and not cfg.has_draft and cfg.speculates


def test_ngram_simple_keeps_nothing_across_requests_and_has_no_min_hits():
    cfg = ServerConfig(T).with_ngram("ngram-simple", {"size_m": 16})
    f = _flags(cfg.argv(NEW))
    assert (f["--spec-ngram-simple-size-n"], f["--spec-ngram-simple-size-m"]) == ("12", "16")
    assert "--spec-ngram-simple-min-hits" not in f and not cfg.stateful
    with pytest.raises(UsageError, match="no parameter min_hits"):
        ServerConfig(T).with_ngram("ngram-simple", {"min_hits": 2})


def test_the_mix_is_one_spec_type_list_with_the_draft():
    cfg = ServerConfig(T, D, draft_max=4).with_ngram("ngram-map-k", {"min_hits": 2})
    argv = cfg.argv(NEW)
    f = _flags(argv)
    assert argv.count("--spec-type") == 1 and f["--spec-type"] == "ngram-map-k,draft-simple"
    assert f["--spec-ngram-map-k-min-hits"] == "2" and f["--spec-draft-model"] == str(D)
    assert f["--spec-draft-n-max"] == "4"


def test_early_2026_builds_spell_the_map_parameters_once_and_cannot_mix():
    f = _flags(ServerConfig(T).with_ngram("ngram-simple", {"size_n": 8}).argv(MID))
    assert f["--spec-type"] == "ngram-simple" and (f["--spec-ngram-size-n"], f["--spec-ngram-size-m"]) == ("8", "48")
    f = _flags(ServerConfig(T).with_ngram("ngram-mod").argv(MID))  # its removal notes name the older spellings
    assert (f["--spec-ngram-size-n"], f["--draft-min"], f["--draft-max"]) == ("24", "48", "64")
    with pytest.raises(UsageError, match="only without a draft model"):
        ServerConfig(T, D).with_ngram("ngram-simple").argv(MID)


def test_a_build_without_n_gram_kinds_refuses_one():
    with pytest.raises(UsageError, match="no --spec-type ngram-mod"):
        ServerConfig(T).with_ngram("ngram-mod").argv(OLD)


def test_a_parameter_the_build_cannot_set_is_refused_unless_left_at_its_default():
    no_mod_flags = parse_help("-m,    --model FNAME   model\n--host HOST   h\n--port PORT   p\n"
                              "--spec-type [none|ngram-mod]   kinds\n")
    assert _flags(ServerConfig(T).with_ngram("ngram-mod").argv(no_mod_flags))["--spec-type"] == "ngram-mod"
    with pytest.raises(UsageError, match="cannot set ngram-mod.s n_min"):
        ServerConfig(T).with_ngram("ngram-mod", {"n_min": 8, "n_max": 16}).argv(no_mod_flags)


@pytest.mark.parametrize("values, message", [
    ({"n_max": -1}, "at least 1"),
    ({"n_match": 0}, "at least 1"),
    ({"n_size": 3}, "no parameter n_size"),
])
def test_bad_values_are_usage_errors(values, message):
    with pytest.raises(UsageError, match=message):
        kind("ngram-mod").values(values)


def test_a_floor_above_the_length_is_allowed_as_llama_cpp_allows_it():
    """ngram-mod keeps only full n_max drafts then (speculative.cpp: a draft shorter than n_min is dropped)."""
    assert kind("ngram-mod").values({"n_max": 16}) == {"n_match": 24, "n_min": 48, "n_max": 16}


def test_unknown_kind_and_parameters_without_a_kind_are_refused():
    with pytest.raises(UsageError, match="unknown n-gram kind"):
        ServerConfig(T).with_ngram("ngram-fast")
    with pytest.raises(UsageError, match="without an n-gram kind"):
        ServerConfig(T, ngram_params=(("n_max", 8),))


def test_kinds_option():
    assert parse_kinds("draft,ngram", NEW) == ("draft", *KINDS)
    assert parse_kinds("ngram-mod,none") == ("ngram-mod", "none")
    assert parse_kinds("draft,ngram", OLD) == ("draft",)  # what the build lacks is left out of "ngram"
    with pytest.raises(UsageError, match="unknown kind 'eagle'"):
        parse_kinds("eagle")
    with pytest.raises(UsageError, match="no --spec-type ngram-mod"):
        parse_kinds("ngram-mod", OLD)


def test_every_kind_is_complete_data():
    for k in KINDS.values():
        for p in k.params:
            assert p.default in p.values and p.flags[0].startswith(f"--spec-ngram-{k.name.removeprefix('ngram-')}-")
        assert k.describe({}).startswith(k.name)
