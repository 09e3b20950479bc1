"""Token and cost totals: per session and over everything, for the API and the dashboard.

A turn's own usage is `record.Usage` (what the host reported) and its cost
`Turn.cost` (`pricing.py`); this module only adds them up. Costs add up
over the turns that have one: `priced_turns` says how many did, so a
total over partly priced turns is not mistaken for the whole bill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The `record.Usage` counts summed, in the order they are shown.
COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
          "reasoning_tokens")


@dataclass(slots=True)
class UsageTotals:
    """Sums of turns' usage and cost."""

    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    priced_turns: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_turn(self, usage: Mapping[str, Any], cost: float | None) -> None:
        """Add one turn, given its `usage` dict (as in `Turn.to_dict`) and cost."""
        self.turns += 1
        for name in COUNTS:
            value = usage.get(name)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        if cost is not None:
            self.cost += cost
            self.priced_turns += 1

    def merge(self, other: UsageTotals) -> None:
        self.turns += other.turns
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost += other.cost
        self.priced_turns += other.priced_turns

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"turns": self.turns}
        data.update((name, getattr(self, name)) for name in COUNTS)
        data["total_tokens"] = self.total_tokens
        data["cost"] = self.cost if self.priced_turns else None
        data["priced_turns"] = self.priced_turns
        return data


def summarize(turns: Iterable[Mapping[str, Any]]) -> tuple[UsageTotals, dict[str, UsageTotals]]:
    """The total and per-session sums of turn dicts (`Turn.to_dict`)."""
    total = UsageTotals()
    sessions: dict[str, UsageTotals] = {}
    for turn in turns:
        usage, cost = turn.get("usage") or {}, turn.get("cost")
        session = sessions.setdefault(str(turn.get("session_id") or ""), UsageTotals())
        session.add_turn(usage, cost if isinstance(cost, (int, float)) else None)
        total.add_turn(usage, cost if isinstance(cost, (int, float)) else None)
    return total, sessions


def format_tokens(count: int) -> str:
    """`1234` → `1.2k`, `2_500_000` → `2.5M`: short enough for a status line."""
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.1f}M"


def format_cost(cost: float | None) -> str:
    """`$0.0123`, or `""` without one."""
    if cost is None:
        return ""
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"
