"""ggufpair's pair verdict on generated pairs: each llama.cpp rule failing alone, edges, defaults, fixes."""

from __future__ import annotations

import pytest
from gguf import GGUFValueType as T

from ggufpair.pairing.verdict import Route, Severity, check_pair, inspect_pair, override_argument, parse_override
from ggufpair.errors import UsageError
from ggufpair.format.model_info import read_model_info
from tests.ggufmake import tiny_model
from tests.pair_cases import ADD_BOS, BOS, CASES, build


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_names_the_check_llama_cpp_fails_on(case, tmp_path):
    target, draft = build(case, tmp_path)
    verdict = inspect_pair(target, draft, case.overrides)
    assert verdict.llama_check == case.expected
    assert verdict.compatible == (case.expected is None)


def _pair(tmp_path, draft_changes=None, target_changes=None, **kw):
    t = tiny_model(tmp_path / "t.gguf", changes=target_changes)
    d = tiny_model(tmp_path / "d.gguf", changes=draft_changes, **kw)
    return check_pair(read_model_info(t), read_model_info(d))


def test_add_bos_finding_names_key_values_and_both_fixes(tmp_path):
    verdict = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    (f,) = verdict.blockers
    assert (f.check, f.keys, f.target_value, f.draft_value) == ("add_bos", (ADD_BOS,), True, False)
    assert f.speculation_off and f.llama_reports
    routes = {fix.route: fix for fix in f.fixes}
    assert routes[Route.OVERRIDE_KV].argument == "tokenizer.ggml.add_bos_token=bool:true"
    assert routes[Route.PATCH].value is True
    assert "fixable" in verdict.summary


def test_override_fix_is_verified_against_both_models(tmp_path):
    """The override must leave the target as it is and make the draft agree; the fixed pair is compatible."""
    verdict = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    fix = next(x for x in verdict.blockers[0].fixes if x.route == Route.OVERRIDE_KV)
    key, value = parse_override(fix.argument)
    fixed = check_pair(verdict.target, verdict.draft, {key: value})
    assert fixed.compatible
    assert fixed.draft.vocab.add_bos is False  # the stored file is untouched


def test_bos_id_outside_draft_vocab_has_no_fix(tmp_path):
    t = tiny_model(tmp_path / "t.gguf", n_tokens=420, changes={BOS: (T.UINT32, 400)})
    d = tiny_model(tmp_path / "d.gguf", n_tokens=300)
    verdict = check_pair(read_model_info(t), read_model_info(d))
    (f,) = verdict.blockers
    assert f.check == "bos_id" and f.target_value == 400 and f.draft_value == 1
    assert f.fixes == ()
    assert "not fixable" in verdict.summary


def test_every_failing_rule_is_reported_not_only_the_first(tmp_path):
    verdict = _pair(tmp_path, {ADD_BOS: (T.BOOL, False), "tokenizer.ggml.add_eos_token": (T.BOOL, True)})
    assert [f.check for f in verdict.blockers] == ["add_bos", "add_eos"]
    assert [f.llama_reports for f in verdict.blockers] == [True, False]


def test_vocab_type_mismatch_is_not_fixable_and_stops_the_checks(tmp_path):
    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", tokenizer="gpt2")
    verdict = check_pair(read_model_info(t), read_model_info(d))
    assert [f.check for f in verdict.blockers] == ["vocab_type"]
    assert verdict.blockers[0].fixes == ()


def test_few_text_differences_are_patchable_many_are_not(tmp_path):
    from tests.ggufmake import spm_tokens

    few = spm_tokens(300)
    few[100] = "<renamed>"
    many = spm_tokens(300)
    for i in range(5, 300):
        many[i] = f"x{i}"
    t = read_model_info(tiny_model(tmp_path / "t.gguf"))
    d_few = read_model_info(tiny_model(tmp_path / "few.gguf", tokens=few))
    d_many = read_model_info(tiny_model(tmp_path / "many.gguf", tokens=many))
    f_few = check_pair(t, d_few).blockers[0]
    f_many = check_pair(t, d_many).blockers[0]
    assert f_few.check == f_many.check == "token_text"
    assert [x.route for x in f_few.fixes] == [Route.PATCH]
    assert "id 100" in f_few.message and f_few.draft_value == "<renamed>"
    assert f_many.fixes == ()


