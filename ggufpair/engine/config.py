"""One typed llama-server configuration, rendered to the argv of a given flag dialect.

The same object renders the command ggufpair runs while tuning, the launch script and the saved profile,
so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ggufpair.engine.dialect import Dialect
from ggufpair.errors import UsageError

KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
QUANTIZED_KV = frozenset({"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"})
FLASH_ATTN = ("on", "off", "auto")


def spec_type_for(draft_kind: str | None) -> str:
    """The --spec-type a draft file runs by (engine.kinds.DRAFTERS): EAGLE-3, DFlash and DSpark heads by their
    own; any other draft, MTP-carrying ones included, as draft-simple."""
    from ggufpair.engine.kinds import drafter_for_file

    return drafter_for_file(draft_kind).spec_type


# The fields only a model drafter uses (_draft_args, its --spec-type): inert in a configuration without one, so
# a profile's [server] table leaves them out there (from_dict gives back their defaults).
DRAFT_ONLY = ("draft_max", "draft_min", "p_min", "draft_cache_type_k", "draft_cache_type_v", "draft_gpu_layers",
              "spec_type", "draft_sampling", "draft_device")


@dataclass(frozen=True)
class ServerConfig:
    target: Path
    draft: Path | None = None
    draft_max: int = 8
    draft_min: int = 0
    p_min: float = 0.0
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    draft_cache_type_k: str = "f16"
    draft_cache_type_v: str = "f16"
    flash_attn: str = "auto"
    gpu_layers: str | int | None = None  # None: the build's default (auto); "all" or a count
    draft_gpu_layers: str | int | None = None
    ctx: int = 4096
    parallel: int = 1
    threads: int | None = None
    overrides: tuple[str, ...] = ()  # --override-kv KEY=TYPE:VALUE, applied to target and draft alike
    spec_type: str = "draft-simple"  # the draft model's kind (draft-simple, draft-eagle3, ...)
    ngram: str | None = None  # a draftless n-gram kind (engine.kinds), alone or beside the draft
    ngram_params: tuple[tuple[str, int], ...] = ()  # (name, value) over the kind's defaults
    draft_sampling: str | None = None  # --spec-draft-sampling (engine.traffic.DRAFT_SAMPLING); None: the build's
    rpc: tuple[str, ...] = ()  # host:port of each rpc-server whose devices join (engine.rpc)
    draft_device: str | None = None  # -devd: where the draft runs ("none": the local CPU); None: as the target
    devices: tuple[str, ...] = ()  # -dev: the devices the target uses (engine.placement); (): all the build has
    tensor_split: tuple[float, ...] = ()  # -ts over those devices; (): llama.cpp's split by free memory
    host: str = "127.0.0.1"
    port: int | None = None
    metrics: bool = True
    no_mmap: bool = False
    extra: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("cache_type_k", "cache_type_v", "draft_cache_type_k", "draft_cache_type_v"):
            if getattr(self, name) not in KV_TYPES:
                raise UsageError(f"{name} {getattr(self, name)!r} is not a KV cache type llama.cpp accepts",
                                 hint=f"one of {', '.join(KV_TYPES)}")
        if self.flash_attn not in FLASH_ATTN:
            raise UsageError(f"flash_attn must be one of {', '.join(FLASH_ATTN)}")
        if self.flash_attn == "off" and (self.cache_type_v in QUANTIZED_KV or self.draft_cache_type_v in QUANTIZED_KV):
            raise UsageError("a quantized V cache needs flash attention: llama.cpp refuses it with -fa off",
                             hint="use flash_attn auto or on, or an f16 V cache")
        if self.ngram is not None:
            from ggufpair.engine.kinds import kind

            kind(self.ngram).values(self.ngram_params)  # a usage error for an unknown kind or parameter
        elif self.ngram_params:
            raise UsageError("n-gram parameters were given without an n-gram kind")
        if self.draft_sampling is not None:
            from ggufpair.engine.traffic import DRAFT_SAMPLING

            if self.draft_sampling not in DRAFT_SAMPLING:
                raise UsageError(f"draft sampling {self.draft_sampling!r}: one of {', '.join(DRAFT_SAMPLING)}")
        if self.fileless_drafter and self.draft is not None:
            raise UsageError(f"--spec-type {self.spec_type} runs on the target's own layers: it takes no draft file",
                             hint=f"drop the draft ({self.draft.name}), or use draft-simple for it")
        if self.has_draft and not (0 <= self.draft_min <= self.draft_max and self.draft_max >= 1):
            raise UsageError(f"draft length must satisfy 0 <= min <= max and max >= 1 (got {self.draft_min}..{self.draft_max})")

    @property
    def kv_unified(self) -> bool:
        """One KV buffer shared by all slots: only when asked for in `extra` (the last of -kvu/-no-kvu wins)."""
        flags = [a for a in self.extra if a in ("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified")]
        return bool(flags) and flags[-1] in ("-kvu", "--kv-unified")

    @property
    def fileless_drafter(self) -> bool:
        """A model drafter that runs on the target's own layers (MTP), with no draft file."""
        from ggufpair.engine.kinds import DRAFTERS

        kind = DRAFTERS.get(self.spec_type)
        return kind is not None and not kind.needs_file

    @property
    def has_draft(self) -> bool:
        """A model drafter: a draft file, or the target's own MTP layers (a draft length, a draft context)."""
        return self.draft is not None or self.fileless_drafter

    @property
    def drafter(self) -> str | None:
        """Which model drafter this runs, as a key that tells drafters apart: the draft file, or the spec type
        of a drafter without one ("draft-mtp"); None without a model drafter."""
        return str(self.draft) if self.draft is not None else (self.spec_type if self.fileless_drafter else None)

    @property
    def drafter_name(self) -> str | None:
        """How answers name the model drafter: its file name, or MTP."""
        return self.draft.name if self.draft is not None else ("MTP" if self.fileless_drafter else None)

    @property
    def speculates(self) -> bool:
        """A model drafter, an n-gram kind, or both."""
        return self.has_draft or self.ngram is not None

    @property
    def ngram_values(self) -> dict[str, int]:
        from ggufpair.engine.kinds import kind

        return kind(self.ngram).values(self.ngram_params) if self.ngram else {}

    @property
    def stateful(self) -> bool:
        """Whether what the server learns from one request can speed up a later one (an n-gram kind that
        keeps its table across requests): such configurations are measured on a fresh server per repetition."""
        from ggufpair.engine.kinds import kind

        return self.ngram is not None and kind(self.ngram).stateful

    def without_draft(self) -> "ServerConfig":
        return replace(self, draft=None, spec_type="draft-simple")

    def without_speculation(self) -> "ServerConfig":
        """The paired baseline: no model drafter and no n-gram kind."""
        return replace(self, draft=None, spec_type="draft-simple", ngram=None, ngram_params=())

    def with_ngram(self, name: str | None, values: dict[str, int] | None = None) -> "ServerConfig":
        """This configuration with an n-gram kind (every parameter recorded, defaults included) or none."""
        from ggufpair.engine.kinds import kind

        if name is None:
            return replace(self, ngram=None, ngram_params=())
        return replace(self, ngram=name, ngram_params=tuple(sorted(kind(name).values(values or {}).items())))

    def with_(self, **changes: Any) -> "ServerConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServerConfig":
        """The inverse of `to_dict`, from a profile's [server] table or JSON: paths, tuples, and the n-gram
        parameters as a table ({n_max = 64}) or as pairs."""
        d = dict(d)
        for key in ("target", "draft"):
            if d.get(key):
                d[key] = Path(d[key])
        for key in ("overrides", "extra", "rpc", "devices"):
            if key in d:
                d[key] = tuple(d[key] or ())
        if "tensor_split" in d:
            d["tensor_split"] = tuple(float(x) for x in d["tensor_split"] or ())
        params = d.get("ngram_params")
        if params:
            d["ngram_params"] = tuple(sorted(params.items())) if isinstance(params, dict) else tuple(
                (str(n), int(v)) for n, v in params)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = str(self.target)
        d["draft"] = None if self.draft is None else str(self.draft)
        return d

    def argv(self, dialect: Dialect, *, with_network: bool = True) -> list[str]:
        """The llama-server arguments (without the binary) for `dialect`."""
        a: list[str] = ["-m", str(self.target), "-c", str(self.ctx), "-np", str(self.parallel)]
        if self.threads:
            a += ["-t", str(self.threads)]
        if self.rpc:
            if not dialect.has("--rpc"):
                raise UsageError("this llama-server build has no RPC backend (--rpc)",
                                 hint="build llama.cpp with -DGGML_RPC=ON (ggufpair's own build has it)")
            a += ["--rpc", ",".join(self.rpc)]
        if self.devices:
            flag = dialect.pick("--device", "-dev")
            if flag is None:
                raise UsageError("this llama-server build cannot choose its devices (no --device)")
            a += [flag, ",".join(self.devices)]
        if self.tensor_split:
            flag = dialect.pick("--tensor-split", "-ts")
            if flag is None:
                raise UsageError("this llama-server build cannot split the target over devices (no --tensor-split)")
            a += [flag, ",".join(f"{x:g}" for x in self.tensor_split)]
        if self.gpu_layers is not None:
            a += ["-ngl", str(self.gpu_layers)]
        a += self._flash_attn_args(dialect)
        a += ["-ctk", self.cache_type_k, "-ctv", self.cache_type_v]
        a += self._spec_type_args(dialect)
        if self.ngram is not None:
            from ggufpair.engine.kinds import kind

            lookup = kind(self.ngram).argv(self.ngram_values, dialect)
            shared = {dialect.draft_max_flag, dialect.draft_min_flag} & set(lookup[::2]) if self.has_draft else set()
            if shared:  # older spellings: one flag for the lookup's length and the draft's, the last one winning
                raise UsageError(f"this llama-server build sets {self.ngram}'s length with the draft's own "
                                 f"{', '.join(sorted(shared))}, so it cannot run both with their own values",
                                 hint="tune the n-gram kind and the draft apart on this build")
            a += lookup
        if self.has_draft:
            a += self._draft_args(dialect)
        for ov in self.overrides:
            if not dialect.has("--override-kv"):
                raise UsageError("this llama-server build has no --override-kv",
                                 hint="use `ggufpair fix --route patch` to fix the draft file instead")
            a += ["--override-kv", ov]
        if self.metrics and dialect.has("--metrics"):
            a.append("--metrics")
        if self.no_mmap:
            a += list(dialect.no_mmap_args)
        a += list(self.extra)
        if with_network:
            a += ["--host", self.host]
            if self.port is not None:
                a += ["--port", str(self.port)]
        return a

    def _flash_attn_args(self, dialect: Dialect) -> list[str]:
        if dialect.fa_takes_value:
            return ["-fa", self.flash_attn]
        # A bare switch: on means present. Older builds need it for a quantized V cache.
        wants = self.flash_attn == "on" or (self.flash_attn == "auto" and
                                            (self.cache_type_v in QUANTIZED_KV or self.draft_cache_type_v in QUANTIZED_KV))
        return ["-fa"] if wants else []

    def _spec_type_args(self, dialect: Dialect) -> list[str]:
        """One --spec-type with every kind in use (a router preset keeps only the last --spec-type line)."""
        types: list[str] = []
        if self.ngram is not None:
            if self.ngram not in dialect.spec_types:
                raise UsageError(f"this llama-server build has no --spec-type {self.ngram}",
                                 hint=f"its types: {', '.join(dialect.spec_types) or 'none (no n-gram lookup)'}")
            if self.has_draft and not dialect.ngram_with_draft:
                raise UsageError(f"this llama-server build runs {self.ngram} only without a draft model (its "
                                 "--spec-type takes one draftless kind, which replaces the draft)",
                                 hint="tune the n-gram kind and the draft apart, or use a 2026-11 or newer build")
            types.append(self.ngram)
        if self.has_draft:
            if self.spec_type in dialect.spec_types:
                types.append(self.spec_type)  # without it, -md loads the draft and then frees it
            elif self.spec_type != "draft-simple" or dialect.draft_spec_types:
                raise UsageError(f"this llama-server build has no --spec-type {self.spec_type}",
                                 hint=f"its types: {', '.join(dialect.spec_types) or 'none (-md alone enables a draft)'}")
            # Otherwise the build has no --spec-type, or one that only names draftless kinds (which would take
            # precedence over the draft): -md alone enables the draft there.
        return ["--spec-type", ",".join(types)] if types else []

    def _draft_args(self, dialect: Dialect) -> list[str]:
        model_flag, max_flag = dialect.draft_model_flag, dialect.draft_max_flag
        if max_flag is None or (model_flag is None and self.draft is not None):
            raise UsageError("this llama-server build has no draft-model flags")
        a = [model_flag, str(self.draft)] if self.draft is not None else []  # MTP: the target's own layers
        a += [max_flag, str(self.draft_max)]
        if dialect.draft_min_flag:
            a += [dialect.draft_min_flag, str(self.draft_min)]
        if dialect.p_min_flag:
            a += [dialect.p_min_flag, f"{self.p_min:g}"]
        if dialect.draft_kv_flags:
            k, v = dialect.draft_kv_flags
            a += [k, self.draft_cache_type_k, v, self.draft_cache_type_v]
        elif (self.draft_cache_type_k, self.draft_cache_type_v) != ("f16", "f16"):
            raise UsageError("this llama-server build cannot set the draft's KV cache types (no -ctkd/-ctvd)")
        if self.draft_sampling is not None:
            if dialect.has("--spec-draft-sampling"):
                a += ["--spec-draft-sampling", self.draft_sampling]
            elif self.draft_sampling != "greedy":
                raise UsageError(f"this llama-server build has no --spec-draft-sampling, so it cannot verify drafts "
                                 f"by {self.draft_sampling} sampling", hint="use a 2026-11 or newer build")
        if self.draft_device is not None and self.draft is not None:  # MTP runs where the target's layers are
            flag = dialect.pick("--spec-draft-device", "-devd", "--device-draft")
            if flag is None:
                raise UsageError("this llama-server build cannot place the draft on its own device (no -devd)")
            a += [flag, self.draft_device]
        if self.draft_gpu_layers is not None and dialect.draft_gpu_layers_flag and self.draft is not None:
            a += [dialect.draft_gpu_layers_flag, str(self.draft_gpu_layers)]
        return a
