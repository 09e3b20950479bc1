"""The Switchboard dashboard: every turn live, with keys to retry and reroute.

The app talks only to a `TurnSource` (`tui/source/`). Sources post
`EventsReady` a few times a second; the handler drains the source into the
`DashboardModel` and redraws only what changed, so a fast stream costs the
proxy a counter increment per chunk and the screen a steady ~12 redraws a
second. Workers (retry, reroute, loading records, exports) never touch
widgets: they post messages, and the `@on` handlers here own the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Footer, Input, OptionList, TabbedContent
from textual.worker import Worker, WorkerState

from proxy_core.contents import readable
from proxy_core.scoreboard import Scoreboard
from proxy_core.usage import UsageTotals

from .keymap import default_keymap_path, load_keymap
from .messages import (
    ActionFailed, EventsReady, Exported, HistoryLoaded, OlderLoaded, SourceStatus, TargetsLoaded,
    TurnActionDone, TurnLoaded,
)
from .model import FILTER_STATES, DashboardModel, TurnFilter
from .source import SourceError, TurnSource
from .themes import BUILTIN_THEMES_DIR, DEFAULT_THEME, load_themes, user_themes_dir
from .widgets.detail import TurnDetail
from .widgets.palette import Palette
from .widgets.scoreboard import ScoreboardTable
from .widgets.screens import HelpScreen, PickerScreen
from .widgets.sessions import ALL, SessionList
from .widgets.status import StatusInfo, StatusLine, status_text
from .widgets.turn_table import TurnTable, turn_state

#: Redraws per second at most (events are buffered in between).
REFRESH_RATE = 12.0
#: How often the selected turn's body and the session list are re-rendered at most
#: (the table, the heartbeat bar and the status line: every redraw).
DETAIL_INTERVAL = 0.25
#: Turns fetched per "older" request.
OLDER_PAGE = 100
#: Journal turns the scoreboard starts from.
SCOREBOARD_HISTORY = 1000
#: How often the status line's token and cost totals are summed again at most (seconds).
USAGE_INTERVAL = 1.0

FILTER_LABELS = {"all": "All turns", "live": "Live turns", "stalled": "Stalled (silent live streams)",
                 "repaired": "Repaired", "retried": "Retried or rerouted", "failed": "Failed"}


class SwitchboardApp(App[int]):
    """Sessions, a live table of turns, and the selected turn in detail."""

    TITLE = "Switchboard"
    #: The sidebar narrows below 100 columns, and shows session ids in full from 180
    #: (from 160 the turn table has room for session, model, target and attempt in full
    #: beside the normal sidebar, but not beside the wide one).
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]] | None] = [
        (0, "-narrow"), (100, "-normal"), (180, "-wide")]
    CSS = """
    #body { height: 1fr; }
    #sessions { border-right: vkey $panel-lighten-1; }
    #main { width: 1fr; }
    #turns { height: 2fr; }
    #scoreboard { border-top: hkey $panel-lighten-1; }
    #scoreboard.-hidden { display: none; }
    #detail { height: 3fr; border-top: hkey $panel-lighten-1; }
    Screen.-narrow #sessions { width: 20; }
    Screen.-wide #sessions { width: 38; }
    #sessions:focus { border-right: vkey $accent; }
    #detail:focus-within { border-top: hkey $accent; }
    #scoreboard:focus { border-top: hkey $accent; }
    #search { dock: bottom; display: none; }
    #search.-visible { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        # Help and quit first: the footer keeps them on an 80-column terminal.
        Binding("question_mark", "help", "Help", id="help", tooltip="Keys and legend"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Quit"),
        Binding("r", "retry", "Retry", id="retry", tooltip="Retry the selected turn"),
        Binding("R", "reroute", "Reroute", id="reroute",
                tooltip="Re-run the selected turn on another target"),
        Binding("F", "follow", "Follow", id="follow", tooltip="Follow the newest turn (toggle)"),
        Binding("f", "filter", "Filter", id="filter",
                tooltip="Filter: stalled, repaired, retried, failed, a session, a model"),
        Binding("slash", "search", "Search", id="search", tooltip="Search turns"),
        Binding("e", "export_turn", "Export", id="export-turn",
                tooltip="Write the selected turn to a JSON file"),
        Binding("E", "export_session", "Export session", id="export-session",
                tooltip="Write the selected turn's session to a JSON file"),
        Binding("x", "repro", "Repro", id="repro", show=False,
                tooltip="Write the selected turn as a repro fixture (switchboard replay FILE)"),
        Binding("c", "copy_url", "Copy URL", id="copy-url",
                tooltip="Copy the proxy's /v1 URL to the clipboard"),
        Binding("t", "next_theme", "Theme", id="theme", tooltip="Switch to the next theme"),
        Binding("o", "older", "Older", id="older",
                tooltip="Load older turns from the journal"),
        Binding("b", "toggle_scoreboard", "Hosts", id="scoreboard",
                tooltip="Show or hide the host scoreboard (per-target stats)"),
        Binding("escape", "clear", "Clear", id="clear", show=False,
                tooltip="Clear the search and filters"),
    ]

    def __init__(self, source: TurnSource, *, theme: str | None = None,
                 themes_dir: Path | None = None, keymap_path: Path | None = None,
                 export_dir: Path | None = None, clock: Callable[[], float] = time.time,
                 refresh_rate: float = REFRESH_RATE, max_turns: int = 500, banner: str = "",
                 follow: bool = True) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        self.refresh_rate = refresh_rate
        self.banner = banner
        self.follow = follow
        self.export_dir = export_dir or Path.cwd()
        self.keymap_path = keymap_path or default_keymap_path()
        self.themes_dir = themes_dir or user_themes_dir()
        self.model = DashboardModel(max_turns=max_turns, stall_after=source.stall_after)
        self.filter = TurnFilter()
        self.scoreboard = Scoreboard(clock=clock)
        self._board_at = 0.0
        self._board: ScoreboardTable | None = None
        self.selected_id: str | None = None
        self.connected = True
        self.keymap: dict[str, str] = {}
        self.notices: list[str] = []
        self._cursor_target: str | None = None
        self._pending_select: str | None = None
        self._loading: set[str] = set()
        self._body_at = 0.0
        self._body_id: str | None = None
        self._body_pending = False
        self.palette: Palette | None = None
        self._widgets: tuple[TurnTable, StatusLine, TurnDetail, SessionList] | None = None
        self._sessions_at = 0.0
        self._sessions_pending = False
        self._usage_cache: tuple[str | None, float, UsageTotals, UsageTotals | None] | None = None

        found = load_themes(BUILTIN_THEMES_DIR, self.themes_dir)
        for item in found.themes.values():
            self.register_theme(item)
        self.theme_names = list(found.themes)
        self.notices.extend(f"theme ignored: {problem}" for problem in found.problems)
        wanted = theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            fallback = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
            names = ", ".join(self.theme_names or sorted(self.available_themes))
            self.notices.append(f"theme {wanted!r} not found (available: {names}); using {fallback}")
            wanted = fallback
        self.theme = wanted

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with Horizontal(id="body"):
            yield SessionList(id="sessions")
            with Vertical(id="main"):
                yield TurnTable(id="turns")
                yield ScoreboardTable(id="scoreboard")
                yield TurnDetail(id="detail")
        yield Input(placeholder="search: id, session, model, target, tool, text…  (enter: keep, "
                                "escape: clear)", id="search")
        yield Footer()

    @property
    def table(self) -> TurnTable:
        return self._widgets[0] if self._widgets is not None else self.query_one("#turns", TurnTable)

    def _live_ui(self) -> bool:
        """Mounted and not shutting down (events can still arrive while the app exits)."""
        return self.palette is not None and self._widgets is not None \
            and self._widgets[0].is_attached

    async def on_mount(self) -> None:
        self._widgets = (self.table, self.query_one(StatusLine), self.query_one(TurnDetail),
                         self.query_one(SessionList))
        self._board = self.query_one("#scoreboard", ScoreboardTable)
        self.palette = Palette.from_app(self)
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        ids = {b.id for b in self._bindings_with_ids()}
        keymap, problems = load_keymap(self.keymap_path, ids)
        self.notices.extend(problems)
        if keymap:
            self.keymap = keymap
            self.set_keymap(keymap)
        for notice in self.notices:
            self._notify(notice, severity="warning", timeout=12)
        # The turn list has the keys from the start: j/k pressed while the source
        # starts move the selection, not the sessions list (the screen's first focus).
        self.table.focus()
        for turn in self.source.recent(self.model.max_turns):
            self.model.add(turn, full=bool(turn.request))
            self.scoreboard.count(turn)
        self._load_history()
        await self.source.start()
        self.source.connect(self, 1.0 / self.refresh_rate)
        self.set_interval(1.0, self._tick)
        self.redraw(force=True)

    def _bindings_with_ids(self) -> list[Binding]:
        return [b for b in Binding.make_bindings(self.BINDINGS) if b.id]

    def _theme_changed(self, _theme: object) -> None:
        self.palette = Palette.from_app(self)
        self.redraw(force=True)

    # -- drawing ----------------------------------------------------------------------------

    def redraw(self, *, force: bool = False) -> None:
        if not self._live_ui():
            return  # not mounted yet, or shutting down
        try:
            self._redraw(force)
        except NoMatches:
            # Every widget is composed once and stays while the app runs, so a missing
            # one means the teardown has begun pruning them (leaves first) while a last
            # batch of events is handled: there is nothing left to draw.
            return

    def _redraw(self, force: bool) -> None:
        assert self._widgets is not None and self.palette is not None
        table, _, _, sessions = self._widgets
        now = self.clock()
        palette, model = self.palette, self.model
        changed, _structure, sessions_changed = model.take_changes()
        visible = model.visible(self.filter, now)
        table.sync(visible, changed, now, model.stall_after, palette, force=force)
        if self._pending_select and self._pending_select in table.ids:
            self._select(self._pending_select)
            self._pending_select = None
        elif self.follow and table.ids:
            if self.selected_id != table.ids[-1] or table.selected_id != table.ids[-1]:
                self._select(table.ids[-1], immediate=False)
        elif self.selected_id in table.ids and table.selected_id != self.selected_id:
            self._select(self.selected_id)
        elif self.selected_id is None and table.ids:
            self._select(table.selected_id or table.ids[0])
        elif self.selected_id is not None and self.selected_id not in table.ids:
            # A filter or search hid it (or it was dropped): the nearest shown turn, or none.
            nearest = self.model.nearest(self.selected_id, table.ids)
            if nearest is not None:
                self._select(nearest)
            else:
                self._set_selected(None)
        moment = time.monotonic()
        self._sessions_pending |= sessions_changed
        if force or (self._sessions_pending and moment - self._sessions_at >= DETAIL_INTERVAL):
            sessions.sync(model.sessions, len(model), palette, force=force)
            self._sessions_pending, self._sessions_at = False, moment
        self._draw_status(now)
        self._draw_detail(now, force=force or self._body_pending or self.selected_id in changed)
        self._draw_scoreboard(now, force=force)

    def _draw_scoreboard(self, now: float, *, force: bool = False) -> None:
        """The few scoreboard rows, at most every `DETAIL_INTERVAL` (when shown)."""
        board = self._board
        if board is None or not board.display or not self._live_ui():
            return
        assert self.palette is not None
        moment = time.monotonic()
        if not force and moment - self._board_at < DETAIL_INTERVAL:
            return  # a later redraw (the 1 s tick at the latest) catches up
        self._board_at = moment
        board.sync(self.scoreboard, now, self.palette, force=force)

    def _draw_status(self, now: float) -> None:
        if not self._live_ui():
            return
        assert self._widgets is not None and self.palette is not None
        live = self.model.live()
        stalled = sum(1 for e in live if e.pulse.stalled(now, self.model.stall_after))
        unhealthy = [t for t, (ok, _, _) in self.model.upstream_health.items() if not ok]
        info = StatusInfo(base_url=self.source.base_url, source=self.source.describe(),
                          live=len(live), stalled=stalled, turns=len(self.model), follow=self.follow,
                          filter=self.filter.describe(), connected=self.connected,
                          banner=self.banner, unhealthy=unhealthy)
        health = self.source.health()
        telemetry, journal = health.get("telemetry") or {}, health.get("journal") or {}
        info.spans_dropped = int(telemetry.get("spans_dropped") or 0)
        if journal:
            info.journal_error = "" if journal.get("ok", True) else str(journal.get("error"))
            info.journal_kept = int(journal.get("unsaved_turns") or 0)
            info.journal_queued = int(journal.get("queued_writes") or 0) \
                if journal.get("behind") else 0
        info.bodies_waiting = int((health.get("request_bytes") or {}).get("waiting") or 0)
        info.usage, info.session_usage = self._usage_totals()
        self._widgets[1].update(status_text(info, self.palette))

    def _usage_totals(self) -> tuple[UsageTotals, UsageTotals | None]:
        """Tokens and cost over the turns shown, and the selected turn's session:
        summed at most every `USAGE_INTERVAL` seconds, not on every redraw."""
        moment = time.monotonic()
        cached = self._usage_cache
        if cached is not None and cached[0] == self.selected_id and \
                moment - cached[1] < USAGE_INTERVAL:
            return cached[2], cached[3]
        entry = self.model.get(self.selected_id) if self.selected_id else None
        session = entry.turn.session_id if entry is not None else None
        total, of_session = UsageTotals(), UsageTotals() if session is not None else None
        for item in self.model.entries.values():
            turn = item.turn
            usage = turn.usage
            for totals in (total, of_session if turn.session_id == session else None):
                if totals is None:
                    continue
                totals.turns += 1
                totals.prompt_tokens += usage.prompt_tokens
                totals.completion_tokens += usage.completion_tokens
                if turn.cost is not None:
                    totals.cost += turn.cost
                    totals.priced_turns += 1
        self._usage_cache = (self.selected_id, moment, total, of_session)
        return total, of_session

    def _draw_detail(self, now: float, *, force: bool, immediate: bool = False) -> None:
        """The heartbeat bar on every redraw; the tab's body (a whole conversation, maybe)
        when the turn changed, at most every `DETAIL_INTERVAL` unless the user asked."""
        if not self._live_ui():
            return
        assert self._widgets is not None and self.palette is not None
        detail = self._widgets[2]
        entry = self.model.get(self.selected_id) if self.selected_id else None
        detail.show_heartbeat(entry, now, self.model.stall_after, self.palette)
        moment = time.monotonic()
        if not (force or self._body_id != self.selected_id):
            return
        if not immediate and moment - self._body_at < DETAIL_INTERVAL:
            self._body_pending = True  # a later redraw (the 1 s tick at the latest) catches up
            return
        self._body_pending = False
        self._body_id, self._body_at = self.selected_id, moment
        if entry is not None and not entry.full:
            self._load(entry.turn.id)  # the conversation comes from the journal or the API
        following = self.model.next_in_session(entry.turn) if entry is not None else None
        next_entry = self.model.get(following.id) if following is not None else None
        next_request = following.request if next_entry is not None and next_entry.full else None
        detail.show_body(entry, next_request, self.palette, self.source.redact)

    def _tick(self) -> None:
        self.model.tick()
        self.redraw()

    # -- selection --------------------------------------------------------------------------------

    def select_turn(self, turn_id: str) -> bool:
        """Show `turn_id` (stops following the newest turn). False if it is not listed."""
        if turn_id not in self.table.ids:
            return False
        self.follow = False
        self._select(turn_id)
        self._draw_status(self.clock())
        return True

    def _select(self, turn_id: str, *, immediate: bool = True) -> None:
        table = self.table
        if table.selected_id != turn_id:
            self._cursor_target = turn_id
            table.select(turn_id)
        self._set_selected(turn_id, immediate=immediate)

    def _set_selected(self, turn_id: str | None, *, immediate: bool = True) -> None:
        if turn_id == self.selected_id:
            return
        self.selected_id = turn_id
        if self.palette is not None:
            self._draw_detail(self.clock(), force=True, immediate=immediate)

    def _load(self, turn_id: str) -> None:
        if turn_id not in self._loading:
            self._loading.add(turn_id)
            self._load_turn(turn_id)

    @on(TurnTable.RowHighlighted, "#turns")
    def _row_highlighted(self, message: TurnTable.RowHighlighted) -> None:
        table = self.table
        if message.cursor_row != table.cursor_row or message.turn_id != table.selected_id:
            return  # stale: the cursor moved on since
        key = message.turn_id
        if key == self._cursor_target:
            self._cursor_target = None
            return  # our own move: already selected
        if self.follow and table.ids and key != table.ids[-1]:
            self.follow = False  # the user moved away from the newest turn
            self._draw_status(self.clock())
        self._set_selected(key)

    @on(TurnTable.Opened, "#turns")
    def _turn_opened(self, message: TurnTable.Opened) -> None:
        if message.turn_id != self.selected_id:
            self.select_turn(message.turn_id)
        self.query_one(TurnDetail).focus_body()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self) -> None:
        if self.palette is not None:
            self._draw_detail(self.clock(), force=True, immediate=True)

    @on(OptionList.OptionSelected, "#sessions")
    def _session_chosen(self, message: OptionList.OptionSelected) -> None:
        session = None if message.option.id in (None, ALL) else message.option.id
        self._set_filter(TurnFilter(self.filter.state, session, self.filter.model, self.filter.search))
        if session is not None:
            self._load_older(session)
        self.table.focus()

    def _set_filter(self, flt: TurnFilter) -> None:
        self.filter = flt
        self.redraw()

    # -- source messages -------------------------------------------------------------------------------

    @on(EventsReady)
    def _events_ready(self) -> None:
        batch = self.source.drain()
        if batch.resync:
            self.model.resync(self.source.recent(self.model.max_turns))
        self.model.apply(batch, self.source.turn, self.clock())
        for event in batch.events:
            self.scoreboard.observe(event, self.source.turn)
        self.redraw()

    @on(SourceStatus)
    def _source_status(self, message: SourceStatus) -> None:
        if message.connected != self.connected:
            self._notify(message.detail or ("connected" if message.connected else "disconnected"),
                        severity="information" if message.connected else "warning")
        self.connected = message.connected
        self._draw_status(self.clock())

    @on(TurnLoaded)
    def _turn_loaded(self, message: TurnLoaded) -> None:
        self._loading.discard(message.turn.id)
        if message.turn.id in self.model.entries:
            self.model.add(message.turn, full=True)
        self.redraw()
        if message.turn.id == self.selected_id:
            self._draw_detail(self.clock(), force=True, immediate=True)

    @on(HistoryLoaded)
    def _history_loaded(self, message: HistoryLoaded) -> None:
        self.scoreboard.count_all(message.turns)
        self._draw_scoreboard(self.clock(), force=True)

    @on(ScoreboardTable.SortChanged, "#scoreboard")
    def _scoreboard_sorted(self, message: ScoreboardTable.SortChanged) -> None:
        self._notify(f"hosts sorted by {message.table.sort_key}", timeout=2)
        self._draw_scoreboard(self.clock(), force=True)

    @on(OlderLoaded)
    def _older_loaded(self, message: OlderLoaded) -> None:
        added = self.model.add_older(message.turns)
        self._notify(f"{added} older turn(s) from the journal" if added else "no older turns")
        self.redraw()

    @on(TurnActionDone)
    def _action_done(self, message: TurnActionDone) -> None:
        how = f"rerouted to {message.target}" if message.action == "reroute" else "retried"
        where = ("restarted in place" if message.turn_id == message.source_turn
                 else f"as {message.turn_id}")
        self._notify(f"{message.source_turn} {how}: {where}")
        self.follow = False
        self._pending_select = message.turn_id
        self.redraw()

    @on(ActionFailed)
    def _action_failed(self, message: ActionFailed) -> None:
        self._notify(f"{message.action} failed: {message.error}", severity="error", timeout=8)

    @on(TargetsLoaded)
    def _targets_loaded(self, message: TargetsLoaded) -> None:
        entry = self.model.get(message.turn_id)
        current = entry.turn.target if entry is not None else None
        if not message.targets:
            self._notify("no targets to reroute to", severity="warning")
            return
        choices = [(t, f"{t}  (current)" if t == current else t) for t in message.targets]
        turn_id = message.turn_id

        def chosen(target: str | None) -> None:
            if target:
                self._reroute(turn_id, target)

        self.push_screen(PickerScreen(f"Reroute {turn_id} to:", choices, highlight=current,
                                      picker_id="reroute-picker"), chosen)

    @on(Exported)
    def _exported(self, message: Exported) -> None:
        self._notify(f"{message.what} written to {message.path}")

    # -- workers (post messages, never touch widgets) ---------------------------------------------------
    # Each is a Textual `@work` worker that lets errors out: a failure takes one path, the
    # worker's ERROR state, which `_worker_failed` turns into `ActionFailed` (Harlequin's way).

    #: What the user is told failed, by worker name.
    FAILED_ACTIONS: ClassVar[dict[str, str]] = {
        "_load_turn": "load", "_load_older": "older", "_retry": "retry", "_targets": "reroute",
        "_reroute": "reroute", "_export": "export", "_repro": "repro",
        "_load_history": "scoreboard history"}

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR:
            action = self.FAILED_ACTIONS.get(event.worker.name, event.worker.name)
            self.post_message(ActionFailed(action, str(event.worker.error)))

    @work(group="load", exit_on_error=False)
    async def _load_turn(self, turn_id: str) -> None:
        turn = await self.source.load_turn(turn_id)
        if turn is not None:
            self.post_message(TurnLoaded(turn))

    @work(group="load", exit_on_error=False)
    async def _load_older(self, session: str | None) -> None:
        turns = await self.source.older(set(self.model.entries), OLDER_PAGE, session)
        self.post_message(OlderLoaded(turns))

    @work(group="load", exit_on_error=False)
    async def _load_history(self) -> None:
        """The journal's recent turns, for the scoreboard's counts."""
        self.post_message(HistoryLoaded(await self.source.older(set(), SCOREBOARD_HISTORY)))

    @work(group="actions", exit_on_error=False)
    async def _retry(self, turn_id: str) -> None:
        new_id = await self.source.retry(turn_id)
        self.post_message(TurnActionDone("retry", turn_id, new_id))

    @work(group="actions", exit_on_error=False)
    async def _targets(self, turn_id: str) -> None:
        self.post_message(TargetsLoaded(turn_id, await self.source.targets_for(turn_id)))

    @work(group="actions", exit_on_error=False)
    async def _reroute(self, turn_id: str, target: str) -> None:
        new_id = await self.source.reroute(turn_id, target)
        self.post_message(TurnActionDone("reroute", turn_id, new_id, target))

    @work(group="actions", exit_on_error=False)
    async def _export(self, what: str, key: str) -> None:
        if what == "turn":
            turn = await self.source.load_turn(key)
            if turn is None:
                raise SourceError(f"no turn {key!r}")
            data: dict[str, Any] = turn.to_dict()
            name = f"switchboard-{key}.json"
        else:
            data = await self.source.session_export(key)
            name = f"switchboard-session-{_safe(key)}.json"
        path = self.export_dir / name
        text = self.source.redact(readable(data))
        path.write_text(text + "\n", encoding="utf-8")
        self.post_message(Exported(what, str(path)))

    @work(group="actions", exit_on_error=False)
    async def _repro(self, turn_id: str) -> None:
        fixture = await self.source.repro(turn_id)
        path = self.export_dir / f"repro-{turn_id}.json"
        text = self.source.redact(readable(fixture, indent=1))
        path.write_text(text + "\n", encoding="utf-8")
        self.post_message(Exported("repro", f"{path} (switchboard replay {path.name})"))

    # -- actions ----------------------------------------------------------------------------------------

    def _require_selection(self) -> str | None:
        """The selected turn, if the table shows it: no action reaches a hidden turn."""
        if self.selected_id is None:
            self._notify("no turn selected", severity="warning")
            return None
        if self.selected_id not in self.table.ids:
            self._notify("the selected turn is not shown (filter or search)", severity="warning")
            return None
        return self.selected_id

    def action_retry(self) -> None:
        turn_id = self._require_selection()
        if turn_id:
            self._retry(turn_id)

    def action_reroute(self) -> None:
        turn_id = self._require_selection()
        if turn_id:
            self._targets(turn_id)

    def action_follow(self) -> None:
        self.follow = not self.follow
        self._notify("following the newest turn" if self.follow else "follow off", timeout=2)
        self.redraw()

    def action_filter(self) -> None:
        choices = [(f"state:{s}", FILTER_LABELS[s]) for s in FILTER_STATES]
        entry = self.model.get(self.selected_id) if self.selected_id else None
        if entry is not None:
            choices.append((f"session:{entry.turn.session_id}",
                            f"Session {entry.turn.session_id} (the selected turn's)"))
        choices += [(f"model:{m}", f"Model {m}") for m in self.model.models()]
        choices.append(("clear", "Clear all filters"))
        self.push_screen(PickerScreen("Show:", choices, highlight=f"state:{self.filter.state}",
                                      picker_id="filter-picker"), self._filter_chosen)

    def _filter_chosen(self, choice: str | None) -> None:
        if not choice:
            return
        f = self.filter
        kind, _, value = choice.partition(":")
        if kind == "state":
            self._set_filter(TurnFilter(value, f.session, f.model, f.search))
        elif kind == "session":
            self._set_filter(TurnFilter(f.state, value, f.model, f.search))
        elif kind == "model":
            self._set_filter(TurnFilter(f.state, f.session, value, f.search))
        else:
            self._set_filter(TurnFilter())

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.add_class("-visible")
        search.value = self.filter.search
        search.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, message: Input.Changed) -> None:
        f = self.filter
        self._set_filter(TurnFilter(f.state, f.session, f.model, message.value.strip()))

    @on(Input.Submitted, "#search")
    def _search_submitted(self) -> None:
        self.query_one("#search", Input).remove_class("-visible")
        self.table.focus()

    def action_clear(self) -> None:
        search = self.query_one("#search", Input)
        search.remove_class("-visible")
        search.value = ""
        self._set_filter(TurnFilter())
        self.table.focus()

    def action_export_turn(self) -> None:
        turn_id = self._require_selection()
        if turn_id:
            self._export("turn", turn_id)

    def action_export_session(self) -> None:
        turn_id = self._require_selection()
        entry = self.model.get(turn_id) if turn_id else None
        if entry is not None:
            self._export("session", entry.turn.session_id)

    def action_repro(self) -> None:
        turn_id = self._require_selection()
        if turn_id:
            self._repro(turn_id)

    def action_copy_url(self) -> None:
        url = f"{self.source.base_url}/v1"
        self.copy_to_clipboard(url)
        self._notify(f"copied {url}", timeout=3)

    def action_next_theme(self) -> None:
        names = self.theme_names or sorted(self.available_themes)
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        self._notify(f"theme: {self.theme}", timeout=2)

    def action_toggle_scoreboard(self) -> None:
        board = self.query_one("#scoreboard", ScoreboardTable)
        board.set_class(not board.has_class("-hidden"), "-hidden")
        if board.display:
            self._draw_scoreboard(self.clock(), force=True)
        elif board.has_focus:
            self.table.focus()

    def action_older(self) -> None:
        self._load_older(self.filter.session)

    def action_help(self) -> None:
        assert self.palette is not None
        keys = []
        for binding in self._bindings_with_ids():
            assert binding.id is not None
            shown = self.keymap.get(binding.id, binding.key)
            display = " ".join(self.get_key_display(Binding(k, binding.action))
                               for k in shown.split(","))
            description = binding.tooltip or binding.description
            if binding.id == "quit":
                description = ("Quit (stops the proxy)" if self.source.owns_proxy
                               else "Quit (the proxy keeps running)")
            keys.append((display, binding.id, description))
        notes = [
            f"Keymap: {self.keymap_path} (binding id = \"keys\", e.g. retry = \"ctrl+r\").",
            f"Themes: {', '.join(self.theme_names)}; your own in {self.themes_dir}/*.toml; "
            "start with --theme NAME.",
            f"Exports go to {self.export_dir}.",
            "Moving: arrows or j/k; Enter focuses the turn's detail; Tab moves between panels.",
            "Hosts (b): ◌ STALLING a stream on it is silent now; ✗ failing: it stalled or "
            "failed in the last minute; ❄ cooling: skipped for a while; s sorts. ours: "
            "Switchboard's own time before a request left (routing, repairs, encoding).",
            "Attempt column: #n and why (retry, reroute); * marks a retry or reroute by hand.",
            f"Stalled: a live stream silent for {self.model.stall_after.describe()} (half the "
            "watchdog's limit); the watchdog retries it on its own before any output reached "
            "the client, and r retries it now.",
        ]
        colours = {"primary": self.palette.primary, "muted": self.palette.muted,
                   "success": self.palette.ok, "warning": self.palette.warn,
                   "error": self.palette.error, "accent": self.palette.accent}
        self.push_screen(HelpScreen(keys, notes, colours))

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """The palette's screenshot goes where exports go (the current folder unless told),
        not to ~/Downloads, which may not exist."""
        folder = Path(path) if path else self.export_dir
        if not folder.is_dir():
            folder = Path.cwd()
        return super().deliver_screenshot(filename, str(folder), time_format)

    async def action_quit(self) -> None:
        self.exit(0)

    def _notify(self, message: str, *, severity: str = "information", timeout: float = 5) -> None:
        """A notification; never markup (paths, errors and ids may contain brackets)."""
        self.notify(message, severity=severity, timeout=timeout, markup=False)  # type: ignore[arg-type]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def visible_state(app: SwitchboardApp, turn_id: str) -> str | None:
    """The state a turn's row shows (for tests and scripts)."""
    entry = app.model.get(turn_id)
    return None if entry is None else turn_state(entry, app.clock(), app.model.stall_after)
