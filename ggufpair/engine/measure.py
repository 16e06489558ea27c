"""Measuring a running llama-server on a set of prompts: throughput with its spread, acceptance, accepted
length per step, acceptance by draft position, and the lossless check of greedy output."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from ggufpair.engine.runner import Completion, LlamaServer

NEAR_TIE_NATS = 0.1
"""Top-2 logprobs closer than this are a near tie, where batched verification may round the other way."""


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    messages: tuple[dict[str, str], ...] | str  # chat messages, or a raw prompt string

    def payload(self):
        return self.messages if isinstance(self.messages, str) else [dict(m) for m in self.messages]


STALL_FACTOR = 2.0  # a request at under half its peers' rate: the machine, not the configuration
RATE_DEFINITION = "after-first-token"
"""What a saved tokens_per_second counts: the tokens after each answer's first (profiles without this marker,
from before 2026-11-25, counted that first token too)."""


@dataclass(frozen=True)
class Measurement:
    speculative: bool
    tokens_per_second: float  # median over repetitions of sum(generated tokens but each first) / sum(their time)
    tps_runs: tuple[float, ...]
    predicted_tokens: int
    draft_tokens: int
    accepted_tokens: int
    drafts: int  # verification steps with a draft (from /metrics)
    accept_by_position: tuple[float, ...]  # P(draft position i accepted) per verification step
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    predicted_ms: float = 0.0  # generation time summed over every measured request
    stopped_early: bool = False
    request_tps: tuple[float, ...] = ()  # each request's own rate, in the order they ran
    stalls: int = 0  # requests at under half their peers' rate (count_stalls)
    # each prompt's greedy answer in the first repetition (prompt id, text): the same prompts' answers with
    # and without a draft are compared (`greedy_agreement`); not saved in profiles
    outputs: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    servers: int = 1  # llama-servers the repetitions ran on (one each for a kind that learns across requests)
    seen_texts: int = 0  # timed requests whose prompt their server had been sent before
    # for a mix of kinds: what each drafted and had accepted ({kind: {drafts, accepted_tokens, ...}}, llama.cpp's
    # own statistics), so a mix whose lookup never drafted is not taken for one that did
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    # requests in flight at once; above 1 tokens_per_second is the aggregate rate over wall-clock time
    concurrency: int = 1
    ttft_ms: tuple[float, ...] = ()  # each request's time from sending to its first token (client side)
    request_drafts: tuple[int, ...] = ()  # each request's drafted tokens: speculation live in every slot
    prompt_tokens: int = 0  # prompt tokens processed (prefill: the draft prefills them too), summed
    prompt_ms: float = 0.0
    # generated tokens (each answer's first left out) over each repetition's wall-clock time, prefill and
    # waiting included: the rate that compares across concurrency levels (the median repetition)
    wall_tps: float = 0.0

    @property
    def prefill_tps(self) -> float | None:
        """Prompt tokens processed per second, apart from the generation rate."""
        return self.prompt_tokens / (self.prompt_ms / 1000) if self.prompt_ms > 0 else None

    @property
    def request_tps_median(self) -> float | None:
        """A request's own generation rate (the median request): what one user of a busy server sees."""
        rates = [r for r in self.request_tps if r > 0]
        return statistics.median(rates) if rates else None

    @property
    def ttft_ms_median(self) -> float | None:
        return statistics.median(self.ttft_ms) if self.ttft_ms else None

    @property
    def tps_spread(self) -> float:
        """Relative spread of the repetitions: (max - min) / median."""
        if len(self.tps_runs) < 2 or not self.tokens_per_second:
            return 0.0
        return (max(self.tps_runs) - min(self.tps_runs)) / self.tokens_per_second

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def mean_accepted_per_step(self) -> float | None:
        """Draft tokens accepted per verification step (llama.cpp's "mean len" is this plus one)."""
        return self.accepted_tokens / self.drafts if self.drafts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "speculative": self.speculative, "tokens_per_second": self.tokens_per_second,
            "tps_runs": list(self.tps_runs), "tps_spread": self.tps_spread,
            "predicted_tokens": self.predicted_tokens, "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens, "drafts": self.drafts,
            "acceptance_rate": self.acceptance_rate, "mean_accepted_per_step": self.mean_accepted_per_step,
            "accept_by_position": list(self.accept_by_position), "per_category": self.per_category,
            "predicted_ms": self.predicted_ms, "stopped_early": self.stopped_early,
            "request_tps": [round(r, 2) for r in self.request_tps], "stalls": self.stalls,
            "servers": self.servers, "seen_texts": self.seen_texts, "by_kind": self.by_kind,
            "concurrency": self.concurrency, "request_tps_median": self.request_tps_median,
            "ttft_ms": [round(t, 1) for t in self.ttft_ms], "ttft_ms_median": self.ttft_ms_median,
            "request_drafts": list(self.request_drafts), "prompt_tokens": self.prompt_tokens,
            "prompt_ms": self.prompt_ms, "prefill_tps": self.prefill_tps, "wall_tps": self.wall_tps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        """The inverse of `to_dict` (derived fields ignored), for measurements read back from a profile."""
        return cls(bool(d["speculative"]), float(d["tokens_per_second"]), tuple(d.get("tps_runs", ())),
                   int(d.get("predicted_tokens", 0)), int(d.get("draft_tokens", 0)), int(d.get("accepted_tokens", 0)),
                   int(d.get("drafts", 0)), tuple(d.get("accept_by_position", ())), dict(d.get("per_category", {})),
                   float(d.get("predicted_ms", 0.0)), bool(d.get("stopped_early", False)),
                   tuple(float(r) for r in d.get("request_tps", ())), int(d.get("stalls", 0)),
                   servers=int(d.get("servers", 1)), seen_texts=int(d.get("seen_texts", 0)),
                   by_kind={str(k): dict(v) for k, v in d.get("by_kind", {}).items()},
                   concurrency=int(d.get("concurrency", 1)), ttft_ms=tuple(float(t) for t in d.get("ttft_ms", ())),
                   request_drafts=tuple(int(n) for n in d.get("request_drafts", ())),
                   prompt_tokens=int(d.get("prompt_tokens", 0)), prompt_ms=float(d.get("prompt_ms", 0.0)),
                   wall_tps=float(d.get("wall_tps", 0.0)))


