"""Repairs to the part stream on its way to the client.

`StreamRepairer` sits between an upstream's parts and the client:

- leaked Kimi tool-call tokens (F1) become proper `ToolCallPart`s. Text and
  reasoning go through **one** leak parser, as one stream, so a call that
  opens in the reasoning and ends in the content is one call; the parser's
  output is handed back to the channel each character came from. Stray
  markers are dropped.
- every call, leaked or native, is resolved against the tools the request
  offered (`tool_names`); a call that names no offered tool, or whose
  arguments are no JSON object even after repair, goes to the client as
  plain text (without markers) and is reported, never as a call;
- the finish reason follows what was sent: `tool_calls` when calls were
  relayed, `stop` when none was;
- Kimi-native call ids (`functions.NAME:IDX`) and recovered calls get fresh
  client ids, the upstream's id kept as `upstream_id`.

One repairer per attempt; it holds back only what the leak parser must
(the last word of text, a possible partial marker or an unfinished call).
"""

from __future__ import annotations

import re

from collections import deque
from collections.abc import Callable
from dataclasses import replace

from ..errors import RunawayAnswer
from ..stream import FinishPart, ReasoningPart, StreamPart, TextPart, ToolCallPart
from .history import Note, excerpt
from .ids import is_kimi_id, new_client_id
from .json_args import repair_json_arguments_detailed
from .leak_parser import LeakedCall, LeakParser, Segment, StrayMarker, TextSegment, strip_markers
from .profiles import RepairPlan
from .tool_names import ToolCatalog

#: Finish reasons a host gives when it (wrongly) thinks the turn is over.
_ENDED = {"stop", "end_turn", "eos", ""}

TextKind = type[TextPart] | type[ReasoningPart]


class _Run:
    """Characters fed to the parser from one channel and not yet given back."""

    __slots__ = ("kind", "left")

    def __init__(self, kind: TextKind, left: int) -> None:
        self.kind = kind
        self.left = left
_ID_SHAPE = re.compile(r"(?=.*[\d.:_\-])[A-Za-z0-9]+(?:[.:_\-]+[A-Za-z0-9]+)*")


