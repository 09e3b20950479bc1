"""The live table of turns: one row per turn, redrawn only where it changed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..model import StallRule, TurnEntry, sparkline
from .palette import Palette

@dataclass(frozen=True, slots=True)
class Column:
    """A column sizes to its widest cell, between `least` and `most` cells; when the
    terminal is too narrow, columns shrink to `least` and then the ones with the lowest
    `keep` give way first."""

    key: str
    label: str
    least: int
    most: int
    keep: int


COLUMNS: tuple[Column, ...] = (
    Column("time", "time", 8, 8, 2),
    Column("session", "session", 11, 34, 11),
    Column("model", "model", 9, 28, 5),
    Column("target", "target", 15, 36, 10),
    Column("attempt", "attempt", 9, 14, 7),
    Column("state", "state", 9, 9, 12),
    Column("beat", "heartbeat", 14, 14, 8),
    Column("stop", "stop", 8, 14, 6),
    Column("tools", "tool", 4, 4, 4),
    Column("repairs", "fix", 3, 3, 3),
    Column("tokens", "tokens", 9, 13, 1),
    Column("dur", "dur", 5, 6, 0),
)
#: Cells of padding around each column.
GAP = 2
#: Shown in full while anything else can give way (who, what and where of a turn).
IN_FULL = frozenset({"session", "model", "target"})
#: Columns kept less than this go before an `IN_FULL` column is cut short.
MINOR = 5


def layout(natural: Sequence[int], room: int) -> list[tuple[int, int]]:
    """(column index, width) of the columns shown in `room` cells.

    Every column at its natural width if they fit. If not, in this order until they do:
    the other wide columns shrink to their least width; the minor columns (duration,
    tokens, time, fixes, tools) go, least kept first; session, model and target
    shrink, widest first; then the least-kept columns go.
    """
    widths = [max(c.least, min(c.most, n)) for c, n in zip(COLUMNS, natural, strict=True)]
    shown = list(range(len(COLUMNS)))

    def over() -> int:
        return sum(widths[i] + GAP for i in shown) - room

    def shrink(which: Callable[[Column], bool]) -> None:
        while over() > 0:
            wide = [i for i in shown if which(COLUMNS[i]) and widths[i] > COLUMNS[i].least]
            if not wide:
                return
            widest = max(wide, key=lambda i: widths[i] - COLUMNS[i].least)
            widths[widest] -= min(over(), widths[widest] - COLUMNS[widest].least)

    def drop(which: Callable[[Column], bool]) -> None:
        while over() > 0 and len(shown) > 1:
            minor = [i for i in shown if which(COLUMNS[i])]
            if not minor:
                return
            shown.remove(min(minor, key=lambda i: COLUMNS[i].keep))

    wanted = widths[:]
    shrink(lambda c: c.key not in IN_FULL)
    drop(lambda c: c.keep < MINOR)
    shrink(lambda c: True)
    drop(lambda c: True)
    for i in sorted(shown, key=lambda i: -COLUMNS[i].keep):  # room left after a drop: give back
        widths[i] += max(0, min(-over(), wanted[i] - widths[i]))
    return [(i, widths[i]) for i in shown]

Cell = tuple[str, str]  # (text, style)


def short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def tokens(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f}s"
    if value < 600:
        return f"{value:.0f}s"
    return f"{value / 60:.0f}m"


def milliseconds(value: float | None) -> str:
    """Switchboard's own time (`Attempt.prepared_in`): under a millisecond to a few."""
    return "—" if value is None else f"{value * 1000:.1f}ms"


