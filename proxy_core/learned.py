"""Watchdog deadlines learned from each target's recent turns.

A fixed `first_token_timeout` has to cover the slowest healthy turn of the
slowest host, so every hang costs that long. The host tells us what healthy
looks like instead: each attempt that produced output left its request size,
its time to first output and its longest silence between outputs. From the
last `WINDOW` of those per target (read back from the journal at start):

- **First output.** Time to first output grows with the request (the host
  reads the whole prompt first), so it is fitted against size with Tukey's
  resistant line: sort the samples by size, split them in thirds, slope =
  (median time of the top third - median time of the bottom third) /
  (median size of the top third - median size of the bottom third), never
  below 0; base = the median of (time - slope x size). The spread is the
  `QUANTILE` (0.95) of the residuals, time - (base + slope x size).
  deadline(size) = `MARGIN` (2) x (base + slope x size + spread).
- **Idle.** deadline = `MARGIN` x the `QUANTILE` of the attempts' longest gaps
  between outputs (keep-alives do not count as output).

Each deadline is clamped to [floor, ceiling]: the floor is `[watchdog]
first_token_floor` / `idle_floor`, the ceiling the configured
`first_token_timeout` / `idle_timeout`. Until a target has `MIN_SAMPLES` (8)
samples of a kind, that kind uses the configured value. Medians and a
quantile are used, not means, so one freak turn moves nothing much; an
attempt the watchdog ended gives no sample (its time is unknown, only
longer), and a retry after such a timeout doubles the learned deadline
(`escalate`), so a wrong estimate costs at most one extra attempt.

The fit is monotone in size (slope >= 0). Refitting 200 samples takes ~0.15
ms, and a deadline is asked for on every turn's way upstream, so the fit is
remade once `1 / REFIT_SHARE` of the window is new (at once while a target
has fewer than `REFIT_SHARE` samples): with a full window, a deadline may
lag the newest 12 of 200 samples, which moves the medians it rests on by
little. The gaps are kept sorted as they come and go, exactly. Asking for a
deadline is then a few float operations.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Samples kept per target (the most recent ones).
WINDOW = 200
#: Samples a target needs before its deadlines are learned rather than configured.
MIN_SAMPLES = 8
#: The share of healthy turns the spread covers.
QUANTILE = 0.95
#: The learned figure is multiplied by this, for turns a little slower than any seen.
MARGIN = 2.0
#: A hedge never starts sooner than this (seconds), however fast the host.
HEDGE_MIN = 0.5
#: Request sizes are fitted in KB (1000 bytes).
KB = 1000.0
#: The fit is remade once this share (1 / REFIT_SHARE) of a target's samples is new.
REFIT_SHARE = 16


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of ascending values, interpolating between ranks."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    share = position - low
    return sorted_values[low] * (1 - share) + sorted_values[high] * share


def _median(values: Sequence[float]) -> float:
    return quantile(sorted(values), 0.5)


@dataclass(frozen=True, slots=True)
class FirstOutputFit:
    """Time to first output against request size: base + per_kb x KB, and its spread."""

    samples: int
    base: float
    per_kb: float
    residuals: tuple[float, ...]  # ascending

    def typical(self, size: int) -> float:
        """The fitted (median) time to first output for a request of `size` bytes."""
        return max(0.0, self.base + self.per_kb * size / KB)

    def at_quantile(self, size: int, q: float = QUANTILE) -> float:
        """The time by which a share `q` of healthy requests of `size` bytes had output."""
        return max(0.0, self.base + self.per_kb * size / KB + quantile(self.residuals, q))

    @classmethod
    def of(cls, samples: Sequence[tuple[int, float]]) -> FirstOutputFit:
        """Tukey's resistant line through (size, seconds) samples (at least one)."""
        points = sorted(samples)
        n = len(points)
        third = max(1, n // 3)
        low, high = points[:third], points[n - third:]
        x_low, x_high = _median([p[0] / KB for p in low]), _median([p[0] / KB for p in high])
        slope = 0.0
        if x_high > x_low:
            slope = max(0.0, (_median([p[1] for p in high]) - _median([p[1] for p in low]))
                        / (x_high - x_low))
        base = _median([t - slope * s / KB for s, t in points])
        residuals = sorted(t - (base + slope * s / KB) for s, t in points)
        return cls(n, base, slope, tuple(residuals))


@dataclass(frozen=True, slots=True)
class Limits:
    """Floor and ceiling (seconds) of one kind of deadline."""

    floor: float
    ceiling: float

    def clamp(self, seconds: float) -> float:
        return min(self.ceiling, max(min(self.floor, self.ceiling), seconds))


def first_output_deadline(fit: FirstOutputFit | None, size: int, limits: Limits,
                          min_samples: int = MIN_SAMPLES) -> tuple[float, str]:
    """Seconds to allow a request of `size` bytes before its first output, and why."""
    if fit is None or fit.samples < min_samples:
        have = fit.samples if fit is not None else 0
        return limits.ceiling, f"configured; {have} of {min_samples} turns learned"
    return (limits.clamp(MARGIN * fit.at_quantile(size)),
            f"learned from {fit.samples} turns")


def idle_deadline(gaps: Sequence[float], limits: Limits,
                  min_samples: int = MIN_SAMPLES) -> tuple[float, str]:
    """Seconds to allow between outputs, from ascending longest-gap samples, and why."""
    if len(gaps) < min_samples:
        return limits.ceiling, f"configured; {len(gaps)} of {min_samples} turns learned"
    return limits.clamp(MARGIN * quantile(gaps, QUANTILE)), f"learned from {len(gaps)} turns"


@dataclass(frozen=True, slots=True)
class DeadlinePlan:
    """The deadlines one attempt runs under, and why each is what it is."""

    first_output: float
    first_output_basis: str
    idle: float
    idle_basis: str

    def escalate(self, factor: float, ceilings: tuple[float, float]) -> DeadlinePlan:
        """Learned deadlines times `factor` (after a timeout), never above the ceilings."""
        first, first_basis = self.first_output, self.first_output_basis
        idle, idle_basis = self.idle, self.idle_basis
        if first_basis.startswith("learned") and first < ceilings[0]:
            first = min(ceilings[0], first * factor)
            first_basis += f", x{factor:g} after a timeout"
        if idle_basis.startswith("learned") and idle < ceilings[1]:
            idle = min(ceilings[1], idle * factor)
            idle_basis += f", x{factor:g} after a timeout"
        return DeadlinePlan(first, first_basis, idle, idle_basis)


class _History:
    """One target's recent samples and the fit made from them."""

    __slots__ = ("first", "gaps", "_fit", "_new", "_sorted_gaps")

    def __init__(self, window: int) -> None:
        self.first: deque[tuple[int, float]] = deque(maxlen=window)
        self.gaps: deque[float] = deque(maxlen=window)
        self._fit: FirstOutputFit | None = None
        self._new = 0  # samples added since the fit was made
        self._sorted_gaps: list[float] = []  # `gaps`, ascending

    def add(self, size: int, ttfb: float | None, gap: float | None) -> None:
        if ttfb is not None:
            self.first.append((size, ttfb))
            self._new += 1
        if gap is not None:
            gaps = self.gaps
            if len(gaps) == gaps.maxlen:  # the oldest leaves the window
                del self._sorted_gaps[bisect_left(self._sorted_gaps, gaps[0])]
            gaps.append(gap)
            insort(self._sorted_gaps, gap)

    def fit(self) -> FirstOutputFit | None:
        if self.first and (self._fit is None
                           or self._new * REFIT_SHARE >= len(self.first)):
            self._fit = FirstOutputFit.of(list(self.first))
            self._new = 0
        return self._fit

    def sorted_gaps(self) -> list[float]:
        return self._sorted_gaps


class LearnedDeadlines:
    """Per-target samples, and the deadlines and hedge delays they give."""

    def __init__(self, window: int = WINDOW, min_samples: int = MIN_SAMPLES) -> None:
        self.window = window
        self.min_samples = min_samples
        self._targets: dict[str, _History] = {}

    def observe(self, target: str, size: int, ttfb: float | None, max_gap: float | None) -> None:
        """Learn from one attempt: its time to first output (None if it had none) and its
        longest gap between outputs (None with fewer than two outputs)."""
        if ttfb is None and max_gap is None:
            return
        history = self._targets.get(target)
        if history is None:
            history = self._targets[target] = _History(self.window)
        history.add(max(0, size), ttfb, max_gap)

    def load(self, attempts: Iterable[Mapping[str, Any]]) -> int:
        """Learn from journaled attempt records (oldest first); returns how many counted."""
        count = 0
        for a in attempts:
            sample = sample_of(a)
            if sample is not None:
                self.observe(*sample)
                count += 1
        return count

    def samples(self, target: str) -> int:
        history = self._targets.get(target)
        return len(history.first) if history is not None else 0

    def plan(self, target: str, size: int, first_limits: Limits, idle_limits: Limits
             ) -> DeadlinePlan:
        """The deadlines for an attempt at `target` with a request of `size` bytes."""
        history = self._targets.get(target)
        fit = history.fit() if history is not None else None
        gaps = history.sorted_gaps() if history is not None else []
        first, first_basis = first_output_deadline(fit, size, first_limits, self.min_samples)
        idle, idle_basis = idle_deadline(gaps, idle_limits, self.min_samples)
        return DeadlinePlan(first, first_basis, idle, idle_basis)

    def hedge_delay(self, target: str, size: int, q: float) -> float | None:
        """The `q` quantile of healthy time to first output at this size, or None
        while the target has too little history."""
        history = self._targets.get(target)
        fit = history.fit() if history is not None else None
        if fit is None or fit.samples < self.min_samples:
            return None
        return max(HEDGE_MIN, fit.at_quantile(size, q))

    def figures(self, target: str, first_limits: Limits, idle_limits: Limits
                ) -> dict[str, Any]:
        """What the control API shows for a target: the fit, the spread and example
        deadlines at a few request sizes."""
        history = self._targets.get(target)
        fit = history.fit() if history is not None else None
        gaps = history.sorted_gaps() if history is not None else []
        first: dict[str, Any] = {
            "samples": fit.samples if fit else 0, "floor": first_limits.floor,
            "ceiling": first_limits.ceiling}
        if fit is not None:
            first.update(base=round(fit.base, 3), per_kb=round(fit.per_kb, 5),
                         spread=round(quantile(fit.residuals, QUANTILE), 3))
        first["deadline_at"] = {
            f"{kb} KB": round(first_output_deadline(fit, kb * 1000, first_limits,
                                                    self.min_samples)[0], 2)
            for kb in (1, 10, 100)}
        first["basis"] = first_output_deadline(fit, 0, first_limits, self.min_samples)[1]
        idle_s, idle_basis = idle_deadline(gaps, idle_limits, self.min_samples)
        idle: dict[str, Any] = {"samples": len(gaps), "floor": idle_limits.floor,
                                "ceiling": idle_limits.ceiling, "deadline": round(idle_s, 2),
                                "basis": idle_basis}
        if gaps:
            idle["gap_p95"] = round(quantile(gaps, QUANTILE), 3)
        return {"first_output": first, "idle": idle}


def sample_of(attempt: Mapping[str, Any]) -> tuple[str, int, float | None, float | None] | None:
    """(target, size, time to first output, longest gap) from an attempt record, or
    None if it teaches nothing (no output, or written before sizes were recorded)."""
    size = attempt.get("request_bytes")
    target = attempt.get("target")
    started = attempt.get("started_at")
    if not isinstance(size, int) or not size or not isinstance(target, str):
        return None
    first = attempt.get("first_byte_at")
    ttfb = (first - started if isinstance(first, (int, float)) and isinstance(started, (int, float))
            else None)
    gap = attempt.get("max_gap")
    max_gap = float(gap) if isinstance(gap, (int, float)) and (attempt.get("chunks") or 0) > 1 \
        else None
    if ttfb is None and max_gap is None:
        return None
    return target, size, ttfb, max_gap