def spread_text(m: Measurement, label: str = "") -> str:
    """The repetitions' spread (after `label`): "1 run" when there was one (a spread of 0% would look certain)."""
    return f"{label}{m.tps_spread:.0%}" if len(m.tps_runs) > 1 else "1 run"


def greedy_agreement(baseline: Measurement, drafted: Measurement) -> tuple[int, int, list[str]]:
    """(identical, compared, ids of the prompts that differ) between two runs' greedy answers to the same
    prompts: speculative decoding keeps greedy output, but batched verification can flip a near-tie of the
    target's two best tokens (the demo's token-level check says which)."""
    base = dict(baseline.outputs)
    common = [(pid, text) for pid, text in drafted.outputs if pid in base]
    differ = [pid for pid, text in common if text != base[pid]]
    return len(common) - len(differ), len(common), differ


def count_stalls(rates_by_prompt: dict[str, list[float]], drafted: bool,
                 category_of: dict[str, str] | None = None) -> int:
    """Requests that ran at under half the median of their peers' other runs: the machine, not the
    configuration. A request's peers are the same prompt's other runs; with one run each, and only without
    a draft (a draft's rate moves with each prompt's acceptance, so prompts are no peers there), the other
    prompts of its category (`category_of`: a long document decodes slower than a short chat), or every
    other prompt where no category has two."""
    groups = [r for r in rates_by_prompt.values() if len(r) >= 2]
    if not groups and not drafted:
        by_cat: dict[str, list[float]] = {}
        for pid, rates in rates_by_prompt.items():
            by_cat.setdefault((category_of or {}).get(pid, ""), []).extend(rates)
        groups = [g for g in by_cat.values() if len(g) >= 2] or [
            [r for rates in rates_by_prompt.values() for r in rates]]
    stalls = 0
    for rates in groups:
        rates = [r for r in rates if r > 0]
        for i, r in enumerate(rates):
            others = rates[:i] + rates[i + 1:]
            stalls += bool(others) and r < statistics.median(others) / STALL_FACTOR
    return stalls


def _metric_delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


WARMUP_CHAT = ({"role": "user", "content": "Reply with one word: ready?"},)
WARMUP_RAW = "The weather today is"
"""The warm-up request's text, which no prompt set uses: a warm-up with a timed prompt's text would fill an
n-gram table with that prompt's answer before it is timed."""


def warmup_payload(prompts: list[Prompt]):
    return WARMUP_RAW if prompts and isinstance(prompts[0].messages, str) else [dict(m) for m in WARMUP_CHAT]


