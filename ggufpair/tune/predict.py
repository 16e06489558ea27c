"""Predicting throughput at every draft length from two launches.

llama-server fixes the draft length at launch, so every length tried costs a restart. Two measurements
of one KV configuration are enough to predict the rest:

- acceptance by position q_i = P(draft position i is accepted in a verification step), from the run with
  the longer draft (a token at position i is accepted only if every earlier one was, and the draft proposes
  the same tokens whatever its maximum length, so q_i does not depend on the length);
- the cost of a verification step s(n) for n drafted tokens, through the two runs' measured step times and
  the no-draft baseline's (n = 0) of the same session, interpolated between them (about a + b * n: a, the
  target's own forward pass and fixed overheads, b, one more token drafted and verified). Through the
  measured points rather than a fitted line: one disturbed run can make a line's fixed cost negative, and a
  clamped line then no longer gives back the very runs it was fitted to.

A step then yields 1 + q_0 + ... + q_{n-1} tokens on average, so tps(n) = 1000 * (1 + sum q_i) / s(n).

An n-gram kind drafts only at the steps where its lookup finds a match: a fraction h of the steps (measured
in the long run, and taken not to move with the length). The others are plain target steps, at the
baseline's cost s(0), so tps(n) = 1000 * (h * (1 + sum q_i) + 1 - h) / (h * s(n) + (1 - h) * s(0)), and a
run's cost per drafted step is its time less its plain steps' time, over its drafted steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ggufpair.engine.measure import Measurement


@dataclass(frozen=True)
class StepSample:
    n: int  # draft length (n_max) of the run
    step_ms: float  # measured milliseconds per verification step
    tokens_per_step: float


def step_sample(n: int, m: Measurement, predicted_ms: float) -> StepSample | None:
    if not m.drafts:
        return None
    return StepSample(n, predicted_ms / m.drafts, m.predicted_tokens / m.drafts)


def steps_of(m: Measurement) -> int:
    """Verification steps of a measurement: each yields one target token plus the drafts it accepted (an
    answer's first token comes from the prompt, so each request's count starts after it)."""
    after_first = m.predicted_tokens - len(m.request_tps)
    return max(after_first - m.accepted_tokens, 1)


def drafted_fraction(m: Measurement) -> float:
    return min(1.0, m.drafts / steps_of(m)) if m.drafts else 0.0


def lookup_step_sample(n: int, m: Measurement, baseline_step_ms: float) -> StepSample | None:
    """An n-gram run's cost per drafted step: its time less its plain steps' (at the baseline's cost)."""
    if not m.drafts:
        return None
    plain = max(steps_of(m) - m.drafts, 0)
    drafted_ms = max(m.predicted_ms - plain * baseline_step_ms, baseline_step_ms * m.drafts)
    return StepSample(n, drafted_ms / m.drafts, (m.drafts + m.accepted_tokens) / m.drafts)


@dataclass(frozen=True)
class Predictor:
    """`knots`: measured (draft length, ms per step) points, sorted, the no-draft baseline's step at n = 0
    among them when known. The step cost between knots is interpolated, so every prediction at a measured
    length gives back what was measured; beyond the last knot the last segment's slope (never negative)
    extends it."""

    accept_by_position: tuple[float, ...]
    knots: tuple[tuple[int, float], ...]
    a_ms: float  # the line through the two draft runs: fixed cost per step...
    b_ms: float  # ...and cost per drafted token (a negative a_ms: the runs disagree with a linear cost)
    drafted: float = 1.0  # the fraction of steps that draft (below 1 for an n-gram kind's lookups)

    @classmethod
    def fit(cls, short: StepSample, long: StepSample, accept_by_position: tuple[float, ...],
            baseline_step_ms: float | None = None, drafted: float = 1.0) -> "Predictor":
        if long.n == short.n:
            raise ValueError("two different draft lengths are needed to fit the step cost")
        b = (long.step_ms - short.step_ms) / (long.n - short.n)
        a = short.step_ms - b * short.n
        knots = {short.n: short.step_ms, long.n: long.step_ms}
        if baseline_step_ms:
            knots[0] = baseline_step_ms  # a step that drafts nothing is one target decode
        if drafted < 1.0 and not baseline_step_ms:
            raise ValueError("an n-gram kind's plain steps need the baseline's step cost")
        return cls(tuple(accept_by_position), tuple(sorted(knots.items())), a, b, drafted)

    @property
    def linear(self) -> bool:
        """Whether the two draft runs agree with a step cost of a + b * n, a >= 0 (a disturbed run does not)."""
        return self.a_ms >= 0

    def tokens_per_step(self, n: int) -> float:
        return 1.0 + sum(self.accept_by_position[:n])

    def step_ms(self, n: int) -> float:
        k = self.knots
        if n <= k[0][0]:
            if k[0][0] == 0 or not self.linear:
                return k[0][1]  # no shorter measurement: not cheaper than the shortest one (conservative)
            return self.a_ms + self.b_ms * n
        if n <= k[-1][0]:
            return _between(k, n)
        (n0, s0), (n1, s1) = k[-2], k[-1]
        return s1 + max((s1 - s0) / (n1 - n0), 0.0) * (n - n1)

    def tps(self, n: int) -> float:
        h = self.drafted
        if h >= 1.0:
            return 1000.0 * self.tokens_per_step(n) / self.step_ms(n)
        plain_ms = self.knots[0][1]  # the baseline's step (n = 0), required for h < 1
        return 1000.0 * (h * self.tokens_per_step(n) + 1 - h) / (h * self.step_ms(n) + (1 - h) * plain_ms)

    def best(self, lengths) -> list[tuple[int, float]]:
        """(n, predicted tok/s), best first, for draft lengths the acceptance profile covers."""
        usable = [n for n in lengths if n <= len(self.accept_by_position)]
        return sorted(((n, self.tps(n)) for n in usable), key=lambda x: -x[1])


def ceiling(runs: list[tuple[int, Measurement]], baseline_step_ms: float | None, lengths) -> tuple[int, float]:
    """(n, tok/s): the most a drafter could reach at any of `lengths` were every drafted token accepted, from
    its measured runs (n, measurement): a verification step's cost c(n) (the run's time over its steps, every
    step counted, drafting or not) interpolated between the runs and the baseline's step (n = 0), and n + 1
    tokens per step. No p_min and no other length can take the drafter beyond it: a step costs what it costs
    whatever is accepted, and p_min only ends drafts sooner (a shorter length's step)."""
    by_n = {n: m.predicted_ms / steps_of(m) for n, m in runs if m.predicted_ms > 0}
    if baseline_step_ms:
        by_n.setdefault(0, baseline_step_ms)
    knots = sorted(by_n.items())
    if not knots:
        return 0, 0.0

    def cost(n: int) -> float:
        if n <= knots[0][0]:
            return knots[0][1]
        # beyond the longest run: not cheaper than it (lengths stop there in practice)
        return _between(knots, n) if n <= knots[-1][0] else knots[-1][1]

    return max(((n, 1000.0 * (n + 1) / cost(n)) for n in lengths), key=lambda x: x[1], default=(0, 0.0))


def _between(knots, n: int) -> float:
    """The value at `n` on the straight segments through `knots` ((n, value), sorted; knots[0][0] <= n <=
    knots[-1][0])."""
    for (n0, v0), (n1, v1) in zip(knots, knots[1:]):
        if n <= n1:
            return v0 + (v1 - v0) * (n - n0) / (n1 - n0)
    return knots[-1][1]  # a single knot
