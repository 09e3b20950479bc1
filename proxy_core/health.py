"""Upstream target health: cool down a target that keeps failing.

A target (`upstream:model`) that fails `cooldown_after` attempts in a row
is skipped for `cooldown` seconds in favour of the route's other targets;
when the time is up it is tried again by itself (the next turn that needs
it). One success resets the count. If every target of a route is cooling,
they are used anyway, soonest-recovering first: a cooldown steers traffic,
it never refuses a turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import Target


@dataclass(slots=True)
class _State:
    failures: int = 0
    cooling_until: float = 0.0


class TargetHealth:
    def __init__(self, cooldown: float, cooldown_after: int,
                 on_change: Callable[[str, bool, float | None, str], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.cooldown = cooldown
        self.cooldown_after = cooldown_after
        self._on_change = on_change
        #: Where the time comes from (`time.time`); tests set a clock they move by hand.
        self.clock = clock
        self._states: dict[str, _State] = {}

    def cooling(self, target: Target | str) -> bool:
        state = self._states.get(str(target))
        if state is None or not state.cooling_until:
            return False
        if self.clock() < state.cooling_until:
            return True
        state.cooling_until = 0.0
        state.failures = 0
        self._on_change(str(target), True, None, "cooldown over")
        return False

    def order(self, targets: Sequence[Target]) -> list[Target]:
        """`targets` in route order, cooling ones last (soonest back first)."""
        healthy = [t for t in targets if not self.cooling(t)]
        cooling = sorted((t for t in targets if self.cooling(t)),
                         key=lambda t: self._states[str(t)].cooling_until)
        return healthy + cooling

    def succeeded(self, target: Target | str) -> None:
        state = self._states.get(str(target))
        if state is not None:
            state.failures = 0

    def failed(self, target: Target | str, reason: str) -> None:
        if self.cooldown <= 0:
            return
        state = self._states.setdefault(str(target), _State())
        state.failures += 1
        if state.failures >= self.cooldown_after and not state.cooling_until:
            state.cooling_until = self.clock() + self.cooldown
            self._on_change(str(target), False, state.cooling_until, reason)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """For the health endpoint: targets with failures or a cooldown."""
        now = self.clock()
        return {name: {"failures": s.failures,
                       "cooling_for": max(0.0, s.cooling_until - now) if s.cooling_until else 0.0}
                for name, s in self._states.items() if s.failures or s.cooling_until}
