"""The pair verdict: will llama.cpp speculate with this draft, and if not, which key is at fault.

The blocking checks are `common_speculative_are_compatible` (common/speculative.cpp), in its order, on the
effective values computed by `ggufpair.format.vocab`. llama.cpp stops at the first failure and logs one
generic line (two of its five checks only at debug level); ggufpair runs every check, marks the one
llama.cpp would report, and says which fixes exist for each.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ggufpair.format.model_info import ModelInfo, read_model_info
from ggufpair.format.vocab import (ADD_BOS_KEY, ADD_EOS_KEY, BOS_KEY, EOS_KEY, NEEDS_BOS, VocabInfo,
                                   duplicate_problem, read_vocab)

VOCAB_MAX_SIZE_DIFFERENCE = 128  # SPEC_VOCAB_MAX_SIZE_DIFFERENCE
VOCAB_CHECK_START_TOKEN_ID = 5  # SPEC_VOCAB_CHECK_START_TOKEN_ID
TOKENS_KEY = "tokenizer.ggml.tokens"
MODEL_KEY = "tokenizer.ggml.model"
TEXT_PATCH_MAX_FRACTION = 0.01
"""Token texts are patchable when at most this fraction of the compared ids differ; more is another tokenizer."""
DRAFT_SIZE_WARN_RATIO = 0.3
VOCAB_UNCHECKED_KINDS = frozenset({"eagle3", "dflash", "dspark"})
"""Only draft-simple calls common_speculative_are_compatible (speculative.cpp:N283); EAGLE-3, DFlash and DSpark
drafts read the target's hidden states and may carry a reduced vocabulary."""


class Severity(str, enum.Enum):
    BLOCKER = "blocker"  # llama.cpp will not speculate (or not load) with this pair
    WARNING = "warning"  # speculation works, but expect less from it
    INFO = "info"  # worth knowing, harmless


class Route(str, enum.Enum):
    OVERRIDE_KV = "override-kv"  # no copy: --override-kv on the llama-server command line
    PATCH = "patch"  # rewrite the draft's metadata (`ggufpair fix`)


@dataclass(frozen=True)
class Fix:
    route: Route
    key: str
    value: Any  # the value the key should take
    argument: str | None = None  # the --override-kv argument, for that route
    note: str = ""


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str
    keys: tuple[str, ...] = ()
    target_value: Any = None
    draft_value: Any = None
    speculation_off: bool = False  # llama-server starts, but silently serves without speculation
    fixes: tuple[Fix, ...] = ()
    llama_reports: bool = False  # the first failing check: the one llama.cpp itself trips on


