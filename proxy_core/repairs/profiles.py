"""Repair profiles: which repairs a route applies to which target.

- `none`: relay untouched.
- `kimi`: everything — leaked-token parsing, native tool-call ids,
  `reasoning_content` for strict hosts, a retry of an empty reply, plus the
  structural fixes.
- `auto` (default): the structural fixes every strict host needs (restore
  stripped tool calls, answer unanswered calls, mend argument JSON, drop
  empty content, relay only calls to offered tools), plus the Kimi fixes
  when the target model looks like Kimi or Moonshot, or the upstream is the
  built-in (Kimi-like) simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

_KIMI_HINTS = ("kimi", "moonshot")


@dataclass(frozen=True, slots=True)
class RepairPlan:
    leaks: bool = False        # F1: parse leaked tool-call tokens out of the stream
    native_ids: bool = False   # send Kimi `functions.NAME:IDX` ids upstream
    reasoning: bool = False    # F3: fill `reasoning_content` on tool-call messages
    structure: bool = False    # F4 + missing results + malformed arguments
    empty: bool = False        # F5: no empty assistant content or text blocks
    tool_names: bool = False   # calls resolved against the offered tools, never to others
    empty_reply: bool = False  # an attempt that ends with no text and no call is retried

    @property
    def any(self) -> bool:
        return (self.leaks or self.native_ids or self.reasoning or self.structure or self.empty
                or self.tool_names or self.empty_reply)


NONE = RepairPlan()
STRUCTURAL = RepairPlan(structure=True, empty=True, tool_names=True)
KIMI = RepairPlan(leaks=True, native_ids=True, reasoning=True, structure=True, empty=True,
                  tool_names=True, empty_reply=True)


def looks_like_kimi(model: str, upstream_kind: str) -> bool:
    lowered = model.lower()
    return upstream_kind == "simulator" or any(h in lowered for h in _KIMI_HINTS)


def plan_for(profile: str, model: str, upstream_kind: str) -> RepairPlan:
    if profile == "none":
        return NONE
    if profile == "kimi":
        return KIMI
    return KIMI if looks_like_kimi(model, upstream_kind) else STRUCTURAL
