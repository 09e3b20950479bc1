"""The status line: where the proxy listens, how to point opencode at it, what is shown."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import Static

from proxy_core.usage import UsageTotals, format_cost, format_tokens

from .palette import Palette


@dataclass
class StatusInfo:
    base_url: str
    source: str = ""
    live: int = 0
    stalled: int = 0
    turns: int = 0
    follow: bool = True
    filter: str = ""
    connected: bool = True
    banner: str = ""
    unhealthy: list[str] = field(default_factory=list)
    spans_dropped: int = 0  # OpenTelemetry spans lost (collector down, slow, queue full)
    journal_error: str = ""  # while the journal cannot write (disk full, read-only)
    journal_kept: int = 0    # turns kept in memory meanwhile
    journal_queued: int = 0  # writes waiting, when so many that turns wait for them
    bodies_waiting: int = 0  # requests waiting for room in `[proxy] max_inflight_mb`
    usage: UsageTotals | None = None    # over the turns shown
    session_usage: UsageTotals | None = None  # the selected turn's session


def usage_text(totals: UsageTotals) -> str:
    """`12.3k in / 1.2k out · $0.0123`: tokens, and the cost when prices were given."""
    cost = format_cost(totals.cost if totals.priced_turns else None)
    return (f"{format_tokens(totals.prompt_tokens)} in / "
            f"{format_tokens(totals.completion_tokens)} out" + (f" · {cost}" if cost else ""))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def status_text(info: StatusInfo, p: Palette) -> Text:
    """Two lines: address and counts; then the opencode hint and the source."""
    url = f"{info.base_url}/v1"
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(" switchboard ", style=f"bold reverse {p.primary}")
    text.append(" ")
    if info.connected:
        text.append(url, style=f"bold {p.text}")
    else:
        text.append(f"{url} (disconnected)", style=f"bold {p.error}")
    text.append("  │ ", style=p.muted)
    text.append(f"{info.live} live", style=p.primary if info.live else p.muted)
    if info.stalled:
        text.append(f" · {info.stalled} stalled", style=f"bold {p.error}")
    text.append(f" · {plural(info.turns, 'turn')}", style=p.muted)
    # Logs go to a file while the dashboard owns the screen: the journal says it here.
    if info.journal_error:
        kept = f", {plural(info.journal_kept, 'turn')} kept in memory" if info.journal_kept else ""
        text.append(f"  ⚠ journal NOT WRITING ({info.journal_error}{kept})",
                    style=f"bold {p.error}")
    elif info.journal_queued:
        text.append(f"  ⚠ journal behind: {info.journal_queued} writes queued, turns wait",
                    style=p.warn)
    if info.bodies_waiting:  # not turns yet: their bodies have not been read
        text.append(f"  ⏸ {plural(info.bodies_waiting, 'request')} waiting for room"
                    " (max_inflight_mb)", style=p.warn)
    if info.usage is not None and info.usage.total_tokens:
        text.append(f" · tokens {usage_text(info.usage)}", style=p.text)
        if info.session_usage is not None and info.session_usage.turns < info.usage.turns:
            text.append(f" (session {usage_text(info.session_usage)})", style=p.muted)
    if info.follow:
        text.append("  FOLLOW", style=f"bold {p.ok}")
    if info.filter:
        text.append(f"  filter: {info.filter}", style=f"bold {p.warn}")
    for target in info.unhealthy:
        text.append(f"  ⚠ {target} unhealthy", style=p.warn)
    if info.spans_dropped:
        text.append(f"  ⚠ {info.spans_dropped} spans not exported", style=p.warn)
    if info.banner:
        text.append(f"  │ {info.banner}", style=p.accent)
    text.append("\n")
    text.append(" opencode: ", style=p.muted)
    text.append(f'"baseURL": "{url}"', style=p.secondary)
    text.append("  (switchboard opencode-config prints the provider block)", style=p.muted)
    if info.source:
        text.append(f"  │ {info.source}", style=p.muted)
    return text


class StatusLine(Static):
    DEFAULT_CSS = """
    StatusLine { height: 2; width: 1fr; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    """