@dataclass(frozen=True)
class Verdict:
    target: ModelInfo  # the files as stored
    draft: ModelInfo
    findings: tuple[Finding, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def as_loaded(self) -> tuple[ModelInfo, ModelInfo]:
        """Target and draft as llama.cpp will see them with the overrides: the values the verdict was judged
        on, and which keys an override set (`vocab.overridden`), for display beside the verdict."""
        if not self.overrides:
            return self.target, self.draft
        return tuple(replace(m, vocab=read_vocab(m.header, self.overrides)) for m in (self.target, self.draft))

    @property
    def blockers(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == Severity.BLOCKER)

    @property
    def compatible(self) -> bool:
        """True when llama.cpp would run speculative decoding with this pair."""
        return not self.blockers

    @property
    def llama_check(self) -> str | None:
        """The check llama.cpp fails on (None when compatible)."""
        return next((f.check for f in self.blockers if f.llama_reports), None)

    @property
    def server_outcome(self) -> str:
        """What llama-server does with an incompatible pair: it fails to load a vocabulary it refuses or aborts
        on, or it serves, silently, without speculation."""
        if any(f.check.endswith(("_vocab_load", "_duplicate_tokens", "_key_type")) or f.check.startswith("eagle3_")
               for f in self.blockers):  # an EAGLE-3 head llama.cpp refuses, or aborts on, at start-up
            return "fail to load the models"
        return "serve WITHOUT speculation"

    def refuse(self, hint: str) -> None:
        """Raise IncompatiblePairError (exit 10) for an incompatible pair, saying what llama-server would do."""
        if not self.compatible:
            from ggufpair.errors import IncompatiblePairError

            raise IncompatiblePairError(f"target {self.target.path}, draft {self.draft.path}: the pair is incompatible, "
                                        f"so llama-server would {self.server_outcome}: {self.summary}", hint=hint)

    @property
    def summary(self) -> str:
        if self.compatible:
            return "compatible: llama.cpp will speculate with this draft"
        first = next((f for f in self.blockers if f.llama_reports), self.blockers[0])
        fixable = all(f.fixes for f in self.blockers)
        tail = "fixable with `ggufpair fix`" if fixable else "not fixable by metadata"
        return f"incompatible ({first.check}): {first.message}; {tail}"


def override_argument(key: str, value: Any) -> str:
    """`KEY=TYPE:VALUE` as llama.cpp's --override-kv parses it."""
    if isinstance(value, bool):
        return f"{key}=bool:{'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{key}=int:{value}"
    if isinstance(value, float):
        return f"{key}=float:{value!r}"
    return f"{key}=str:{value}"


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `KEY=TYPE:VALUE` (llama.cpp's --override-kv syntax; several may be joined by commas there)."""
    from ggufpair.errors import UsageError

    key, eq, typed = text.partition("=")
    kind, colon, raw = typed.partition(":")
    parsers = {"bool": _parse_bool, "int": int, "float": float, "str": str}
    if not eq or not colon or not key or kind not in parsers:
        raise UsageError(f"bad override {text!r}", hint="use KEY=TYPE:VALUE with TYPE one of int, float, bool, str")
    try:
        return key, parsers[kind](raw)
    except ValueError:
        raise UsageError(f"bad override {text!r}: {raw!r} is not a valid {kind}") from None


def _parse_bool(raw: str) -> bool:
    if raw not in ("true", "false"):
        raise ValueError(raw)
    return raw == "true"


def check_pair(target: ModelInfo, draft: ModelInfo, overrides: Mapping[str, Any] | None = None) -> Verdict:
    """The verdict for `draft` drafting for `target`, with `--override-kv` values applied to both."""
    overrides = dict(overrides or {})
    tv = read_vocab(target.header, overrides) if overrides else target.vocab
    dv = read_vocab(draft.header, overrides) if overrides else draft.vocab
    findings = _load_findings(tv, dv, target, draft, overrides)
    if findings and all(f.check == "draft_key_type" and f.fixes for f in findings):
        # Only wrongly typed keys in the draft, each fixable: judge the rest as it will be once they hold the
        # target's values, so the plan fixes everything in one go.
        fixed = {**overrides, **{f.keys[0]: f.target_value for f in findings}}
        dv = read_vocab(draft.header, fixed)
    if (not findings or all(f.fixes for f in findings)) and draft.draft_kind not in VOCAB_UNCHECKED_KINDS:
        findings += _compatibility_findings(tv, dv, target, draft, overrides, after_load_fix=bool(findings))
    findings += _special_draft_findings(target, draft)
    findings += _advisory_findings(target, draft)
    ignored = dict.fromkeys(n for n in (*tv.notes, *dv.notes) if n.startswith("--override-kv"))
    findings += [Finding("override_ignored", Severity.WARNING, n) for n in ignored]
    findings += _bos_off_findings(target, draft, tv, dv, overrides)
    return Verdict(target, draft, tuple(findings), overrides)


def _bos_off_findings(target: ModelInfo, draft: ModelInfo, tv: VocabInfo, dv: VocabInfo,
                      overrides: Mapping[str, Any]) -> list[Finding]:
    """An override that turns BOS off applies to the target as well (llama-server gives one list to both):
    for an architecture that needs a BOS token, the pair speculates but the target's own output degrades."""
    if ADD_BOS_KEY not in overrides:
        return []
    out = []
    for role, info, vocab in (("target", target, tv), ("draft", draft, dv)):
        if info.architecture in NEEDS_BOS and not vocab.add_bos and ADD_BOS_KEY in vocab.overridden:
            out.append(Finding("bos_off", Severity.WARNING,
                               f"--override-kv {ADD_BOS_KEY}=bool:false turns BOS off for the {role} too (llama-server "
                               f"applies one list to target and draft): {info.architecture} models need a BOS token "
                               "at the start, so its answers degrade; make both add BOS instead "
                               f"(`ggufpair fix DRAFT --reference TARGET`)", keys=(ADD_BOS_KEY,)))
    return out


def inspect_pair(target_path, draft_path, overrides: Mapping[str, Any] | None = None) -> Verdict:
    return check_pair(read_model_info(target_path), read_model_info(draft_path), overrides)


WRONG_TYPE_ATTRS = {ADD_BOS_KEY: "add_bos", ADD_EOS_KEY: "add_eos", BOS_KEY: "bos_id", EOS_KEY: "eos_id"}


def _load_findings(tv: VocabInfo, dv: VocabInfo, target: ModelInfo, draft: ModelInfo,
                   overrides: Mapping[str, Any] | None = None) -> list[Finding]:
    """What makes llama.cpp fail to load either model, before any compatibility check runs."""
    out = []
    same_tokens = tv.tokens is not None and dv.tokens is not None and tv.tokens.raw_bytes() == dv.tokens.raw_bytes()
    # each vocabulary's duplicate texts, found once (a draft with the target's very tokens has the target's)
    duplicates = {"target": duplicate_problem(tv), "draft": None if same_tokens else duplicate_problem(dv)}
    if (not tv.load_error and not any(duplicates.values()) and dv.only_wrong_types and target.vocab.vocab_type is not None
            and set(dv.wrong_type_keys) <= set(WRONG_TYPE_ATTRS)):
        # The draft stores a flag or a special id with a type the loader refuses: the target's value, with the
        # right type, repairs it (an override of the right kind wins over the stored key; a patch rewrites it).
        for key in dv.wrong_type_keys:
            attr = WRONG_TYPE_ATTRS[key]
            value = getattr(tv, attr)
            fix = _flag_fixes if attr.startswith("add_") else _id_fixes
            out.append(Finding(
                check="draft_key_type", severity=Severity.BLOCKER, keys=(key,), llama_reports=not out,
                target_value=value, draft_value=draft.header.get(key),
                message=f"the draft stores {key} as {draft.header.kv[key].type.name}, which llama.cpp's loader "
                        f"refuses (it expects {'BOOL' if attr.startswith('add_') else 'UINT32'}); the target's "
                        f"value is {value}",
                fixes=fix(key, value, target, draft, overrides or {})))
        return out
    for role, vocab in (("target", tv), ("draft", dv)):
        if vocab.load_error:
            out.append(Finding(
                check=f"{role}_vocab_load", severity=Severity.BLOCKER, llama_reports=not out,
                message=f"llama.cpp cannot load the {role}'s vocabulary: {vocab.load_error}",
                keys=_keys_in(vocab.load_error),
            ))
        elif duplicates[role]:
            # A draft of the target's tokenizer with a few texts changed into duplicates: the target's texts
            # (which load) repair it, like any other text difference.
            fix = (_text_patch_fix(tv.tokens.load(), dv.tokens.load(), start=0)
                   if role == "draft" and not tv.load_error and not duplicates["target"] and tv.tokens is not None
                   else None)
            out.append(Finding(
                check=f"{role}_duplicate_tokens", severity=Severity.BLOCKER, keys=(TOKENS_KEY,), llama_reports=not out,
                message=f"the {role} has duplicate token texts: {duplicates[role]}"
                        + ("; the target's texts for the ids that differ repair it" if fix else ""),
                fixes=(fix,) if fix else (),
            ))
    return out


def _text_patch_fix(t_texts, d_texts, start: int) -> Fix | None:
    """Copying the target's texts (and token types) into the draft, when both have one size and only a few
    ids (from `start`) differ; else None: then they are different tokenizers, which metadata cannot fix."""
    if len(t_texts) != len(d_texts):
        return None
    diffs = sum(1 for i in range(start, len(t_texts)) if t_texts[i] != d_texts[i])
    if not diffs or diffs > max(16, TEXT_PATCH_MAX_FRACTION * max(len(t_texts) - start, 1)):
        return None
    return Fix(Route.PATCH, TOKENS_KEY, None,
               note=f"copy the target's texts (and token types) for the {diffs} differing ids into the draft")


def _keys_in(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(re.findall(r"tokenizer\.[a-z_.]+[a-z]", text)))


def _compatibility_findings(tv: VocabInfo, dv: VocabInfo, target: ModelInfo, draft: ModelInfo,
                            overrides: Mapping[str, Any], after_load_fix: bool = False) -> list[Finding]:
    """`after_load_fix`: the draft's vocabulary as it will be once its wrongly typed keys are fixed (llama.cpp
    reports the load failure first, so none of these is what it reports)."""
    out: list[Finding] = []

    def add(**kw) -> None:
        kw.setdefault("severity", Severity.BLOCKER)
        kw.setdefault("speculation_off", True)
        kw["llama_reports"] = not after_load_fix and not any(f.severity == Severity.BLOCKER for f in out)
        out.append(Finding(**kw))

    if tv.vocab_type != dv.vocab_type:
        add(check="vocab_type", keys=(MODEL_KEY,), target_value=tv.vocab_type_name, draft_value=dv.vocab_type_name,
            message=f"tokenizer types differ: target {tv.tokenizer_model!r} ({tv.vocab_type_name}), "
                    f"draft {dv.tokenizer_model!r} ({dv.vocab_type_name}); these are different tokenizers, "
                    "pick a draft from the target's family")
        # llama.cpp stops here; the other checks would compare unrelated vocabularies.
        return out

    # add_bos then add_eos: the flag must match; when it is set, so must the token id.
    for name, flag_key, id_key in (("bos", ADD_BOS_KEY, BOS_KEY), ("eos", ADD_EOS_KEY, EOS_KEY)):
        t_add, d_add = getattr(tv, f"add_{name}"), getattr(dv, f"add_{name}")
        t_id, d_id = getattr(tv, f"{name}_id"), getattr(dv, f"{name}_id")
        if t_add != d_add:
            add(check=f"add_{name}", keys=(flag_key,), target_value=t_add, draft_value=d_add,
                message=f"{flag_key} differs: target {_b(t_add)}, draft {_b(d_add)}"
                        f"{_stored_note(getattr(dv, f'add_{name}_stored'))}",
                fixes=_flag_fixes(flag_key, t_add, target, draft, overrides))
        # Once the flag agrees (the fix makes it the target's), llama.cpp compares the ids when it is set: a
        # mismatch there is reported too, or fixing the flag alone would leave the pair incompatible.
        if t_add and t_id != d_id:
            after_flag = " (compared once the flags agree)" if t_add != d_add else ""
            add(check=f"{name}_id", keys=(id_key,), target_value=t_id, draft_value=d_id,
                message=f"{name.upper()} ids differ: target {t_id}, draft {d_id}{after_flag}"
                        f"{_stored_note(getattr(dv, f'{name}_id_stored'))}",
                fixes=_id_fixes(id_key, t_id, target, draft, overrides))

    diff = abs(tv.n_tokens - dv.n_tokens)
    if diff > VOCAB_MAX_SIZE_DIFFERENCE:
        add(check="vocab_size", keys=(TOKENS_KEY,), target_value=tv.n_tokens, draft_value=dv.n_tokens,
            message=f"vocabulary sizes differ by {diff} (target {tv.n_tokens}, draft {dv.n_tokens}); llama.cpp "
                    f"allows at most {VOCAB_MAX_SIZE_DIFFERENCE} (it says so only at debug log level). "
                    "Metadata cannot fix this: the draft's embedding and output layers have their own size")
        return out

    out.extend(_text_findings(tv, dv, already_failed=after_load_fix or any(f.severity == Severity.BLOCKER for f in out)))
    return out


def _b(v: bool) -> str:
    return "true" if v else "false"


def _stored_note(stored: Any) -> str:
    return " (key missing from the draft: llama.cpp's default)" if stored is None else ""


def _text_findings(tv: VocabInfo, dv: VocabInfo, already_failed: bool) -> list[Finding]:
    if tv.tokens is None or dv.tokens is None:
        return []
    if tv.tokens.raw_bytes() == dv.tokens.raw_bytes():
        return []
    t_texts, d_texts = tv.tokens.load(), dv.tokens.load()
    n = min(len(t_texts), len(d_texts))
    diffs = [i for i in range(VOCAB_CHECK_START_TOKEN_ID, n) if t_texts[i] != d_texts[i]]
    if not diffs:
        return []
    first = diffs[0]
    compared = max(n - VOCAB_CHECK_START_TOKEN_ID, 1)
    fix = _text_patch_fix(t_texts, d_texts, start=VOCAB_CHECK_START_TOKEN_ID)
    patchable = fix is not None
    fixes = (fix,) if fix else ()
    sample = ", ".join(f"{i}: {t_texts[i][:24]!r} vs {d_texts[i][:24]!r}" for i in diffs[:3])
    why = "" if patchable else (" The vocabularies have different sizes or differ in too many ids to be one tokenizer;"
                                 " metadata cannot fix this.")
    return [Finding(
        check="token_text", severity=Severity.BLOCKER, speculation_off=True, llama_reports=not already_failed,
        keys=(TOKENS_KEY,), target_value=t_texts[first].decode("utf-8", "replace"),
        draft_value=d_texts[first].decode("utf-8", "replace"),
        message=f"token texts differ at {len(diffs)} of {compared} ids from id {VOCAB_CHECK_START_TOKEN_ID} "
                f"(first at id {first}; {sample}); llama.cpp says so only at debug log level.{why}",
        fixes=fixes,
    )]


def _with_override(info: ModelInfo, overrides: Mapping[str, Any], key: str, value: Any) -> VocabInfo:
    return read_vocab(info.header, {**overrides, key: value})


def _override_fix(key: str, value: Any, target: ModelInfo, draft: ModelInfo, overrides: Mapping[str, Any],
                  attr: str) -> Fix | None:
    """The --override-kv fix, only if it gives the target and the draft the right value alike
    (llama-server applies one override list to both models)."""
    tv = _with_override(target, overrides, key, value)
    dv = _with_override(draft, overrides, key, value)
    if getattr(tv, attr) != getattr(target.vocab if not overrides else read_vocab(target.header, overrides), attr):
        return None  # it would change the target's behaviour
    if getattr(dv, attr) != getattr(tv, attr) or tv.load_error or dv.load_error:
        return None
    return Fix(Route.OVERRIDE_KV, key, value, override_argument(key, value),
               note="applies to the target and the draft alike; right for both")


def _flag_fixes(key: str, value: bool, target: ModelInfo, draft: ModelInfo, overrides) -> tuple[Fix, ...]:
    attr = "add_bos" if key == ADD_BOS_KEY else "add_eos"
    fixes = [f for f in (_override_fix(key, value, target, draft, overrides, attr),) if f]
    fixes.append(Fix(Route.PATCH, key, value, note=f"set {key} = {_b(value)} in the draft"))
    return tuple(fixes)


def _id_fixes(key: str, value: int, target: ModelInfo, draft: ModelInfo, overrides) -> tuple[Fix, ...]:
    if value < 0 or value >= draft.vocab.n_tokens:
        return ()
    attr = "bos_id" if key == BOS_KEY else "eos_id"
    fixes = [f for f in (_override_fix(key, value, target, draft, overrides, attr),) if f]
    fixes.append(Fix(Route.PATCH, key, value, note=f"set {key} = {value} in the draft"))
    return tuple(fixes)


LAYER_INPUT_ARCHS = frozenset({
    "bailingmoe3", "deepseek4", "gemma4", "gpt-oss", "hunyuan-dense", "hunyuan_vl", "lfm2", "llama", "llama-embed",
    "mimo2", "minimax-01", "minimax-m2", "muse-glimmer", "nanbeige", "nemotron_h", "qwen3", "qwen35", "qwen35moe",
    "qwen3moe", "qwen3next", "qwen4exp"})
"""Target architectures whose graph hands a head the inputs of its layers (`res->t_layer_inp`, set in those
src/models/*.cpp of the pinned llama.cpp, 11434; architecture to graph by src/llama-model.cpp's factory). EAGLE-3
and DFlash heads ask for them (common/speculative.cpp N602, N1117); on any other target llama-server starts and
then dies on the first request (src/llama-graph.cpp:1413, "layer input tensor is null"). Later builds may add
architectures, so another one is warned of, not refused."""
LAST_LAYER_INPUT_ARCHS = frozenset({"deepseek4", "mimo2", "nemotron_h"})
"""Of those, the ones whose graph also gives the input a layer after the last would have (the final hidden state,
`t_layer_inp[n_layer]`: deepseek4.cpp:1330, mimo2.cpp:238, nemotron-h.cpp:238)."""


def _target_layers(draft: ModelInfo, key: str) -> list | None:
    """The `*.target_layers` array of a head, as stored (None when absent or not an array)."""
    layers = draft.header.get(key)
    return list(layers.items()) if hasattr(layers, "items") else list(layers) if isinstance(layers, (list, tuple)) else None


def _layer_input_finding(target: ModelInfo, kind: str, msg: str) -> list[Finding]:
    if not target.architecture or target.architecture in LAYER_INPUT_ARCHS:
        return []
    return [Finding(f"{kind}_target_arch", Severity.WARNING, msg + f"; but the pinned llama.cpp (11434) gives no "
                    f"layer inputs for a {target.architecture} target: its llama-server starts and dies on the first "
                    "request (\"layer input tensor is null\"); a later build may support it",
                    ("general.architecture",), target.architecture, None)]


def _head_vocab_finding(target: ModelInfo, draft: ModelInfo, msg: str) -> list[Finding]:
    """A head is fed the target's token ids: with fewer tokens in its own vocabulary (a reduced-vocabulary head
    keeps the full tokenizer and maps its outputs with d2t) the pinned llama-server starts with speculation on,
    then dies on the first request holding a token past the head's (seen here for EAGLE-3 and DFlash heads of 200
    tokens on a 300-token target: common.cpp:2216 "get_sub_batch: failed to add token 273")."""
    n_t, n_d = target.vocab.n_tokens, draft.vocab.n_tokens
    if not n_t or not n_d or n_d >= n_t:
        return []
    return [Finding("head_vocab", Severity.BLOCKER, msg + f"; but its vocabulary has {n_d:,} tokens, the target's "
                    f"{n_t:,}: llama-server starts with speculation on and dies on the first request holding a "
                    f"token id of {n_d:,} or more", ("tokenizer.ggml.tokens",), n_t, n_d, llama_reports=True)]


def _special_draft_findings(target: ModelInfo, draft: ModelInfo) -> list[Finding]:
    if draft.draft_kind == "eagle3":
        hidden = draft.header.get("eagle3.target_hidden_size")
        msg = ("the draft is an EAGLE-3 head: it needs `--spec-type draft-eagle3` (ggufpair passes it), reads the target's hidden "
               "states, and llama.cpp does not run the vocabulary checks for it")
        if isinstance(hidden, int) and target.n_embd and hidden != target.n_embd:
            return [Finding("eagle3_target", Severity.BLOCKER, msg + f"; but it was trained for a hidden size of "
                            f"{hidden}, and the target's is {target.n_embd}", ("eagle3.target_hidden_size",),
                            target.n_embd, hidden, llama_reports=True)]
        ids = _target_layers(draft, "eagle3.target_layers")
        n_target = (target.n_layers or 0) - target.n_nextn
        if ids is not None and len(ids) != 3:  # src/models/eagle3.cpp refuses the file
            return [Finding("eagle3_layers", Severity.BLOCKER, msg + f"; but it names {len(ids)} target layers "
                            "(eagle3.target_layers), and llama.cpp needs exactly 3", ("eagle3.target_layers",), 3, len(ids),
                            llama_reports=True)]
        if vocab := _head_vocab_finding(target, draft, msg):
            return vocab
        if ids is not None and all(isinstance(i, int) for i in ids) and target.n_layers and max(ids) > n_target:
            # common/speculative.cpp: GGML_ABORT("EAGLE3: target layer id %d exceeds target n_layer %d"): the
            # server dies at start-up, not a quiet fallback
            return [Finding("eagle3_layers", Severity.BLOCKER, msg + f"; but it reads target layer {max(ids)}, and "
                            f"the target has {n_target} (llama-server aborts at start-up)", ("eagle3.target_layers",),
                            n_target, max(ids), llama_reports=True)]
        return [Finding("eagle3", Severity.INFO, msg), *_layer_input_finding(target, "eagle3", msg)]
    if draft.draft_kind in ("dflash", "dspark"):
        return _dflash_findings(target, draft)
    if draft.draft_kind == "mtp":
        return [Finding("mtp", Severity.INFO, "the draft has NextN (MTP) layers: llama.cpp switches to draft-mtp "
                        "when no --spec-type is given; ggufpair passes --spec-type explicitly")]
    return []


def _dflash_findings(target: ModelInfo, draft: ModelInfo) -> list[Finding]:
    """A DFlash or DSpark draft reads the inputs of `dflash.target_layers` of the target, each of the target's
    hidden size, through its `fc` layer sized for its own hidden size. What the pinned llama-server does when
    they do not fit was seen here with generated drafts: a missing key is refused at load (src/models/dflash.cpp),
    an empty list aborts (speculative.cpp N1033); a layer past the target's last aborts at start-up
    (llama-context.cpp:1242, GGML_ASSERT(lid <= n_layer)); the target's own layer count (on a target that gives no
    input after its last layer) or another hidden size starts with speculation on and dies on the first request
    (llama-graph.cpp:1413 "layer input tensor is null"; common.cpp:2225 "get_sub_batch: failed to add
    embedding")."""
    kind = draft.draft_kind
    msg = (f"the draft is a {kind.upper()} draft: it needs `--spec-type draft-{kind}` (ggufpair passes it), reads "
           "the target's hidden states, and llama.cpp does not run the vocabulary checks for it")
    key = ("dflash.target_layers",)
    ids = _target_layers(draft, key[0])
    if ids is None:
        return [Finding("dflash_layers", Severity.BLOCKER, msg + "; but it names no target layers (dflash.target_layers): "
                        "llama.cpp refuses to load it", key, None, None, llama_reports=True)]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        return [Finding("dflash_layers", Severity.BLOCKER, msg + f"; but its target layers (dflash.target_layers) are "
                        f"{ids[:8]!r}, not layer numbers: llama-server aborts at start-up", key, None, ids[:8],
                        llama_reports=True)]
    if vocab := _head_vocab_finding(target, draft, msg):
        return vocab
    if target.n_embd and draft.n_embd and draft.n_embd != target.n_embd:
        return [Finding("dflash_target", Severity.BLOCKER, msg + f"; but its hidden size is {draft.n_embd}, and the "
                        f"target's is {target.n_embd}: llama-server starts with speculation on and dies on the first "
                        "request", ("dflash.embedding_length",), target.n_embd, draft.n_embd, llama_reports=True)]
    n_target = (target.n_layers or 0) - target.n_nextn
    last = n_target if target.architecture in LAST_LAYER_INPUT_ARCHS else n_target - 1  # the highest it can read
    if target.n_layers and max(ids) > last:
        when = "aborts at start-up" if max(ids) > n_target else "starts, then dies on the first request"
        return [Finding("dflash_layers", Severity.BLOCKER, msg + f"; but it reads the input of target layer {max(ids)}, "
                        f"and the target gives layers 0-{last} (llama-server {when})", key, last, max(ids),
                        llama_reports=True)]
    return [Finding(kind, Severity.INFO, msg), *_layer_input_finding(target, kind, msg)]


def _family(arch: str | None) -> str:
    return re.sub(r"[\d.]+[a-z]?$", "", arch or "").rstrip("-_") or (arch or "?")


def _advisory_findings(target: ModelInfo, draft: ModelInfo) -> list[Finding]:
    out = []
    if target.path.resolve() == draft.path.resolve():
        out.append(Finding("same_file", Severity.WARNING, "the target and the draft are the same file: llama.cpp "
                           "would speculate, but a draft as large as its target can only slow it down"))
        return out
    if target.weight_bytes and draft.weight_bytes / target.weight_bytes > DRAFT_SIZE_WARN_RATIO:
        out.append(Finding(
            "draft_size", Severity.WARNING, keys=(),
            target_value=target.weight_bytes, draft_value=draft.weight_bytes,
            message=f"the draft's weights are {draft.weight_bytes / target.weight_bytes:.0%} of the target's; a draft "
                    "pays off when each of its steps costs much less than the target's (usually under 10-20%)"))
    if target.architecture != draft.architecture and draft.draft_kind not in VOCAB_UNCHECKED_KINDS:  # a head's own
        same_family = _family(target.architecture) == _family(draft.architecture)
        out.append(Finding(
            "architecture", Severity.INFO if same_family else Severity.WARNING, keys=("general.architecture",),
            target_value=target.architecture, draft_value=draft.architecture,
            message=f"architectures differ ({target.architecture} vs {draft.architecture})"
                    + ("" if same_family else ": different model families usually agree less often, so acceptance is lower")))
    if target.context_length and draft.context_length and draft.context_length < target.context_length:
        out.append(Finding(
            "context_length", Severity.WARNING, keys=(f"{draft.architecture}.context_length",),
            target_value=target.context_length, draft_value=draft.context_length,
            message=f"the draft was trained for {draft.context_length} tokens of context, the target for "
                    f"{target.context_length}; llama.cpp runs the draft at the target's context, so expect lower "
                    "acceptance past the draft's length"))
    if target.chat_template_sha256 != draft.chat_template_sha256:
        out.append(Finding(
            "chat_template", Severity.INFO, keys=("tokenizer.chat_template",),
            target_value=target.chat_template_sha256, draft_value=draft.chat_template_sha256,
            message="chat templates differ: harmless for drafting, since the draft is fed the target's tokens and "
                    "never applies its own template"))
    if draft.vocab.n_tokens < target.vocab.n_tokens and draft.vocab.vocab_type == target.vocab.vocab_type \
            and draft.draft_kind not in VOCAB_UNCHECKED_KINDS:  # a head with fewer tokens: `_head_vocab_finding`
        out.append(Finding(
            "vocab_tail", Severity.INFO, keys=(TOKENS_KEY,), target_value=target.vocab.n_tokens,
            draft_value=draft.vocab.n_tokens,
            message=f"the draft lacks the target's last {target.vocab.n_tokens - draft.vocab.n_tokens} token ids; "
                    "it can never propose them"))
    return out
