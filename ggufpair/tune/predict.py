"""Predicting throughput at every draft length from two launches.

llama-server fixes the draft length at launch, so every length tried costs a restart. Two measurements
of one KV configuration are enough to predict the rest:

- acceptance by position q_i = P(draft position i is accepted in a verification step), from the run with
  the longer draft (a token at position i is accepted only if every earlier one was, and the draft proposes
  the same tokens whatever its maximum length, so q_i does not depend on the length);
- the cost of a verification step, modelled as s(n) = a + b * n milliseconds for n drafted tokens (a: the
  target's own forward pass and fixed overheads, b: one more draft token drafted and verified), fitted to
  the two runs' measured step times.

A step then yields 1 + q_0 + ... + q_{n-1} tokens on average, so tps(n) = 1000 * (1 + sum q_i) / s(n).
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


@dataclass(frozen=True)
class Predictor:
    accept_by_position: tuple[float, ...]
    a_ms: float
    b_ms: float

    @classmethod
    def fit(cls, short: StepSample, long: StepSample, accept_by_position: tuple[float, ...]) -> "Predictor":
        if long.n == short.n:
            raise ValueError("two different draft lengths are needed to fit the step cost")
        b = (long.step_ms - short.step_ms) / (long.n - short.n)
        b = max(b, 0.0)
        a = max(short.step_ms - b * short.n, 1e-6)
        return cls(tuple(accept_by_position), a, b)

    def tokens_per_step(self, n: int) -> float:
        return 1.0 + sum(self.accept_by_position[:n])

    def step_ms(self, n: int) -> float:
        return self.a_ms + self.b_ms * n

    def tps(self, n: int) -> float:
        return 1000.0 * self.tokens_per_step(n) / self.step_ms(n)

    def best(self, lengths) -> list[tuple[int, float]]:
        """(n, predicted tok/s), best first, for draft lengths the acceptance profile covers."""
        usable = [n for n in lengths if n <= len(self.accept_by_position)]
        return sorted(((n, self.tps(n)) for n in usable), key=lambda x: -x[1])