def _send(server: LlamaServer, prompts: list[Prompt], n_predict: int, sampling, concurrency: int,
          cancel) -> tuple[list[tuple[Prompt, Completion, float]], float]:
    """Every prompt once, `concurrency` requests in flight at once (a pool taking the next prompt as one ends:
    the ones in flight are always distinct prompts). Returns (prompt, completion, seconds from send to answer)
    in prompt order, and the wall-clock seconds of the whole."""
    def one(p: Prompt):
        if cancel is not None and cancel.is_set():
            return None
        t = time.perf_counter()
        c = server.complete(p.payload(), n_predict=n_predict, sampling=sampling)
        return p, c, time.perf_counter() - t

    start = time.perf_counter()
    if concurrency <= 1:
        done = [one(p) for p in prompts]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            done = list(pool.map(one, prompts))
    return [d for d in done if d is not None], time.perf_counter() - start


def measure(server: LlamaServer, prompts: list[Prompt], *, n_predict: int = 128, repeats: int = 3,
            temperature: float = 0.0, warmup: bool = True, stop_early=None, cancel=None,
            restart=None, concurrency: int = 1, sampling=None) -> Measurement:
    """Run every prompt `repeats` times (after one excluded warm-up request of a text of its own) and aggregate
    the server's own timings.

    `concurrency` k > 1: k requests in flight at once (the server needs k slots); a repetition's rate is then
    the aggregate, every generated token (but each answer's first) over the repetition's wall-clock time,
    and each request's own rate and time to first token are kept beside it. At 1 the rate is the server's
    generation time alone, as always. `sampling` (engine.traffic.Sampling) replaces `temperature`.
    `restart()`, when given, stops the server and returns a fresh one, started, for every repetition after the
    first: for a kind that learns across requests (an n-gram table), so that no timed request is drafted from
    an earlier identical one. `stop_early(tps_so_far)` is asked after each repetition; True ends the
    measurement there. A set `cancel` event ends it after the current request."""
    from ggufpair.engine.traffic import Sampling

    sampling = sampling or Sampling(temperature=temperature)
    segments: list[tuple[dict[str, float], dict[str, float]]] = []  # /metrics before and after, per server
    live_servers: list[bool] = []

    def begin(srv: LlamaServer) -> dict[str, float]:
        if warmup and prompts:
            srv.complete(warmup_payload(prompts), n_predict=min(16, n_predict), sampling=sampling)
        live_servers.append(bool(srv.speculative))
        return srv.metrics()

    before = begin(server)
    runs: list[float] = []
    wall_runs: list[float] = []
    totals = {"pred": 0, "draft": 0, "acc": 0, "ms": 0.0, "prompt_n": 0, "prompt_ms": 0.0}
    stopped = False
    cats: dict[str, dict[str, float]] = {}
    request_tps: list[float] = []
    request_drafts: list[int] = []
    ttft: list[float] = []
    by_prompt: dict[str, list[float]] = {}
    outputs: dict[str, str] = {}
    seen = 0
    for rep in range(max(1, repeats)):
        if rep and restart is not None:
            segments.append((before, server.metrics()))
            server = restart()
            before = begin(server)
        pred_n, pred_ms = 0, 0.0
        answers, wall = _send(server, prompts, n_predict, sampling, concurrency, cancel)
        for p, c, latency in answers:
            seen += c.seen
            outputs.setdefault(p.id, c.content)
            # An answer's first token comes from the prompt's logits, its time counted in the prompt's: the
            # generation rate counts the tokens after it (as llama-server's own predicted_per_second does since
            # it stopped counting that free token).
            steps = max(c.predicted_n - 1, 0)
            if c.predicted_ms > 0:
                request_tps.append(steps / (c.predicted_ms / 1000))
                by_prompt.setdefault(p.id, []).append(request_tps[-1])
            request_drafts.append(c.draft_n)
            ttft.append(max(latency * 1000 - c.predicted_ms, 0.0))  # send to first token: queue, prompt, first
            pred_n += steps
            pred_ms += c.predicted_ms
            totals["pred"] += c.predicted_n
            totals["draft"] += c.draft_n
            totals["acc"] += c.draft_accepted
            totals["ms"] += c.predicted_ms
            totals["prompt_n"] += c.prompt_n
            totals["prompt_ms"] += c.prompt_ms
            cat = cats.setdefault(p.category, {"predicted_n": 0, "predicted_ms": 0.0, "draft_n": 0, "accepted": 0,
                                               "prompt_n": 0, "prompt_ms": 0.0})
            cat["prompt_n"] += c.prompt_n
            cat["prompt_ms"] += c.prompt_ms
            cat["predicted_n"] += steps
            cat["predicted_ms"] += c.predicted_ms
            cat["draft_n"] += c.draft_n
            cat["accepted"] += c.draft_accepted
        wall_runs.append(pred_n / wall if wall > 0 else 0.0)
        if concurrency > 1:
            runs.append(wall_runs[-1])
        else:
            runs.append(pred_n / (pred_ms / 1000) if pred_ms else 0.0)
        if cancel is not None and cancel.is_set():
            break
        if stop_early is not None and len(runs) < repeats and stop_early(statistics.median(runs)):
            stopped = True
            break
    segments.append((before, server.metrics()))
    drafts = int(sum(_metric_delta(b, a, "spec_decode_num_drafts_total") for b, a in segments))
    positions = []
    i = 0
    while all(f"spec_decode_num_accepted_tokens_per_pos_total:{i}" in a for _, a in segments):
        acc_i = sum(_metric_delta(b, a, f"spec_decode_num_accepted_tokens_per_pos_total:{i}") for b, a in segments)
        positions.append(acc_i / drafts if drafts else 0.0)
        i += 1
    per_category = {
        name: {"tokens_per_second": c["predicted_n"] / (c["predicted_ms"] / 1000) if c["predicted_ms"] else 0.0,
               "acceptance_rate": c["accepted"] / c["draft_n"] if c["draft_n"] else None,
               "prefill_tokens_per_second": c["prompt_n"] / (c["prompt_ms"] / 1000) if c["prompt_ms"] else None,
               "prompt_tokens": c["prompt_n"]}
        for name, c in cats.items()
    }
    # Live speculation needs more than /slots saying so at start: these very requests must have drafted. The
    # server omits timings.draft_n when nothing was drafted; without /metrics either, /slots is all there is.
    counted = all("spec_decode_num_drafts_total" in a for _, a in segments)
    drafted = totals["draft"] > 0 or drafts > 0
    live = all(live_servers) and (drafted or not counted)
    return Measurement(live, statistics.median(runs), tuple(runs), totals["pred"],
                       totals["draft"], totals["acc"], drafts, tuple(positions), per_category, totals["ms"], stopped,
                       tuple(request_tps), count_stalls(by_prompt, drafted, {q.id: q.category for q in prompts}),
                       tuple(outputs.items()) if sampling.greedy else (), servers=len(segments), seen_texts=seen,
                       concurrency=concurrency, ttft_ms=tuple(ttft), request_drafts=tuple(request_drafts),
                       prompt_tokens=totals["prompt_n"], prompt_ms=totals["prompt_ms"],
                       wall_tps=statistics.median(wall_runs) if wall_runs else 0.0)


