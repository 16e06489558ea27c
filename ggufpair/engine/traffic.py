"""The traffic a server is measured under, as data: how many requests are in flight at once, and how each is
sampled. The search, the measurement, the profile, the launch script and `check` all read it from here.

Concurrency k means a llama-server with k slots (`-np k`) and k chat requests in flight at once, on distinct
prompts; its context is k times the per-request context (llama-server splits `-c` between its slots when the
KV cache is not unified). Sampling at a temperature above 0 makes greedy output identity meaningless (the
answers are sampled), so the lossless check applies only at temperature 0, and acceptance is what tells how
well a draft does there; llama.cpp's `--spec-draft-sampling probabilistic` (rejection sampling, #27694) is
then worth measuring beside the default greedy draft.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ggufpair.errors import UsageError

DRAFT_SAMPLING = ("greedy", "probabilistic")  # --spec-draft-sampling values; greedy is llama.cpp's default


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float | None = None  # None: llama-server's default
    top_k: int | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 5:
            raise UsageError(f"--temperature {self.temperature:g}: from 0 (greedy) to 5")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p:g}: above 0 and at most 1")
        if self.top_k is not None and self.top_k < 0:
            raise UsageError(f"--top-k {self.top_k}: 0 (off) or more")
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed}: 0 or more (a fixed seed keeps runs comparable)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def body(self) -> dict[str, Any]:
        """The request fields (both /completion and /v1/chat/completions take them)."""
        out: dict[str, Any] = {"temperature": self.temperature, "seed": self.seed}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.top_k is not None:
            out["top_k"] = self.top_k
        return out

    def describe(self) -> str:
        if self.greedy:
            return "greedy (temperature 0)"
        extra = "".join(f", {n} {v:g}" for n, v in (("top-p", self.top_p), ("top-k", self.top_k)) if v is not None)
        return f"temperature {self.temperature:g}{extra}, seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Sampling":
        d = d or {}
        return cls(float(d.get("temperature", 0.0)), d.get("top_p"), d.get("top_k"), int(d.get("seed", 1234)))


def parse_concurrency(text: str) -> tuple[int, ...]:
    """`1,4` -> (1, 4): the levels to measure, the first one the recommendation is made for."""
    levels: list[int] = []
    for part in str(text).split(","):
        try:
            n = int(part)
        except ValueError:
            raise UsageError(f"--concurrency {text}: a list of request counts, e.g. 1,4") from None
        if not 1 <= n <= 64:
            raise UsageError(f"--concurrency {text}: each level from 1 to 64 requests in flight")
        if n not in levels:
            levels.append(n)
    return tuple(levels)


def level_config(config, level: int, per_request_ctx: int):
    """The configuration serving `level` requests at once: that many slots, each with the per-request context."""
    from ggufpair.engine.memory import pad256

    return config.with_(parallel=level, ctx=pad256(per_request_ctx * level))
