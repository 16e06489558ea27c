"""Scan, then plan: the metadata changes that make a draft agree with its target (or repair one file).

A `FixPlan` is plain data: which file, which keys to set, add or remove (old and new values), which route
(no copy through `--override-kv`, or a patch of the file) and why. It prints as a diff and touches nothing;
`ggufpair.fix.apply.apply_plan` carries it out.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufpair.errors import UsageError
from ggufpair.format.gguf_constants import GGUFValueType
from ggufpair.format.model_info import ModelInfo, read_model_info
from ggufpair.format.reader import ArrayValue
from ggufpair.format.vocab import ADD_BOS_KEY, BOS_KEY, EOS_KEY, NEEDS_BOS, duplicate_problem, load_problem
from ggufpair.pairing.verdict import TOKENS_KEY, WRONG_TYPE_ATTRS, Route, Verdict, check_pair

TOKEN_TYPE_KEY = "tokenizer.ggml.token_type"
BOS_TEXTS = (b"<bos>", b"<s>", b"<|begin_of_text|>", b"<|startoftext|>")
EOS_TEXTS = (b"<eos>", b"</s>", b"<|end_of_text|>", b"<|endoftext|>", b"<|im_end|>")


class Action(str, enum.Enum):
    SET = "set"
    ADD = "add"
    REMOVE = "remove"


class RouteChoice(str, enum.Enum):
    AUTO = "auto"
    OVERRIDE = "override"
    PATCH = "patch"


@dataclass(frozen=True)
class KeyChange:
    key: str
    action: Action
    old: Any  # None when the key is added
    new: Any  # None when the key is removed
    type: GGUFValueType | None = None  # of the new value
    item_type: GGUFValueType | None = None  # for arrays
    reason: str = ""

    def describe(self, value: Any) -> str:
        if isinstance(value, ArrayValue):
            return f"[{value.count} x {value.item_type.name}]"
        if isinstance(value, (list, tuple)):
            return f"[{len(value)} x {self.item_type.name if self.item_type else '?'}]"
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value)


@dataclass(frozen=True)
class FixPlan:
    path: Path  # the file the patch route would change (first shard of a split model)
    route: Route | None  # None: nothing to do
    changes: tuple[KeyChange, ...]
    override_args: tuple[str, ...]  # for the no-copy route
    why: str
    size: int  # the file as planned: a changed file is refused at apply time
    mtime_ns: int
    reference: Path | None = None
    unfixable: tuple[str, ...] = ()  # problems metadata cannot fix, explained
    array_edits: dict[str, dict[int, Any]] = field(default_factory=dict, compare=False)
    # the reference as the plan read it, and its (size, mtime): the check of the written file judges the pair
    # against it while the file is unchanged, else reads it again
    reference_info: ModelInfo | None = field(default=None, compare=False, repr=False)
    reference_stat: tuple[int, int] | None = None

    @property
    def empty(self) -> bool:
        return not self.changes

    def diff(self) -> list[str]:
        """The plan as diff lines: `-key = old` / `+key = new`."""
        lines = [f"--- {self.path}", f"+++ {self.path} (fixed)"]
        for c in self.changes:
            if c.action != Action.ADD:
                lines.append(f"-{c.key} = {c.describe(c.old)}")
            if c.action != Action.REMOVE:
                lines.append(f"+{c.key} = {c.describe(c.new)}")
            for token_id, (old, new) in sorted(self.array_edits.get(c.key, {}).items())[:20]:
                lines.append(f"   id {token_id}: {old!r} -> {new!r}")
            if c.reason:
                lines.append(f"   # {c.reason}")
        return lines


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def plan_pair_fix(draft: str | Path, reference: str | Path, route: RouteChoice = RouteChoice.AUTO) -> FixPlan:
    """The changes that make `draft` pass llama.cpp's checks against the target `reference`."""
    target_info, draft_info = read_model_info(reference), read_model_info(draft)
    ref_stat = _stat(target_info.path)  # (taken after the read: a change meanwhile only costs a second read)
    verdict = check_pair(target_info, draft_info)
    changes: list[KeyChange] = []
    overrides: list[str] = []
    unfixable: list[str] = []
    array_edits: dict[str, dict[int, Any]] = {}
    all_overridable = True
    for finding in verdict.blockers:
        by_route = {fix.route: fix for fix in finding.fixes}
        if not finding.fixes:
            unfixable.append(f"{finding.check}: {finding.message}")
            continue
        if Route.OVERRIDE_KV in by_route:
            overrides.append(by_route[Route.OVERRIDE_KV].argument)
        else:
            all_overridable = False
        if finding.check in ("token_text", "draft_duplicate_tokens"):
            if TOKENS_KEY not in array_edits:  # one copy of the target's texts repairs both
                text_changes, edits = _token_changes(target_info, draft_info)
                changes.extend(text_changes)
                array_edits.update(edits)
        elif Route.PATCH in by_route:
            changes.append(_scalar_change(draft_info, finding.keys[0], by_route[Route.PATCH].value,
                                          f"{finding.check}: the target's effective value"))
    size, mtime = _stat(draft_info.path)
    if unfixable and changes:
        # The fixable part alone cannot make llama.cpp speculate: nothing is changed (a write would be for nothing).
        keys = ", ".join(dict.fromkeys(c.key for c in changes))
        why = (f"metadata cannot fix every problem (below), so nothing is changed: fixing the rest ({keys}) "
               "alone would still leave llama.cpp without speculation")
        return FixPlan(draft_info.path, None, (), (), why, size, mtime, target_info.path, tuple(unfixable))
    chosen, why = _choose_route(route, changes, overrides, all_overridable, unfixable)
    return FixPlan(
        path=draft_info.path, route=chosen, changes=tuple(changes),
        override_args=tuple(overrides) if chosen == Route.OVERRIDE_KV else (), why=why, size=size, mtime_ns=mtime,
        reference=target_info.path, unfixable=tuple(unfixable), array_edits=array_edits, reference_info=target_info,
        reference_stat=ref_stat,
    )


