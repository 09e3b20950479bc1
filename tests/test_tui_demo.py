"""`switchboard demo`: live sessions within 10 s of start; leaks repaired, stalls retried
and reroutes within a minute.

One run drives the installed `switchboard demo` in a pseudo-terminal,
with fresh config and data folders, as a new user would; the other runs the
same demo (built-in config, scripted agent) under Pilot and reads what the
dashboard holds and shows.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from proxy_core.app import SwitchboardProxy
from terminal_support import SWITCHBOARD, Terminal, app_env
from tui.app import SwitchboardApp
from tui.demo import DemoAgent, demo_config
from tui.source import LocalSource
from tui_support import screen_text, wait_for



def test_demo_in_a_terminal_shows_live_sessions_within_10_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    terminal = Terminal([str(SWITCHBOARD), "demo", "--port", "0"], cwd=tmp_path,
                        env=app_env(tmp_path), width=180, height=50)
    try:
        screen = terminal.wait_for(
            lambda s: len(set(re.findall(r"ses_demo_\w+", s))) >= 3 and "● live" in s,
            timeout=10, what="live demo sessions")
        elapsed = time.monotonic() - started
        assert elapsed < 10, elapsed
        assert re.search(r"switchboard\s+http://127\.0\.0\.1:\d+/v1", screen)
        assert "demo: a scripted agent" in screen and "Retry" in screen  # status line, footer
        terminal.send("q")
        assert terminal.wait_exit(timeout=15) == 0  # a clean exit
    finally:
        terminal.close()


async def test_demo_shows_leaks_repaired_stalls_retried_and_reroutes_within_a_minute(
        tmp_path: Path) -> None:
    proxy = SwitchboardProxy(demo_config(tmp_path / "journal.sqlite3"), port=0)
    await proxy.start()
    source = LocalSource(proxy)
    agent = DemoAgent(proxy.base_url)
    app = SwitchboardApp(source, themes_dir=tmp_path / "themes",
                         keymap_path=tmp_path / "keymap.toml", export_dir=tmp_path)
    seen: set[str] = set()

    def look() -> bool:
        text = screen_text(app)
        for label, pattern in (("retry", r"#\d retry"), ("reroute", r"#\d reroute"),
                               ("stalled", r"◌ STALLED"), ("live", r"● live")):
            if re.search(pattern, text):
                seen.add(label)
        kinds = {r.kind for e in app.model.entries.values() for r in e.turn.repairs}
        if "leaked_tool_call" in kinds:
            seen.add("leak repaired")
        return {"retry", "reroute", "stalled", "live", "leak repaired"} <= seen

    try:
        async with app.run_test(size=(180, 50)) as pilot:
            started = time.monotonic()
            agent.start()
            await wait_for(pilot, lambda: len(app.model.sessions) >= 4, timeout=10,
                           what="four demo sessions")
            await wait_for(pilot, look, timeout=60, what=f"the demo's faults (seen {seen})")
            assert time.monotonic() - started < 60
            # Filter to repaired turns, open the newest one's repairs: the leak is there.
            app.filter = app.filter.__class__("repaired")
            app.follow = True
            await pilot.press("slash", *"leaked", "enter")
            await wait_for(pilot, lambda: app.table.ids and all(
                any(r.kind == "leaked_tool_call" for r in app.model.get(i).turn.repairs)
                for i in app.table.ids), what="only leak-repaired turns")
            app.query_one("#tabs").active = "tab-repairs"
            await wait_for(pilot, lambda: "leaked_tool_call" in screen_text(app)
                           and "before:" in screen_text(app), what="the repair's before/after")
            # The agent keeps working while the person looks (a condition, not a count
            # that depends on how fast the faults above showed up).
            await wait_for(pilot, lambda: agent.turns_sent >= 10, timeout=60,
                           what="ten demo turns")
    finally:
        await agent.stop()
        await source.stop()
        await proxy.stop()
