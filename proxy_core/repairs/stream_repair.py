"""Repairs to the part stream on its way to the client.

`StreamRepairer` sits between an upstream's parts and the client:

- leaked Kimi tool-call tokens in text or reasoning (F1) become proper
  `ToolCallPart`s; stray markers are dropped; the finish reason becomes
  `tool_calls` when calls were recovered;
- Kimi-native call ids (`functions.NAME:IDX`) are replaced by fresh client
  ids, the native id kept as `upstream_id`.

One repairer per attempt; it holds back only what the leak parser must
(a possible partial marker or an unfinished call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..stream import FinishPart, ReasoningPart, StreamPart, TextPart, ToolCallPart
from .history import Note, excerpt
from .ids import is_kimi_id, new_client_id
from .leak_parser import LeakedCall, LeakParser, StrayMarker, TextSegment
from .profiles import RepairPlan

#: Finish reasons a host gives when it (wrongly) thinks the turn is over.
_ENDED = {"stop", "end_turn", "eos", ""}


class StreamRepairer:
    def __init__(self, plan: RepairPlan, tool_schemas: Mapping[str, Mapping[str, Any]],
                 on_repair: Callable[[Note], None]) -> None:
        self.plan = plan
        self.on_repair = on_repair
        self._text = LeakParser(tool_schemas) if plan.leaks else None
        self._reasoning = LeakParser(tool_schemas) if plan.leaks else None
        self._recovered = 0
        self._stray: list[str] = []
        self._flushed = False

    def feed(self, part: StreamPart) -> list[StreamPart]:
        if self._flushed:  # after the finish reason only usage should come; pass as is
            return [part]
        if isinstance(part, TextPart) and self._text is not None:
            return self._segments(self._text.feed(part.text), TextPart)
        if isinstance(part, ReasoningPart) and self._reasoning is not None:
            return self._segments(self._reasoning.feed(part.text), ReasoningPart)
        if isinstance(part, ToolCallPart):
            return [self._client_call(part)]
        if isinstance(part, FinishPart):
            parts = self.flush()
            reason = part.reason
            if self._recovered and reason in _ENDED:
                self.on_repair(Note("finish_reason", f"finish_reason {reason!r}", "'tool_calls'"))
                reason = "tool_calls"
            parts.append(FinishPart(reason))
            return parts
        return [part]

    def flush(self) -> list[StreamPart]:
        """End of stream: whatever the parsers still hold."""
        parts: list[StreamPart] = []
        if self._flushed:
            return parts
        self._flushed = True
        if self._reasoning is not None:
            parts += self._segments(self._reasoning.finish(), ReasoningPart)
        if self._text is not None:
            parts += self._segments(self._text.finish(), TextPart)
        self._note_stray()
        return parts

    @property
    def recovered_calls(self) -> int:
        return self._recovered

    def _client_call(self, part: ToolCallPart) -> ToolCallPart:
        if self.plan.native_ids and is_kimi_id(part.id):
            return ToolCallPart(new_client_id(), part.name, part.arguments, upstream_id=part.id)
        return part

    def _segments(self, segments: list[Any], text_type: type[TextPart] | type[ReasoningPart]
                  ) -> list[StreamPart]:
        parts: list[StreamPart] = []
        for segment in segments:
            if isinstance(segment, TextSegment):
                if segment.text:
                    parts.append(text_type(segment.text))
            elif isinstance(segment, LeakedCall):
                self._stray.clear()  # section tokens around a call belong to that leak
                self._recovered += 1
                where = "reasoning" if text_type is ReasoningPart else "text"
                call_id = new_client_id()
                self.on_repair(Note("leaked_tool_call", excerpt(segment.raw),
                                    f"{segment.name}({excerpt(segment.arguments, 80)}) from {where}",
                                    call_id))
                parts.append(ToolCallPart(call_id, segment.name, segment.arguments,
                                          upstream_id=segment.raw_id))
            elif isinstance(segment, StrayMarker):
                self._stray.append(segment.raw)
        return parts

    def _note_stray(self) -> None:
        """Report markers that wrapped no call (a section end after calls does not count)."""
        raw = "".join(self._stray)
        self._stray.clear()
        if raw.strip() and not self._recovered:
            self.on_repair(Note("stray_marker", excerpt(raw), "removed"))
