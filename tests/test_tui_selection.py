"""Selection you can trust: a filter or search that hides the selected turn moves the
selection to the nearest shown turn (or clears it), the detail follows, and no action
reaches a hidden turn; j/k move like the arrows; Enter focuses the turn's detail."""

from __future__ import annotations

import json
from pathlib import Path

from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Static

from tui.app import SwitchboardApp
from tui.messages import Exported
from tui.source import StaticSource
from tui_records import NOW, history
from tui_support import wait_for

SIZE = (160, 45)
ALPHA_3, BETA_4, ALPHA_5 = "turn_fixed000000003", "turn_fixed000000004", "turn_fixed000000005"


def make_app(tmp_path: Path) -> SwitchboardApp:
    return SwitchboardApp(StaticSource(history()), clock=lambda: NOW,
                          themes_dir=tmp_path / "themes", keymap_path=tmp_path / "keymap.toml",
                          export_dir=tmp_path)


def heartbeat(app: SwitchboardApp) -> str:
    return str(app.query_one("#heartbeat", Static).render())


def notices(messages: list[Message]) -> list[str]:
    return [m.notification.message for m in messages if isinstance(m, Notify)]


async def test_a_search_that_hides_the_selection_moves_it_and_actions_never_reach_hidden_turns(
        tmp_path: Path) -> None:
    app = make_app(tmp_path)
    messages: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: len(app.table.ids) == 6, what="six turns")
        assert app.select_turn(BETA_4)
        await pilot.press("slash", *"ses_alpha", "enter")
        # ses_beta's turn is hidden: the nearest shown turn (ses_alpha's #3) is selected,
        # in the table and in the detail.
        await wait_for(pilot, lambda: app.selected_id == ALPHA_3, what="the nearest alpha turn")
        assert BETA_4 not in app.table.ids and app.table.selected_id == ALPHA_3
        await wait_for(pilot, lambda: "2 attempt(s)" in heartbeat(app), what="the detail follows")
        await pilot.press("e")
        await wait_for(pilot, lambda: any(isinstance(m, Exported) for m in messages),
                       what="an export")
        written = [Path(m.path) for m in messages if isinstance(m, Exported)]
        assert [json.loads(p.read_text())["id"] for p in written] == [ALPHA_3]
        # A search nothing matches: no selection, and the keys say so instead of acting.
        await pilot.press("slash", "ctrl+u", *"nothing-matches", "enter")
        await wait_for(pilot, lambda: app.selected_id is None, what="the selection cleared")
        assert "no turn selected" in heartbeat(app)
        await pilot.press("e", "r", "E")
        await wait_for(pilot, lambda: notices(messages).count("no turn selected") == 3,
                       what="three refusals")
        assert sum(isinstance(m, Exported) for m in messages) == 1
        # Clearing the search keeps the cursor where the user can see it.
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(app.table.ids) == 6 and app.selected_id is not None,
                       what="all turns, one selected")
        assert app.table.selected_id == app.selected_id


async def test_a_filter_that_hides_the_selection_moves_it_to_a_shown_turn(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.table.ids) == 6, what="six turns")
        assert app.select_turn(ALPHA_5)
        await pilot.press("f")
        await pilot.press(*["down"] * 5, "enter")  # all, live, stalled, repaired, retried, failed
        await wait_for(pilot, lambda: app.table.ids == ["turn_fixed000000009"],
                       what="only the failed turn")
        await wait_for(pilot, lambda: app.selected_id == "turn_fixed000000009",
                       what="the failed turn selected")
        assert "failed" in heartbeat(app)


async def test_j_and_k_move_like_the_arrows_and_enter_focuses_the_detail(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.selected_id == ALPHA_5 and app.focused is app.table,
                       what="the newest turn, in the focused turn list")
        await pilot.press("k")
        await wait_for(pilot, lambda: app.selected_id == "turn_fixed000000009", what="k: up")
        await pilot.press("k", "k")
        await wait_for(pilot, lambda: app.selected_id == ALPHA_3, what="k k: up twice")
        await pilot.press("j")
        await wait_for(pilot, lambda: app.selected_id == BETA_4, what="j: down")
        await pilot.press("up", "down")
        await wait_for(pilot, lambda: app.selected_id == BETA_4, what="arrows agree")
        assert not app.follow
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.focused is not None
                       and app.focused.id == "scroll-conversation", what="the detail focused")
        detail = app.query_one("#detail")
        assert detail.has_pseudo_class("focus-within") and app.selected_id == BETA_4
        await pilot.press("shift+tab")  # back out of the detail
        await wait_for(pilot, lambda: app.focused is not None and app.focused.id != "scroll-conversation",
                       what="focus moved on")