def test_advisories_size_architecture_context_template(tmp_path):
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    t_kv = {**model_kv(ctx=8192, arch="llama"), **vocab_kv(),
            "tokenizer.chat_template": (T.STRING, "{{ messages }}")}
    d_kv = {**model_kv(ctx=2048, arch="qwen3"), **vocab_kv()}
    t = write_gguf(tmp_path / "t.gguf", t_kv, [("token_embd.weight", (64, 64))])
    d = write_gguf(tmp_path / "d.gguf", d_kv, [("token_embd.weight", (64, 32))])
    verdict = inspect_pair(t, d)
    assert verdict.compatible
    by_check = {f.check: f for f in verdict.findings}
    assert by_check["draft_size"].severity == Severity.WARNING  # 50% of the target
    assert by_check["architecture"].severity == Severity.WARNING
    assert (by_check["context_length"].target_value, by_check["context_length"].draft_value) == (8192, 2048)
    assert by_check["chat_template"].severity == Severity.INFO and "harmless" in by_check["chat_template"].message


@pytest.mark.parametrize("value,text", [(True, "k=bool:true"), (False, "k=bool:false"), (7, "k=int:7"),
                                        (0.5, "k=float:0.5"), ("x y", "k=str:x y")])
def test_override_arguments_round_trip(value, text):
    assert override_argument("k", value) == text
    assert parse_override(text) == ("k", value)


@pytest.mark.parametrize("bad", ["k", "k=bool", "k=bool:yes", "=int:1", "k=list:1", "k=int:x"])
def test_bad_override_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        parse_override(bad)


SPECIAL_ARCH = {"eagle3": "eagle3", "dflash": "dflash", "dspark": "dflash"}  # llama.cpp has no dspark architecture
SPECIAL_KV = {"eagle3": {}, "dflash": {"dflash.target_layers": (T.ARRAY, [0, 1], T.INT32)},
              "dspark": {"dflash.target_layers": (T.ARRAY, [0, 1], T.INT32)}}
SPECIAL_TENSORS = {"eagle3": None, "dflash": None,  # DSpark: the Markov head makes one (speculative.cpp N2378)
                   "dspark": [("token_embd.weight", (8, 4)), ("markov_w1.weight", (8, 300))]}


@pytest.mark.parametrize("kind", ["eagle3", "dflash", "dspark"])
def test_drafts_llama_cpp_runs_without_the_vocab_checks_get_none(kind, tmp_path):
    """Only draft-simple calls common_speculative_are_compatible: an EAGLE-3/DFlash/DSpark draft with other
    special ids and flags is not blocked (a plain draft with the same vocabulary is), and the verdict says which
    --spec-type it needs. A head with fewer tokens than the target is blocked: it is fed the target's ids, and
    the pinned llama-server dies on the first one past its vocabulary (seen with generated heads)."""
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    target = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv(n_tokens=300)})
    other_ids = {**vocab_kv(n_tokens=300), BOS: (T.UINT32, 3), ADD_BOS: (T.BOOL, False)}
    plain = write_gguf(tmp_path / "plain.gguf", {**model_kv(), **other_ids})
    special = write_gguf(tmp_path / "special.gguf", {**model_kv(arch=SPECIAL_ARCH[kind]), **other_ids,
                                                     **SPECIAL_KV[kind]}, SPECIAL_TENSORS[kind])
    assert not inspect_pair(target, plain).compatible
    verdict = inspect_pair(target, special)
    assert verdict.compatible and not verdict.blockers
    assert any(f"draft-{kind}" in f.message for f in verdict.findings)
    smaller = write_gguf(tmp_path / "smaller.gguf", {**model_kv(arch=SPECIAL_ARCH[kind]), **vocab_kv(n_tokens=200),
                                                     **SPECIAL_KV[kind]}, SPECIAL_TENSORS[kind])
    verdict = inspect_pair(target, smaller)
    (blocker,) = verdict.blockers
    assert blocker.check == "head_vocab" and "200 tokens, the target's 300" in blocker.message
    assert not any(f.check == "vocab_tail" for f in verdict.findings)  # no "it merely never proposes them" beside it