class StreamRepairer:
    def __init__(self, plan: RepairPlan, tools: ToolCatalog,
                 on_repair: Callable[[Note], None]) -> None:
        self.plan = plan
        self.tools = tools
        self.on_repair = on_repair
        self._parser = LeakParser(tools.schemas) if plan.leaks else None
        # What the parser was fed and has not given back yet: [channel, length] runs.
        self._runs: deque[_Run] = deque()
        self._recovered = 0
        self._relayed = 0
        self._demoted = 0
        self._stray: list[str] = []
        self._flushed = False

    @property
    def recovered_calls(self) -> int:
        """Calls recovered from leaked tokens."""
        return self._recovered

    @property
    def relayed_calls(self) -> int:
        """Calls sent to the client as calls (native and recovered)."""
        return self._relayed

    def feed(self, part: StreamPart) -> list[StreamPart]:
        if self._flushed:  # after the finish reason only usage should come; pass as is
            return [part]
        if isinstance(part, (TextPart, ReasoningPart)) and self._parser is not None:
            if not part.text:
                return []
            kind = type(part)
            runs = self._runs
            if runs and runs[-1].kind is kind:
                runs[-1].left += len(part.text)
            else:
                runs.append(_Run(kind, len(part.text)))
            segments = self._parser.feed(part.text)
            RunawayAnswer.check(self._parser.buffered)
            return self._segments(segments)
        if isinstance(part, ToolCallPart):
            return [self._native(part)]
        if isinstance(part, FinishPart):
            parts = self.flush()
            parts.append(FinishPart(self._finish_reason(part.reason)))
            return parts
        return [part]

    def flush(self) -> list[StreamPart]:
        """End of stream: whatever the parser still holds."""
        if self._flushed:
            return []
        self._flushed = True
        parts = self._segments(self._parser.finish()) if self._parser is not None else []
        self._note_stray()
        return parts

    # -- finish reason -------------------------------------------------------------

    def _finish_reason(self, reason: str) -> str:
        if self._relayed and reason in _ENDED and self._recovered:
            self.on_repair(Note("finish_reason", f"finish_reason {reason!r}", "'tool_calls'"))
            return "tool_calls"
        if not self._relayed and reason == "tool_calls" and self._demoted:
            self.on_repair(Note("finish_reason", "finish_reason 'tool_calls'",
                                "'stop' (no call was relayed as a call)"))
            return "stop"
        return reason

    # -- calls ---------------------------------------------------------------------

    def _native(self, part: ToolCallPart) -> StreamPart:
        """A call the upstream sent as a call: named as offered, arguments an object."""
        if not self.plan.tool_names:
            return self._client_id(part)
        repair = repair_json_arguments_detailed(part.arguments)
        if repair.status == "wrapped":
            return self._demote(part.name + part.arguments, TextPart,
                                f"arguments of {part.name!r} are not a JSON object")
        resolved = self.tools.resolve((part.name, part.id), repair.text)
        if resolved is None:
            return self._demote(f"{part.name}{part.arguments}", TextPart,
                                f"{part.name or part.id!r} names no tool the request offered")
        arguments = part.arguments if repair.status == "valid" else repair.text
        sent = self._client_id(ToolCallPart(part.id, resolved.name, arguments, part.upstream_id))
        if resolved.name != part.name:
            self.on_repair(Note("tool_name", f"{part.name or part.id!r}",
                                f"{resolved.name!r} (from the {resolved.how})", sent.id))
        if repair.status == "repaired":
            self.on_repair(Note("tool_arguments", excerpt(part.arguments), excerpt(repair.text),
                                sent.id))
        self._relayed += 1
        return sent

    def _client_id(self, part: ToolCallPart) -> ToolCallPart:
        if self.plan.native_ids and is_kimi_id(part.id):
            return ToolCallPart(new_client_id(), part.name, part.arguments, upstream_id=part.id)
        return part

    def _leaked(self, call: LeakedCall, kind: TextKind, where: str) -> list[StreamPart]:
        """A call recovered from leaked text: a call if it names an offered tool, else text."""
        text = strip_markers(call.raw)
        if not call.args_ok:
            return [self._demote(text, kind, "its arguments are not a JSON object")]
        resolved = self.tools.resolve((call.name, call.raw_id), call.arguments)
        if resolved is None:
            named = call.raw_id or call.name
            reason = f"{named!r} names no tool the request offered" if named else \
                "no id, and its arguments fit no offered tool"
            return [self._demote(text, kind, reason)]
        parts: list[StreamPart] = []
        if call.lead and resolved.how == "arguments" and not _ID_SHAPE.fullmatch(call.raw_id or ""):
            # A word before the arguments that names no tool and has no id's
            # shape (letters and digits joined by . : _ -, with a digit or a
            # joint) was prose, not an id: it goes back to the text.
            parts.append(kind(call.raw[:call.lead]))
            call = replace(call, raw=call.raw[call.lead:], raw_id=None, lead=0)
        self._recovered += 1
        self._relayed += 1
        how = "" if resolved.how == "name" else f"; tool from the {resolved.how}"
        call_id = new_client_id()
        self.on_repair(Note("leaked_tool_call", excerpt(call.raw),
                            f"{resolved.name}({excerpt(call.arguments, 80)}) from {where}{how}",
                            call_id))
        parts.append(ToolCallPart(call_id, resolved.name, call.arguments, upstream_id=call.raw_id))
        return parts

    def _demote(self, text: str, kind: TextKind, reason: str) -> StreamPart:
        """A call that must not reach the client as one: it goes on as text."""
        self._demoted += 1
        self.on_repair(Note("call_as_text", excerpt(text), f"sent as text: {reason}"))
        return kind(text)

    # -- leaked text -----------------------------------------------------------------

    def _segments(self, segments: list[Segment]) -> list[StreamPart]:
        parts: list[StreamPart] = []
        for segment in segments:
            if type(segment) is TextSegment:
                for kind, piece in self._split(segment.text):
                    parts.append(kind(piece))
            elif type(segment) is LeakedCall:
                self._stray.clear()  # section tokens around a call belong to that leak
                kinds = [k for k, _ in self._split(segment.raw)]
                where = " and ".join(sorted({"reasoning" if k is ReasoningPart else "text"
                                             for k in kinds}))
                parts += self._leaked(segment, kinds[0] if kinds else TextPart, where)
            else:
                assert isinstance(segment, StrayMarker)
                self._split(segment.raw)
                self._stray.append(segment.raw)
        return parts

    def _split(self, text: str) -> list[tuple[TextKind, str]]:
        """Take ``len(text)`` characters off the runs: which channel each piece came from."""
        runs = self._runs
        n = len(text)
        first = runs[0]
        if first.left >= n:
            first.left -= n
            if first.left == 0 and len(runs) > 1:
                runs.popleft()
            return [(first.kind, text)]
        out: list[tuple[TextKind, str]] = []
        i = 0
        while i < n:
            run = runs[0]
            take = min(run.left, n - i)
            if take:
                out.append((run.kind, text[i:i + take]))
            run.left -= take
            i += take
            if run.left == 0 and len(runs) > 1:
                runs.popleft()
        return out

    def _note_stray(self) -> None:
        """Report markers that wrapped no call (a section end after calls does not count)."""
        raw = "".join(self._stray)
        self._stray.clear()
        if raw.strip() and not self._recovered:
            self.on_repair(Note("stray_marker", excerpt(raw), "removed"))
