"""Measuring configurations one launch at a time, each failure marked on its point and the sweep going on."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import Dialect
from ggufpair.engine.measure import Measurement, Prompt, measure, spread_text
from ggufpair.engine.runner import LlamaServer
from ggufpair.errors import EngineError

Events = Callable[[str], None]


@dataclass(frozen=True)
class PointResult:
    config: ServerConfig
    measurement: Measurement | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.measurement is not None

    @property
    def label(self) -> str:
        """`no draft, KV f16/f16` or `n_max 4, KV f16/f16 + draft q8_0/q8_0` (K/V types)."""
        c = self.config
        kv = f"KV {c.cache_type_k}/{c.cache_type_v}"
        if not c.has_draft:
            return f"no draft, {kv}"
        return f"n_max {c.draft_max}, {kv} + draft {c.draft_cache_type_k}/{c.draft_cache_type_v}"


def run_point(binary: Binary, dialect: Dialect, config: ServerConfig, prompts: list[Prompt], *, n_predict: int,
              repeats: int, log_dir: Path, on_event: Events = lambda _: None, stop_early=None,
              cancel=None) -> PointResult:
    start = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    name = (f"draft{config.draft_max}-{config.cache_type_k}-{config.draft_cache_type_k}" if config.has_draft
            else f"baseline-{config.cache_type_k}")
    label = PointResult(config, None, None, 0).label
    on_event(f"measuring {label}")
    try:
        with LlamaServer(binary, config, dialect=dialect, log_path=log_dir / f"{name}.log") as server:
            m = measure(server, prompts, n_predict=n_predict, repeats=repeats, stop_early=stop_early, cancel=cancel)
            if m.stalls and not (cancel is not None and cancel.is_set()):
                # A request far slower than the others: something else had the machine. Measure once more on the
                # same server and keep the run without stalls; a second stalled run is kept and flagged.
                on_event(f"  {m.stalls} request(s) ran at under a third of the median rate: measuring again")
                again = measure(server, prompts, n_predict=n_predict, repeats=repeats, stop_early=stop_early,
                                cancel=cancel, warmup=False)
                if not (cancel is not None and cancel.is_set()):  # a cancelled second run is partial: keep the first
                    m = again if again.stalls <= m.stalls else m
    except EngineError as e:
        on_event(f"  failed: {e.message}")
        return PointResult(config, None, e.message, time.perf_counter() - start)
    extra = f", acceptance {m.acceptance_rate:.0%}" if m.acceptance_rate is not None else ""
    extra += " (stopped early: clearly slower)" if m.stopped_early else ""
    extra += f" ({m.stalls} stalled request(s): unreliable)" if m.stalls else ""
    on_event(f"  {m.tokens_per_second:.1f} tok/s ({spread_text(m, 'spread ')}){extra}")
    return PointResult(config, m, None, time.perf_counter() - start)


def beats(candidate: Measurement, baseline: Measurement) -> bool:
    """Faster than the baseline beyond the noise: every repetition of the candidate above every one of the baseline."""
    return min(candidate.tps_runs) > max(baseline.tps_runs)