@pytest.mark.parametrize("kind", ["dflash", "dspark"])
def test_a_dflash_draft_that_cannot_read_the_target_is_blocked(kind, tmp_path):
    """What the pinned llama-server did with generated DFlash drafts (tests/integration/test_model_drafters.py
    runs the good one): another hidden size, or the target's own layer count as a layer to read, start with
    speculation on and die on the first request; a layer beyond aborts at start-up; no layers, refused."""
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    target = write_gguf(tmp_path / "t.gguf", {**model_kv(n_layers=4), **vocab_kv()})

    def draft(name, layers, n_embd=64):
        kv = {**model_kv(n_layers=1, n_embd=n_embd, arch="dflash"), **vocab_kv()}
        if layers is not None:
            kv["dflash.target_layers"] = (T.ARRAY, list(layers), T.INT32)
        return write_gguf(tmp_path / f"{name}.gguf", kv, SPECIAL_TENSORS[kind])

    good = inspect_pair(target, draft("good", (1, 2, 3)))
    assert good.compatible and any(f.check == kind and f.severity == Severity.INFO for f in good.findings)
    # a head's architecture is its own: no "different model families" warning
    assert not any(f.check == "architecture" for f in good.findings), good.findings
    cases = {"hidden": ((1, 2, 3), 32, "hidden size is 32, and the target's is 64", "dies on the first request"),
             "last": ((1, 2, 4), 64, "target layer 4, and the target gives layers 0-3", "dies on the first request"),
             "beyond": ((1, 2, 9), 64, "target layer 9", "aborts at start-up"),
             "none": (None, 64, "names no target layers", "refuses to load it"),
             "empty": ((), 64, "are [], not layer numbers", "aborts at start-up")}
    for name, (layers, n_embd, what, when) in cases.items():
        verdict = inspect_pair(target, draft(name, layers, n_embd))
        assert not verdict.compatible, name
        (blocker,) = verdict.blockers
        assert what in blocker.message and when in blocker.message and blocker.llama_reports, blocker.message
    # the final hidden state (layer 4 of 4) is given by the few graphs that build it (a DeepSeek-V4 target)
    ds4 = write_gguf(tmp_path / "ds4.gguf", {**model_kv(n_layers=4, arch="deepseek4"), **vocab_kv()})
    assert not inspect_pair(ds4, draft("last-on-ds4", (1, 2, 4))).blockers
    # a target whose graph gives no layer inputs at all (Gemma 3, in the pinned build): warned, not refused,
    # since a later build may give them
    gemma3 = write_gguf(tmp_path / "g3.gguf", {**model_kv(n_layers=4, arch="gemma3"), **vocab_kv()})
    verdict = inspect_pair(gemma3, draft("on-gemma3", (1, 2, 3)))
    assert verdict.compatible and any(f.check == f"{kind}_target_arch" and f.severity == Severity.WARNING
                                      and "layer input tensor is null" in f.message for f in verdict.findings)
    assert not any(f.check.endswith("_target_arch") for f in good.findings)  # a llama target gives them


def test_a_tune_runs_special_drafts_by_their_own_spec_type(tmp_path):
    from ggufpair.engine.config import ServerConfig, spec_type_for
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    assert [spec_type_for(k) for k in (None, "mtp", "eagle3", "dflash", "dspark")] == [
        "draft-simple", "draft-simple", "draft-eagle3", "draft-dflash", "draft-dspark"]
    from ggufpair.tune.search import TuneSpec, with_draft_kind

    eagle = read_model_info(write_gguf(tmp_path / "e.gguf", {**model_kv(arch="eagle3"), **vocab_kv()}))
    plain = read_model_info(write_gguf(tmp_path / "p.gguf", {**model_kv(), **vocab_kv()}))
    spec = TuneSpec(base=ServerConfig(tmp_path / "t.gguf", eagle.path), lengths=(2,), target_kv=("f16",),
                    draft_kv=("f16",), n_predict=8, repeats=1)
    assert with_draft_kind(spec, eagle).base.spec_type == "draft-eagle3"
    assert with_draft_kind(spec, plain) is spec and with_draft_kind(spec, None) is spec


def test_override_of_the_wrong_kind_is_ignored_and_said(tmp_path):
    """llama.cpp ignores an --override-kv whose kind differs from the key's (with a warning): so does the
    verdict, and it says so; several overrides in one comma-separated argument are read as llama-server does."""
    from ggufpair.cli.main import main

    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    verdict = inspect_pair(t, d, {ADD_BOS: 1})
    assert not verdict.compatible
    assert any(f.check == "override_ignored" and "expects bool" in f.message for f in verdict.findings)
    assert main(["inspect", str(t), str(d), "--override-kv", f"{ADD_BOS}=bool:true,tokenizer.ggml.add_eos_token=bool:false"]) == 0


def test_the_same_file_as_both_is_warned(tmp_path):
    t = tiny_model(tmp_path / "t.gguf")
    verdict = inspect_pair(t, tmp_path / "." / "t.gguf")
    assert verdict.compatible and [f.check for f in verdict.findings] == ["same_file"]
