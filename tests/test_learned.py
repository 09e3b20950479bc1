"""The estimator behind learned watchdog deadlines (`proxy_core/learned.py`)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.learned import (
    MARGIN, MIN_SAMPLES, REFIT_SHARE, FirstOutputFit, LearnedDeadlines, Limits, first_output_deadline,
    idle_deadline, quantile, sample_of,
)

FIRST = Limits(floor=2.0, ceiling=45.0)
IDLE = Limits(floor=5.0, ceiling=30.0)

sizes = st.integers(min_value=0, max_value=2_000_000)
samples = st.lists(st.tuples(sizes, st.floats(min_value=0.0, max_value=600.0)),
                   min_size=1, max_size=60)
limits = st.tuples(st.floats(0.1, 20.0), st.floats(0.1, 120.0)).map(lambda t: Limits(*t))


@given(samples, sizes, limits)
def test_deadline_stays_within_floor_and_ceiling(points: list[tuple[int, float]], size: int,
                                                 bounds: Limits) -> None:
    seconds, _ = first_output_deadline(FirstOutputFit.of(points), size, bounds, min_samples=1)
    assert min(bounds.floor, bounds.ceiling) <= seconds <= bounds.ceiling


@given(samples, sizes, sizes)
def test_deadline_never_shrinks_as_the_request_grows(points: list[tuple[int, float]], a: int,
                                                     b: int) -> None:
    fit = FirstOutputFit.of(points)
    small, large = sorted((a, b))
    assert (first_output_deadline(fit, small, FIRST, min_samples=1)[0]
            <= first_output_deadline(fit, large, FIRST, min_samples=1)[0] + 1e-9)


@given(samples, sizes)
def test_configured_value_until_enough_history(points: list[tuple[int, float]], size: int) -> None:
    fit = FirstOutputFit.of(points)
    seconds, basis = first_output_deadline(fit, size, FIRST, min_samples=len(points) + 1)
    assert seconds == FIRST.ceiling
    assert basis == f"configured; {len(points)} of {len(points) + 1} turns learned"
    seconds, basis = first_output_deadline(fit, size, FIRST, min_samples=len(points))
    assert basis == f"learned from {len(points)} turns"


@given(st.lists(st.floats(0.0, 100.0), min_size=0, max_size=40), limits)
def test_idle_deadline_bounds_and_fallback(gaps: list[float], bounds: Limits) -> None:
    seconds, basis = idle_deadline(sorted(gaps), bounds)
    if len(gaps) < MIN_SAMPLES:
        assert seconds == bounds.ceiling and basis.startswith("configured")
    else:
        assert min(bounds.floor, bounds.ceiling) <= seconds <= bounds.ceiling
        assert basis == f"learned from {len(gaps)} turns"


def test_the_fit_recovers_a_linear_host_and_covers_its_noise() -> None:
    # A host that takes 0.3 s plus 20 ms per KB, +-20%: the fit finds the line, and
    # the deadline covers every sample with room to spare.
    rng = random.Random(7)
    points = []
    for _ in range(200):
        size = rng.randint(1_000, 200_000)
        points.append((size, (0.3 + 0.02 * size / 1000) * rng.uniform(0.8, 1.2)))
    fit = FirstOutputFit.of(points)
    assert 0.015 < fit.per_kb < 0.025
    assert -0.5 < fit.base < 1.0
    wide = Limits(0.0, 1000.0)
    for size, seconds in points:
        assert seconds < first_output_deadline(fit, size, wide)[0]
    # ... and a hang is caught in about one normal wait, far below a fixed 45 s.
    assert first_output_deadline(fit, 50_000, wide)[0] < 2 * MARGIN * (0.3 + 0.02 * 50)


def test_one_freak_sample_moves_little() -> None:
    points = [(10_000, 1.0 + i / 100) for i in range(30)]
    calm = first_output_deadline(FirstOutputFit.of(points), 10_000, FIRST)[0]
    freak = first_output_deadline(FirstOutputFit.of([*points, (10_000, 40.0)]), 10_000, FIRST)[0]
    assert freak < calm * 1.2


def test_quantile_interpolates() -> None:
    assert quantile([1.0], 0.95) == 1.0
    assert quantile([0.0, 10.0], 0.5) == 5.0
    assert quantile([float(i) for i in range(101)], 0.95) == 95.0


def test_learned_deadlines_per_target_and_hedge_delay() -> None:
    learned = LearnedDeadlines()
    for _ in range(MIN_SAMPLES - 1):
        learned.observe("a:m", 5_000, 0.2, 0.05)
    plan = learned.plan("a:m", 5_000, FIRST, IDLE)
    assert (plan.first_output, plan.idle) == (45.0, 30.0)
    assert plan.first_output_basis == f"configured; {MIN_SAMPLES - 1} of {MIN_SAMPLES} turns learned"
    assert learned.hedge_delay("a:m", 5_000, 0.95) is None
    learned.observe("a:m", 5_000, 0.2, 0.05)
    plan = learned.plan("a:m", 5_000, FIRST, IDLE)
    assert (plan.first_output, plan.idle) == (2.0, 5.0)  # a fast host: the floors
    assert plan.first_output_basis == f"learned from {MIN_SAMPLES} turns"
    assert learned.hedge_delay("a:m", 5_000, 0.95) == 0.5  # never below HEDGE_MIN
    # Another target has no history of its own.
    assert learned.plan("b:m", 5_000, FIRST, IDLE).first_output == 45.0
    # After a timeout the learned deadlines double, up to the ceilings.
    wider = plan.escalate(2.0, (45.0, 30.0))
    assert (wider.first_output, wider.idle) == (4.0, 10.0)
    assert wider.first_output_basis.endswith("x2 after a timeout")


@settings(max_examples=50)
@given(st.lists(st.tuples(sizes, st.floats(0.0, 60.0)), min_size=MIN_SAMPLES, max_size=30),
       sizes)
def test_figures_agree_with_the_plan(points: list[tuple[int, float]], size: int) -> None:
    learned = LearnedDeadlines()
    for s, t in points:
        learned.observe("t:m", s, t, None)
    figures = learned.figures("t:m", FIRST, IDLE)
    assert figures["first_output"]["samples"] == len(points)
    assert figures["first_output"]["deadline_at"]["10 KB"] == round(
        learned.plan("t:m", 10_000, FIRST, IDLE).first_output, 2)
    assert figures["idle"]["basis"] == f"configured; 0 of {MIN_SAMPLES} turns learned"


@settings(max_examples=60)
@given(st.integers(1, 40), st.lists(st.tuples(sizes, st.one_of(st.none(), st.floats(0.0, 60.0)),
                                              st.one_of(st.none(), st.floats(0.0, 60.0))),
                                    max_size=150))
def test_the_kept_fit_and_gaps_follow_the_window(window: int, observations: list[
        tuple[int, float | None, float | None]]) -> None:
    """The gaps stay sorted exactly as they enter and leave the window; the fit is the
    fit of the window as it was at most `1 / REFIT_SHARE` of its samples ago."""
    learned = LearnedDeadlines(window=window, min_samples=1)
    windows: list[list[tuple[int, float]]] = []  # the first-output window after each sample
    firsts: list[tuple[int, float]] = []
    gaps: list[float] = []
    for size, ttfb, gap in observations:
        learned.observe("t:m", size, ttfb, gap)
        if ttfb is not None or gap is not None:
            if ttfb is not None:
                firsts = [*firsts, (size, ttfb)][-window:]
                windows.append(firsts)
            if gap is not None:
                gaps = [*gaps, gap][-window:]
        history = learned._targets.get("t:m")
        if history is None:
            continue
        assert history.sorted_gaps() == sorted(gaps)
        fit = history.fit()
        if not windows:
            assert fit is None
            continue
        lag = len(windows[-1]) // REFIT_SHARE  # samples the fit may not have seen yet
        assert fit in [FirstOutputFit.of(w) for w in windows[-1 - lag:]]
        # and the deadline follows from that fit
        assert learned.plan("t:m", 10_000, FIRST, IDLE).first_output == first_output_deadline(
            fit, 10_000, FIRST, 1)[0]


def test_samples_from_journaled_attempts() -> None:
    ok = {"target": "a:m", "request_bytes": 1234, "started_at": 10.0, "first_byte_at": 10.5,
          "max_gap": 0.2, "chunks": 5}
    assert sample_of(ok) == ("a:m", 1234, 0.5, 0.2)
    # One output: no gap to learn from; no output: nothing at all.
    assert sample_of({**ok, "chunks": 1}) == ("a:m", 1234, 0.5, None)
    assert sample_of({**ok, "first_byte_at": None, "max_gap": None, "chunks": 0}) is None
    # Written before sizes were recorded.
    assert sample_of({k: v for k, v in ok.items() if k != "request_bytes"}) is None
    learned = LearnedDeadlines()
    assert learned.load([ok] * 3 + [{"target": "a:m"}]) == 3
    assert learned.samples("a:m") == 3