def clock_time(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def turn_state(entry: TurnEntry, now: float, stall_after: StallRule) -> str:
    """live | stalled | finished | failed"""
    state = entry.turn.state
    if state == "live" and entry.pulse.stalled(now, stall_after):
        return "stalled"
    return state


def row_cells(entry: TurnEntry, now: float, stall_after: StallRule, p: Palette) -> tuple[Cell, ...]:
    turn, pulse = entry.turn, entry.pulse
    state = turn_state(entry, now, stall_after)
    attempts = turn.attempts
    last = attempts[-1] if attempts else None
    if last is None:
        attempt: Cell = ("—", p.muted)
    else:
        reason = {"initial": "", "manual-retry": "retry*", "manual-reroute": "reroute*"}.get(
            last.reason, last.reason)
        attempt = (f"#{last.number} {reason}".strip(), p.warn if last.number > 1 else p.muted)
    if turn.rerun_of:  # a re-run by hand of an earlier turn
        attempt = (attempt[0], p.accent)
    state_cell = {"live": ("● live", p.primary), "stalled": ("◌ STALLED", f"bold {p.error}"),
                  "finished": ("✓ done", p.ok), "failed": ("✗ failed", p.error)}[state]
    if turn.state == "live":
        since = pulse.since_last(now)
        if state == "stalled":
            beat: Cell = (f"{seconds(since)} silent", f"bold {p.error}")
        else:
            beat = (f"{seconds(since):>5} {sparkline(pulse.series(now, 8))}", p.ok)
    else:
        beat = ("", p.muted)
    if turn.state == "failed":
        stop: Cell = (f"error {turn.status}", p.error)
    else:
        stop = (turn.finish_reason or "", p.ok if turn.finish_reason == "stop" else p.text)
    usage = turn.usage
    tok = f"{tokens(usage.prompt_tokens)}/{tokens(usage.completion_tokens)}" if (
        usage.prompt_tokens or usage.completion_tokens) else (
        f"~{pulse.chunks}ch" if pulse.chunks else "")
    end = turn.finished_at if turn.finished_at is not None else now
    repairs = len(turn.repairs)
    return (
        (clock_time(turn.started_at), p.muted),
        (turn.session_id, p.secondary),
        (turn.model, p.text),
        (turn.target or turn.route, p.text),
        attempt,
        state_cell,
        beat,
        stop,
        (str(len(turn.tool_calls)) if turn.tool_calls else "", p.text),
        (str(repairs) if repairs else "", p.accent),
        (tok, p.muted),
        (seconds(max(0.0, end - turn.started_at)), p.muted),
    )


def fit(text: str, width: int) -> str:
    """`text` cropped (with an ellipsis) or padded to exactly `width` cells."""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width)