@dataclass(frozen=True)
class Divergence:
    prompt_id: str
    index: int  # first generated token that differs
    baseline_token: int
    draft_token: int
    baseline_margin: float | None  # top-1 minus top-2 logprob of the baseline at that token (nats)

    @property
    def near_tie(self) -> bool | None:
        return None if self.baseline_margin is None else self.baseline_margin < NEAR_TIE_NATS


@dataclass(frozen=True)
class LosslessReport:
    prompts: int
    identical: int
    divergences: tuple[Divergence, ...]

    @property
    def all_identical(self) -> bool:
        return self.identical == self.prompts

    def summary(self, what: str = "the draft") -> str:
        if self.all_identical:
            return f"greedy output identical with and without {what} on all {self.prompts} prompts"
        ties = sum(1 for d in self.divergences if d.near_tie)
        return (f"greedy output identical on {self.identical} of {self.prompts} prompts; {len(self.divergences)} "
                f"diverge, {ties} of them at a near tie of the target's two best tokens (batched verification "
                "can round those the other way), "
                f"{len(self.divergences) - ties} not")


def greedy_outputs(server: LlamaServer, prompts: list[Prompt], n_predict: int) -> list[Completion]:
    return [server.complete(p.payload(), n_predict=n_predict, temperature=0.0, logprobs=True) for p in prompts]


def compare_outputs(prompts: list[Prompt], baseline: list[Completion], drafted: list[Completion]) -> LosslessReport:
    divergences = []
    for p, b, d in zip(prompts, baseline, drafted):
        if b.tokens == d.tokens and b.content == d.content:
            continue
        n = min(len(b.tokens), len(d.tokens))
        idx = next((i for i in range(n) if b.tokens[i] != d.tokens[i]), n)
        top = b.top2[idx] if idx < len(b.top2) else None
        divergences.append(Divergence(p.id, idx, b.tokens[idx] if idx < len(b.tokens) else -1,
                                      d.tokens[idx] if idx < len(d.tokens) else -1,
                                      None if top is None else top[0] - top[1]))
    return LosslessReport(len(prompts), len(prompts) - len(divergences), tuple(divergences))
