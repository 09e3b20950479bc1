"""The host scoreboard: one row per upstream target, worst first, sortable.

It renders `proxy_core.scoreboard.Scoreboard` (the same fold the control API
serves); the app feeds the fold and calls `sync`, which rebuilds the few
rows only when the fold's version, the sort or the minute-scale status
changed. A status badge makes a host that just went bad obvious without
reading numbers.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from proxy_core.scoreboard import Scoreboard, TargetStats

from .palette import Palette
from .turn_table import milliseconds, tokens

#: (sort key, header)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("status", "status"), ("target", "target"), ("turns", "turns"), ("tool_turns", "tools"),
    ("leaks", "leaks"), ("history_repairs", "hist"), ("stalls", "stalls"),
    ("retries", "retry"), ("reroutes", "rerouted"), ("hedges", "hedged"), ("errors", "errors"),
    ("ttft_p50", "ttft p50"), ("ttft_p95", "p95"), ("prep_p50", "ours"), ("tokens_in", "tok in"),
    ("tokens_out", "tok out"),
)
SORT_KEYS = tuple(key for key, _ in COLUMNS)


def badge(status: str, cooling_for: float, p: Palette) -> Text:
    label, style = {
        "cooling": (f"❄ cooling {cooling_for:.0f}s", f"bold reverse {p.warn}"),
        "stalling": ("◌ STALLING", f"bold reverse {p.error}"),
        "failing": ("✗ failing", f"bold {p.error}"),
        "ok": ("● ok", p.ok),
        "idle": ("· idle", p.muted),
    }[status]
    return Text(label, style=style, no_wrap=True)


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}s"


def row(stats: TargetStats, now: float, p: Palette) -> tuple[Text | str, ...]:
    status = stats.status(now)
    cooling = max(0.0, stats.cooling_until - now) if stats.cooling_until else 0.0
    bad = status in ("cooling", "stalling", "failing")

    def hot(n: int, style: str) -> Text:
        return Text(str(n), style=style if n else p.muted)

    return (
        badge(status, cooling, p),
        Text(stats.target, style=f"bold {p.error}" if bad else p.text, no_wrap=True),
        str(stats.turns), str(stats.tool_turns),
        hot(stats.leaks, p.accent), hot(stats.history_repairs, p.accent),
        hot(stats.stalls, p.error), hot(stats.retries, p.warn), hot(stats.reroutes, p.warn),
        hot(stats.hedges, p.warn), hot(stats.errors, p.error),
        _seconds(stats.ttft_p50), _seconds(stats.ttft_p95), milliseconds(stats.prep_p50),
        tokens(stats.tokens_in), tokens(stats.tokens_out),
    )


class ScoreboardTable(DataTable[Text | str]):
    """Per-target stats; `s` (or a click on a header) sorts by the next column."""

    DEFAULT_CSS = """
    ScoreboardTable { height: auto; max-height: 10; }
    """
    BINDINGS = [
        Binding("s", "next_sort", "Sort", id="scoreboard-sort",
                tooltip="Sort the scoreboard by the next column"),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)  # type: ignore[arg-type]
        self.sort_key = "status"
        self._drawn: tuple[object, ...] | None = None

    def on_mount(self) -> None:
        self._add_headers()
        self.show_cursor = False  # a highlighted row only while the table has focus

    def on_focus(self) -> None:
        self.show_cursor = True

    def on_blur(self) -> None:
        self.show_cursor = False

    def _add_headers(self) -> None:
        self.clear(columns=True)
        for key, label in COLUMNS:
            self.add_column(f"{label}{' ▼' if key == self.sort_key else ''}", key=key)

    def sync(self, board: Scoreboard, now: float, palette: Palette, *, force: bool = False) -> None:
        rows = board.rows(self.sort_key, now=now)
        # Statuses age (failing → ok) without a new event: they are part of what is drawn.
        drawn = (board.version, self.sort_key, palette,
                 tuple(s.status(now) for s in rows),
                 tuple(int(s.cooling_until - now) if s.cooling_until else 0 for s in rows))
        if drawn == self._drawn and not force:
            return
        self._drawn = drawn
        cursor = self.cursor_row
        self.clear()
        for stats in rows:
            self.add_row(*row(stats, now, palette), key=stats.target)
        if rows:
            self.move_cursor(row=min(cursor, len(rows) - 1), animate=False)

    def set_sort(self, key: str) -> None:
        self.sort_key = key
        self._drawn = None
        self._add_headers()

    def action_next_sort(self) -> None:
        self.set_sort(SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)])
        self.post_message(self.SortChanged(self))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.set_sort(str(event.column_key.value))
        self.post_message(self.SortChanged(self))

    class SortChanged(Message):
        """The user picked another sort column: the app redraws the rows at once."""

        def __init__(self, table: ScoreboardTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> ScoreboardTable:
            return self.table