def _choose_route(route: RouteChoice, changes, overrides, all_overridable: bool, unfixable) -> tuple[Route | None, str]:
    if not changes:
        if unfixable:
            return None, "nothing metadata can fix"
        return None, "nothing to fix: llama.cpp will speculate with this pair"
    if route == RouteChoice.OVERRIDE:
        if not all_overridable:
            raise UsageError("the no-copy route cannot fix this pair",
                             hint="some changes (token texts, or a value wrong for the target) need --route patch")
        return Route.OVERRIDE_KV, "asked for: no file is touched; the --override-kv arguments go into the launch command"
    if route == RouteChoice.PATCH:
        return Route.PATCH, "asked for: the draft file is patched, so every launcher sees the fix"
    if all_overridable:
        return Route.OVERRIDE_KV, ("every change has an --override-kv equivalent that is right for both models, "
                                   "so no file needs to change")
    return Route.PATCH, "some changes have no --override-kv equivalent (arrays, or a value wrong for the target)"


def _scalar_change(info: ModelInfo, key: str, value: Any, reason: str) -> KeyChange:
    entry = info.header.kv.get(key)
    vtype = GGUFValueType.BOOL if isinstance(value, bool) else GGUFValueType.UINT32
    if entry is None:
        return KeyChange(key, Action.ADD, None, value, vtype, reason=reason)
    return KeyChange(key, Action.SET, entry.value, value, vtype, reason=reason)


def _token_changes(target: ModelInfo, draft: ModelInfo) -> tuple[list[KeyChange], dict[str, dict[int, Any]]]:
    t_raw = target.vocab.tokens.array.items()
    d_raw = draft.vocab.tokens.array.items()
    ids = [i for i in range(min(len(t_raw), len(d_raw))) if t_raw[i] != d_raw[i]]
    new_texts = list(d_raw)
    for i in ids:
        new_texts[i] = t_raw[i]
    edits = {TOKENS_KEY: {i: (d_raw[i], t_raw[i]) for i in ids}}
    changes = [KeyChange(TOKENS_KEY, Action.SET, draft.vocab.tokens.array, tuple(new_texts), GGUFValueType.ARRAY,
                         GGUFValueType.STRING, reason=f"token_text: the target's texts for {len(ids)} ids")]
    t_types, d_types = target.vocab.token_types, draft.vocab.token_types
    if t_types is not None and d_types is not None:
        tt, dt = t_types.items(), d_types.items()
        type_ids = [i for i in ids if i < len(tt) and i < len(dt) and tt[i] != dt[i]]
        if type_ids:
            new_types = list(dt)
            for i in type_ids:
                new_types[i] = tt[i]
            changes.append(KeyChange(TOKEN_TYPE_KEY, Action.SET, d_types, tuple(new_types), GGUFValueType.ARRAY,
                                     GGUFValueType.INT32, reason=f"the target's token types for {len(type_ids)} ids"))
            edits[TOKEN_TYPE_KEY] = {i: (dt[i], tt[i]) for i in type_ids}
    return changes, edits