class TurnTable(ScrollView, can_focus=True):
    """A table of turns drawn with the Line API: each row is rendered to a `Strip` once,
    when it changes, and a frame only crops cached strips. (A DataTable re-renders every
    visible cell through Rich on every change, which a proxy sharing the loop can't afford.)

    Rows in start order; `sync` adds, removes and updates rows. The header stays put.
    """

    COMPONENT_CLASSES = {"turn-table--header", "turn-table--cursor"}
    DEFAULT_CSS = """
    TurnTable { height: 1fr; scrollbar-gutter: stable; }
    TurnTable > .turn-table--header { background: $panel; color: $foreground; text-style: bold; }
    TurnTable > .turn-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground; text-style: bold;
    }
    TurnTable:focus > .turn-table--header { background: $accent-muted; }
    TurnTable:blur > .turn-table--cursor {
        background: $block-cursor-blurred-background; color: $block-cursor-blurred-foreground;
        text-style: $block-cursor-blurred-text-style;
    }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("k", "cursor(-1)", "Up", show=False),
        Binding("j", "cursor(1)", "Down", show=False),
        Binding("enter", "open", "Open", show=False, tooltip="Focus the turn's detail"),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("right", "scroll_right", "Right", show=False),
    ]

    class RowHighlighted(Message):
        """The cursor moved to a row (by key, click or `move_cursor`)."""

        def __init__(self, table: TurnTable, cursor_row: int, turn_id: str) -> None:
            super().__init__()
            self.table = table
            self.cursor_row = cursor_row
            self.turn_id = turn_id

        @property
        def control(self) -> TurnTable:
            return self.table

    class Opened(Message):
        """Enter on a row: the user wants the turn's detail."""

        def __init__(self, table: TurnTable, turn_id: str) -> None:
            super().__init__()
            self.table = table
            self.turn_id = turn_id

        @property
        def control(self) -> TurnTable:
            return self.table

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.ids: list[str] = []
        self.cursor_row = 0
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self._strips: dict[str, Strip] = {}
        self._styles: dict[str, Style] = {}
        self._header: Strip | None = None
        #: The widest cell seen per column (for sizing), and the columns shown now.
        self._natural = [len(c.label) for c in COLUMNS]
        self._layout: list[tuple[int, int]] = []
        self._row_width = 0

    # -- data ----------------------------------------------------------------------

    def sync(self, entries: Sequence[TurnEntry], changed: set[str], now: float,
             stall_after: StallRule, palette: Palette, *, force: bool = False) -> bool:
        """Bring the rows in line with `entries`; returns whether rows were added or removed."""
        if force:
            self._cells.clear()
            self._strips.clear()
            self._styles.clear()
            self._header = None
            self._natural = [len(c.label) for c in COLUMNS]
        ids = [e.turn.id for e in entries]
        dirty = force
        natural = self._natural
        grew = False
        for entry in entries:
            turn_id = entry.turn.id
            if turn_id in changed or turn_id not in self._cells:
                cells = row_cells(entry, now, stall_after, palette)
                if cells != self._cells.get(turn_id):
                    self._cells[turn_id] = cells
                    self._strips.pop(turn_id, None)
                    dirty = True
                    for index, (text, _) in enumerate(cells):
                        if len(text) > natural[index]:
                            natural[index] = max(natural[index], cell_len(text))
                            grew = True
        if grew or force or not self._layout:
            self._relayout()
        if ids == self.ids:
            if dirty:
                self.refresh()
            return False
        selected = self.selected_id
        wanted = set(ids)
        for turn_id in self.ids:
            if turn_id not in wanted:
                self._cells.pop(turn_id, None)
                self._strips.pop(turn_id, None)
        self.ids = ids
        if selected in wanted:
            self.cursor_row = ids.index(selected)
        self.cursor_row = max(0, min(self.cursor_row, len(ids) - 1))
        self.virtual_size = Size(self._row_width, len(ids) + 1)
        self.refresh()
        return True

    def _relayout(self) -> None:
        """Size the columns to their content and the width there is; redraw if it changed."""
        room = self.scrollable_content_region.width or 80
        columns = layout(self._natural, room)
        if columns == self._layout:
            return
        self._layout = columns
        self._row_width = sum(width + GAP for _, width in columns)
        self._strips.clear()
        self._header = None
        self.virtual_size = Size(self._row_width, len(self.ids) + 1)
        self.refresh()

    def on_resize(self) -> None:
        self._relayout()
        self._scroll_to_cursor()  # the selected row stays in sight when the table shrinks

    @property
    def shown_columns(self) -> list[str]:
        """The keys of the columns shown now (the rest gave way to a narrow terminal)."""
        return [COLUMNS[i].key for i, _ in self._layout]

    @property
    def selected_id(self) -> str | None:
        if not self.ids or not 0 <= self.cursor_row < len(self.ids):
            return None
        return self.ids[self.cursor_row]

    def select(self, turn_id: str) -> bool:
        if turn_id not in self.ids:
            return False
        self.move_cursor(self.ids.index(turn_id))
        return True

    def move_cursor(self, row: int) -> None:
        if not self.ids:
            return
        self.cursor_row = max(0, min(row, len(self.ids) - 1))
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.RowHighlighted(self, self.cursor_row, self.ids[self.cursor_row]))

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False, immediate=True)

    # -- keys and mouse -------------------------------------------------------------

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step)

    def action_open(self) -> None:
        turn_id = self.selected_id
        if turn_id is not None:
            self.post_message(self.Opened(self, turn_id))

    def action_page(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step * max(1, self.scrollable_content_region.height - 2))

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self.ids) - 1)

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and offset.y >= 1:
            row = int(self.scroll_y) + offset.y - 1
            if row < len(self.ids):
                self.move_cursor(row)

    # -- drawing --------------------------------------------------------------------

    def _style(self, spec: str) -> Style:
        style = self._styles.get(spec)
        if style is None:
            style = self._styles[spec] = self.rich_style + Style.parse(spec) if spec else self.rich_style
        return style

    def _row_strip(self, turn_id: str) -> Strip:
        strip = self._strips.get(turn_id)
        if strip is None:
            cells = self._cells[turn_id]
            segments = []
            for index, width in self._layout:
                text, style = cells[index]
                segments.append(Segment(f" {fit(text, width)} ", self._style(style)))
            strip = self._strips[turn_id] = Strip(segments, self._row_width)
        return strip

    def _header_strip(self) -> Strip:
        if self._header is None:
            style = self.get_component_rich_style("turn-table--header")
            label = "".join(f" {fit(COLUMNS[i].label, width)} " for i, width in self._layout)
            self._header = Strip([Segment(label, style)], self._row_width)
        return self._header

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._styles.clear()
        self._header = None

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            strip = self._header_strip()
        else:
            index = scroll_y + y - 1
            if index >= len(self.ids):
                return Strip.blank(width, self.rich_style)
            strip = self._row_strip(self.ids[index])
            if index == self.cursor_row:
                # Over the cells' own colours and background: the whole row shows the cursor.
                cursor = self.get_component_rich_style("turn-table--cursor")
                strip = Strip(Segment.apply_style(strip, post_style=cursor), strip.cell_length)
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)
