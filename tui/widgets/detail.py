"""The selected turn: heartbeat, conversation with paired tool calls, attempts,
repairs with before/after, and the raw request and response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static, TabbedContent, TabPane

from proxy_core.contents import readable
from proxy_core.record import Turn
from proxy_core.usage import format_cost

from ..model import StallRule, TurnEntry, sparkline
from ..pairing import CallView, MessageView, conversation, counts
from .palette import Palette
from .turn_table import milliseconds, seconds, turn_state

#: Characters of one message shown in the conversation (the Request tab has all of it).
MESSAGE_CHARS = 600
SYSTEM_CHARS = 240
ARGUMENT_CHARS = 240
RESULT_CHARS = 300
#: Characters of raw JSON shown (the export key writes everything).
RAW_CHARS = 100_000

TABS = ("conversation", "attempts", "repairs", "request", "response")

Redact = Callable[[str], str]


def _same(text: str) -> str:
    return text


BADGES = {"paired": "✓ paired", "pending": "… pending", "orphaned": "✗ orphaned",
          "repaired": "✚ repaired"}


def clip(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [+{len(text) - limit:,} chars]"


def indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines()) if text else prefix


# -- heartbeat -----------------------------------------------------------------

def watchdog_deadline(entry: TurnEntry, first_output: bool) -> str:
    """' (deadline 6.0s, learned from 37 turns)': the deadline the silence runs
    against and why, from the core's heartbeat and the live attempt's record."""
    attempt = next((a for a in reversed(entry.turn.attempts) if a.outcome == "live"), None)
    seconds_ = entry.pulse.reported_deadline
    basis = ""
    if attempt is not None:
        if seconds_ is None:
            seconds_ = attempt.first_output_deadline if first_output else attempt.idle_deadline
        basis = attempt.first_output_basis if first_output else attempt.idle_basis
    if seconds_ is None:
        return ""
    return f" (deadline {seconds_:.1f}s" + (f", {basis})" if basis else ")")


def heartbeat_text(entry: TurnEntry | None, now: float, stall_after: StallRule, p: Palette) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    if entry is None:
        text.append(" no turn selected — turns appear here as clients send them", style=p.muted)
        return text
    turn, pulse = entry.turn, entry.pulse
    state = turn_state(entry, now, stall_after)
    target = turn.target or turn.route
    if state in ("live", "stalled"):
        since = pulse.since_last(now)
        nothing_yet = not pulse.output_seen and pulse.chunks == 0
        silence = (f"{since:.1f}s waiting for the first output" if nothing_yet
                   else f"{since:.1f}s since the last output")
        silence += watchdog_deadline(entry, nothing_yet)
        if state == "stalled":
            text.append(" ◌ STALLED ", style=f"bold reverse {p.error}")
            text.append(f" {silence} from {target} (attempt {pulse.attempt})",
                        style=f"bold {p.error}")
            text.append("  — the watchdog retries it; r retries now, R reroutes", style=p.muted)
        else:
            text.append(" ♥ streaming ", style=f"bold reverse {p.ok}")
            text.append(f" {silence}", style=p.ok)
            text.append(f" · attempt {pulse.attempt} → {target}", style=p.text)
        text.append("\n ")
        text.append(sparkline(pulse.series(now)), style=p.ok if state == "live" else p.error)
        text.append(f"  {pulse.rate(now):.1f} chunks/s · {pulse.chunks} chunks · "
                    f"{pulse.keepalives} keep-alives", style=p.muted)
        return text
    if state == "finished":
        text.append(" ✓ finished ", style=f"bold reverse {p.ok}")
        text.append(f" {turn.finish_reason or ''} in {seconds(turn.duration)}", style=p.ok)
    else:
        text.append(" ✗ failed ", style=f"bold reverse {p.error}")
        text.append(f" status {turn.status} after {len(turn.attempts)} attempt(s): "
                    f"{turn.error or ''}", style=p.error)
    ttfb = turn.ttfb
    chunks = max(pulse.chunks, sum(getattr(a, "chunks", 0) for a in turn.attempts))
    text.append("\n ")
    text.append(f"{target} · {len(turn.attempts)} attempt(s) · TTFB "
                f"{'—' if ttfb is None else f'{ttfb:.2f}s'} · {chunks} chunks · "
                f"{turn.usage.prompt_tokens}/{turn.usage.completion_tokens} tokens"
                f"{usage_extras(turn)}", style=p.muted)
    return text


def usage_extras(turn: Turn) -> str:
    """What the host said beyond in/out (cached, reasoning), and the cost, when known."""
    usage, extras = turn.usage, []
    if usage.cached_tokens:
        extras.append(f"{usage.cached_tokens} cached")
    if usage.reasoning_tokens:
        extras.append(f"{usage.reasoning_tokens} reasoning")
    text = f" ({', '.join(extras)})" if extras else ""
    return text + (f" · {format_cost(turn.cost)}" if turn.cost is not None else "")


# -- conversation ---------------------------------------------------------------

def _call_text(out: Text, call: CallView, p: Palette, r: Redact) -> None:
    colour = p.state(call.state)
    out.append("    ⚙ ", style=colour)
    out.append(call.name, style=f"bold {colour}")
    out.append(f"  {call.id}  ", style=p.muted)
    out.append(f"[{BADGES[call.state]}]", style=f"bold reverse {colour}")
    if call.note:
        out.append(f"  {call.note}", style=colour)
    out.append("\n")
    out.append(f"{indent(r(clip(call.arguments, ARGUMENT_CHARS)), '      ')}\n", style=p.text)
    if call.result is not None:
        out.append("      ↳ ", style=colour)
        out.append(f"{indent(r(clip(call.result, RESULT_CHARS)), '        ').lstrip()}\n",
                   style=p.muted)
    elif call.state == "pending":
        out.append("      ↳ no result yet\n", style=p.warn)


def conversation_text(views: list[MessageView], p: Palette, *, loaded: bool,
                      r: Redact = _same) -> Text:
    out = Text()
    tally = counts(views)
    out.append(" tool calls: ", style=p.muted)
    for state in ("paired", "pending", "orphaned", "repaired"):
        out.append(f"{BADGES[state]} {tally[state]}", style=p.state(state))
        out.append("   ")
    out.append("\n")
    if not loaded:
        out.append("\n loading the conversation from the journal…\n", style=p.muted)
    role_style = {"system": p.muted, "user": p.primary, "assistant": p.ok, "tool": p.secondary}
    for view in views:
        title = "response (this turn)" if view.response else view.role
        colour = role_style.get(view.role, p.text)
        out.append(f"\n── {title} ", style=f"bold {colour}")
        if view.state is not None:
            state_colour = p.state(view.state)
            out.append(f"{view.tool_call_id} ", style=p.muted)
            out.append(f"[{BADGES[view.state]}]", style=f"bold reverse {state_colour}")
            out.append(f"  {r(view.note)}", style=state_colour)
        elif view.note:
            out.append(view.note, style=p.warn)
        out.append("\n")
        if view.reasoning:
            out.append(f"{indent('thinking: ' + r(clip(view.reasoning, MESSAGE_CHARS)), '  ')}\n",
                       style=f"italic {p.muted}")
        if view.text:
            limit = SYSTEM_CHARS if view.role == "system" else MESSAGE_CHARS
            out.append(f"{indent(r(clip(view.text, limit)), '  ')}\n", style=p.text)
        for call in view.calls:
            _call_text(out, call, p, r)
    return out


# -- attempts, repairs, raw ---------------------------------------------------------

def attempts_text(turn: Turn, p: Palette, r: Redact = _same) -> Text:
    out = Text()
    origin = turn.rerun_of
    if origin:
        out.append(f" re-run of {origin}\n", style=p.accent)
    if not turn.attempts:
        out.append(" no attempt yet\n", style=p.muted)
    for a in turn.attempts:
        colour = {"ok": p.ok, "failed": p.error, "live": p.primary}.get(a.outcome, p.warn)
        out.append(f" #{a.number} ", style=f"bold {colour}")
        out.append(f"{a.target:<28}", style=p.text)
        out.append(f"{a.reason:<15}", style=p.warn if a.reason != "initial" else p.muted)
        out.append(f"+{a.started_at - turn.started_at:6.2f}s  ", style=p.muted)
        out.append(f"ours {milliseconds(a.prepared_in):>7}  ", style=p.muted)
        first = "—" if a.first_byte_at is None else f"{a.first_byte_at - a.started_at:.2f}s"
        out.append(f"first byte {first:>7}  ", style=p.muted)
        out.append(f"{a.outcome}", style=f"bold {colour}")
        if a.error:
            out.append(f"\n      {r(a.error)}", style=p.error)
        out.append("\n")
    return out


def repairs_text(turn: Turn, p: Palette, r: Redact = _same) -> Text:
    out = Text()
    if not turn.repairs:
        out.append(" no repairs: the host and the client got everything right\n", style=p.muted)
    for repair in turn.repairs:
        out.append(f" ✚ {repair.kind}", style=f"bold {p.accent}")
        out.append(f"  +{repair.at - turn.started_at:.2f}s\n", style=p.muted)
        out.append("    before: ", style=p.muted)
        out.append(f"{r(repair.before)}\n", style=p.error)
        out.append("    after:  ", style=p.muted)
        out.append(f"{r(repair.after)}\n", style=p.ok)
    return out


def response_dict(turn: Turn) -> dict[str, Any]:
    return {"id": turn.id, "state": turn.state, "finish_reason": turn.finish_reason,
            "text": turn.text, "reasoning": turn.reasoning,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments,
                            "upstream_id": c.upstream_id} for c in turn.tool_calls],
            "usage": {"prompt_tokens": turn.usage.prompt_tokens,
                      "completion_tokens": turn.usage.completion_tokens,
                      "total_tokens": turn.usage.total_tokens,
                      **{name: getattr(turn.usage, name) for name in
                         ("cached_tokens", "reasoning_tokens") if getattr(turn.usage, name)}},
            **({"cost": turn.cost} if turn.cost is not None else {}),
            "status": turn.status, "error": turn.error}


def raw_text(value: Any, p: Palette, *, loaded: bool = True, r: Redact = _same) -> Text:
    if not loaded:
        return Text(" loading the request from the journal…", style=p.muted)
    body = r(readable(value))
    if len(body) > RAW_CHARS:
        body = body[:RAW_CHARS] + f"\n… [+{len(body) - RAW_CHARS:,} chars: press e to export the turn]"
    return Text(body, style=p.text)


class TurnDetail(Vertical):
    """Heartbeat bar above tabs; only the visible tab is rendered."""

    DEFAULT_CSS = """
    TurnDetail { height: 1fr; }
    TurnDetail #heartbeat { height: 2; background: $surface; text-wrap: nowrap; text-overflow: ellipsis; }
    TurnDetail TabPane { padding: 0; }
    TurnDetail VerticalScroll { height: 1fr; }
    TurnDetail VerticalScroll:focus { background-tint: $foreground 5%; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="heartbeat")
        with TabbedContent(id="tabs", initial="tab-conversation"):
            for name in TABS:
                with TabPane(name.capitalize(), id=f"tab-{name}"):
                    with VerticalScroll(id=f"scroll-{name}"):
                        yield Static(id=f"body-{name}")

    def focus_body(self) -> None:
        """Focus the visible tab's scroll area (arrows and page keys scroll it)."""
        self.query_one(f"#scroll-{self.active_tab}", VerticalScroll).focus()

    @property
    def active_tab(self) -> str:
        active = self.query_one(TabbedContent).active or "tab-conversation"
        return active.removeprefix("tab-")

    def show_heartbeat(self, entry: TurnEntry | None, now: float, stall_after: StallRule,
                       p: Palette) -> None:
        self.query_one("#heartbeat", Static).update(heartbeat_text(entry, now, stall_after, p))

    def show_body(self, entry: TurnEntry | None, next_request: dict[str, Any] | None,
                  p: Palette, r: Redact = _same) -> None:
        tab = self.active_tab
        body = self.query_one(f"#body-{tab}", Static)
        if entry is None:
            body.update(Text(" select a turn", style=p.muted))
            return
        turn = entry.turn
        if tab == "conversation":
            body.update(conversation_text(conversation(turn, next_request), p, loaded=entry.full,
                                          r=r))
        elif tab == "attempts":
            body.update(attempts_text(turn, p, r))
        elif tab == "repairs":
            body.update(repairs_text(turn, p, r))
        elif tab == "request":
            body.update(raw_text(turn.request, p, loaded=entry.full, r=r))
        else:
            body.update(raw_text(response_dict(turn), p, r=r))
