"""The relay benchmark's first-byte verdict says 'within noise' when its own runs cannot
tell the added p50 from the target, rather than flipping between met and NOT met."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_relay import added_p50_interval, verdict  # noqa: E402


def _runs(centre: float, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [centre + rng.gauss(0, spread) for _ in range(200)]


def test_the_interval_holds_the_added_p50_and_narrows_with_less_noise() -> None:
    direct = _runs(20.0, 0.5, 1)
    low, high = added_p50_interval(_runs(21.8, 0.5, 2), direct)
    assert low < 1.8 < high
    quiet = added_p50_interval(_runs(21.8, 0.05, 3), _runs(20.0, 0.05, 4))
    assert quiet[1] - quiet[0] < (high - low) / 4
    assert added_p50_interval(_runs(21.8, 0.5, 2), direct) == (low, high)  # seeded


def test_the_verdict_is_met_only_when_the_whole_interval_is_within_the_target() -> None:
    assert verdict((1.2, 1.6), 1.7) == "met"
    assert verdict((1.8, 2.1), 1.7) == "NOT met"
    assert verdict((1.6, 1.9), 1.7) == "within noise"
    assert verdict((1.5, 1.7), 1.7) == "met"
