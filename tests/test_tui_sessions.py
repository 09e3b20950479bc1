"""Sessions as opencode sees them: subagent sessions listed under their parent."""

from __future__ import annotations

from pathlib import Path

from proxy_core.events import TurnStarted
from proxy_core.record import Turn
from tui.app import SwitchboardApp
from tui.model import SessionInfo
from tui.source import StaticSource
from tui.widgets.sessions import SessionList, session_order
from tui_support import screen_text, wait_for


def test_session_order_puts_subagents_under_their_parent() -> None:
    sessions = {sid: SessionInfo(sid, parent=parent) for sid, parent in [
        ("ses_main", None), ("ses_other", None), ("ses_sub1", "ses_main"),
        ("ses_subsub", "ses_sub1"), ("ses_orphan", "ses_gone"), ("ses_loop_a", "ses_loop_b"),
        ("ses_loop_b", "ses_loop_a")]}
    assert session_order(sessions) == [
        ("ses_main", 0), ("ses_sub1", 1), ("ses_subsub", 2), ("ses_other", 0),
        ("ses_orphan", 0), ("ses_loop_a", 0), ("ses_loop_b", 1)]


async def test_the_sidebar_groups_a_subagent_under_its_parent_as_turns_arrive(
        tmp_path: Path) -> None:
    def turn(n: int, session: str, parent: str | None = None) -> Turn:
        return Turn(id=f"turn_{n}", session_id=session, model="k2", route="k2", stream=True,
                    request={}, started_at=1000.0 + n, state="finished", finished_at=1001.0 + n,
                    parent_session_id=parent)

    source = StaticSource([turn(1, "ses_parent_2b3c4d5e6f7a8b9c"), turn(2, "ses_other")])
    app = SwitchboardApp(source, clock=lambda: 1100.0, themes_dir=tmp_path / "t",
                         keymap_path=tmp_path / "k.toml", export_dir=tmp_path)
    async with app.run_test(size=(190, 40)) as pilot:  # the wide sidebar: ids in full
        sessions = app.query_one(SessionList)
        await wait_for(pilot, lambda: sessions.option_count == 3, what="two sessions")
        subagent = turn(3, "ses_child_9f8e7d6c", parent="ses_parent_2b3c4d5e6f7a8b9c")
        source.add(subagent)
        source.feed([TurnStarted(turn_id="turn_3", at=1003.0, session_id="ses_child_9f8e7d6c",
                                 model="k2", route="k2", stream=True,
                                 parent_session_id="ses_parent_2b3c4d5e6f7a8b9c")])
        await wait_for(pilot, lambda: sessions.option_count == 4, what="the subagent session")
        ids = [sessions.get_option_at_index(i).id for i in range(4)]
        assert ids[1:] == ["ses_parent_2b3c4d5e6f7a8b9c", "ses_child_9f8e7d6c", "ses_other"]
        text = await wait_for(pilot, lambda: "└ ● " not in screen_text(app)
                              and "└   ses_child_9f8e7d6c" in screen_text(app)
                              and screen_text(app), what="the subagent drawn indented")
        assert "ses_parent_2b3c4d5e6f7a8b9c" in text  # in full on a wide terminal, one line