def _meant_value(stored: Any, flag: bool) -> bool | int | None:
    """What a wrongly typed flag or id was meant to hold, when that is clear."""
    if flag:
        if isinstance(stored, (bytes, str)):
            text = stored.decode(errors="replace") if isinstance(stored, bytes) else stored
            return {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
        if isinstance(stored, (int, float)) and stored in (0, 1):
            return bool(stored)
        return None
    if isinstance(stored, bool) or not isinstance(stored, (int, float)):
        return None
    return int(stored) if stored >= 0 and float(stored).is_integer() else None


def plan_self_fix(path: str | Path, info: ModelInfo | None = None) -> FixPlan:
    """Repairs inside one file: special ids outside the vocabulary, a missing BOS its tokenizer needs.
    `info`: the file already read (without overrides)."""
    info = info or read_model_info(path)
    v = info.vocab
    changes: list[KeyChange] = []
    unfixable: list[str] = []
    duplicates = duplicate_problem(v)
    unloadable = bool(v.load_error or duplicates)
    planned: dict[str, Any] = {}  # values the repair gives wrongly typed keys
    if unloadable and not duplicates and v.only_wrong_types and set(v.wrong_type_keys) <= set(WRONG_TYPE_ATTRS):
        # Flags or special ids stored with a type the loader refuses: rewritten with the right type, keeping the
        # value they meant ("true" -> true, an INT32 id -> the same UINT32 id), else the tokenizer's default.
        for key in v.wrong_type_keys:
            attr = WRONG_TYPE_ATTRS[key]
            meant = _meant_value(info.header.get(key), attr.startswith("add_"))
            planned[key] = meant if meant is not None else getattr(v, attr)
            changes.append(_scalar_change(info, key, planned[key], f"stored as {info.header.kv[key].type.name}, "
                                          "which llama.cpp's loader refuses" + ("" if meant is not None else
                                                                                "; the tokenizer's default")))
        unloadable = False
    if unloadable:
        # A vocabulary llama.cpp cannot load stays unloadable whatever else is repaired: nothing is written.
        unfixable.append(f"llama.cpp cannot load this vocabulary: {load_problem(v)}")
        size, mtime = _stat(info.path)
        return FixPlan(info.path, None, (), (), "nothing metadata can fix", size, mtime, None, tuple(unfixable))
    texts = v.tokens.load() if v.tokens is not None else ()
    for key, stored, candidates in ((BOS_KEY, v.bos_id_stored, BOS_TEXTS), (EOS_KEY, v.eos_id_stored, EOS_TEXTS)):
        stored = planned.get(key, stored)  # the checks see the file as it will be, so a second run finds nothing
        if v.tokens is None:
            break  # no vocabulary (an EAGLE head, a tokenizer-less file): its ids mean nothing to repair
        if stored is not None and stored >= v.n_tokens:
            found = next((texts.index(t) for t in candidates if t in texts), None)
            if found is not None:
                changes.append(_scalar_change(info, key, found, f"{stored} is outside the {v.n_tokens}-token "
                                              f"vocabulary; id {found} is {texts[found].decode(errors='replace')}"))
            else:
                changes.append(KeyChange(key, Action.REMOVE, info.header.get(key), None,
                                         reason=f"{stored} is outside the vocabulary and no usual token text was found; "
                                                "llama.cpp ignores it anyway"))
    if (info.architecture or "") in NEEDS_BOS and not planned.get(ADD_BOS_KEY, v.add_bos):
        change = _scalar_change(info, ADD_BOS_KEY, True, f"{info.architecture} models need a BOS token at the start")
        changes.append(change)
    changes = list({c.key: c for c in changes}.values())  # a later repair of the same key (add_bos) wins
    size, mtime = _stat(info.path)
    route = Route.PATCH if changes else None
    why = "repairs inside the file" if changes else (
        "nothing metadata can fix" if unfixable else "nothing to fix in this file")
    return FixPlan(info.path, route, tuple(changes), (), why, size, mtime, None, tuple(unfixable))


def verdict_after(plan: FixPlan) -> Verdict | None:
    """The pair verdict as it will be after the plan (override route) or as it is (after a patch)."""
    if plan.reference is None:
        return None
    from ggufpair.pairing.verdict import parse_override

    overrides = dict(parse_override(a) for a in plan.override_args)
    return check_pair(read_model_info(plan.reference), read_model_info(plan.path), overrides)
