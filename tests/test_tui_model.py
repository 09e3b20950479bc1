"""The dashboard's plain parts: tool-call pairing, heartbeats, the bounded model,
filters, records from JSON, themes and keymaps (no Textual app running)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy_core.events import (
    AttemptStarted, Chunk, Heartbeat, RepairApplied, StreamHeartbeat, TurnFailed, TurnFinished,
    TurnStarted, UpstreamHealthChanged,
)
from proxy_core.record import Turn
from tui.keymap import load_keymap
from tui.model import (
    Batch, ChunkTally, DashboardModel, ForeignEvent, Pulse, StallRule, TurnFilter, sparkline,
)
from tui.pairing import conversation, counts
from tui.source import StaticSource, parse_event
from tui.themes import BUILTIN_THEMES_DIR, ThemeError, load_themes, parse_theme
from tui_records import NOW, history, paired_and_orphaned


def test_pairing_marks_paired_pending_orphaned_and_repaired_calls() -> None:
    views = conversation(paired_and_orphaned())
    calls = {c.id: c for v in views for c in v.calls}
    assert calls["call_write01"].state == "paired"
    assert calls["call_write01"].result == "Wrote file successfully."
    assert calls["call_read03"].state == "repaired"          # unanswered: placeholder added
    assert calls["call_bash04"].state == "repaired"          # recovered from leaked tokens
    assert "leaked" in calls["call_bash04"].note
    results = {v.tool_call_id: v for v in views if v.role == "tool"}
    assert results["call_ghost99"].state == "orphaned"
    assert "context text" in results["call_ghost99"].note
    assert results["call_lost02"].state == "repaired"
    assert "restored from memory" in results["call_lost02"].note
    assert views[-1].response and views[-1].text == "Running the tests next."
    assert counts(views) == {"paired": 1, "pending": 0, "orphaned": 1, "repaired": 3}


def test_a_response_call_is_pending_until_the_next_request_answers_it() -> None:
    turn = history()[1]
    (call,) = turn.tool_calls
    assert conversation(turn)[-1].calls[0].state == "pending"
    following = {"messages": [{"role": "tool", "tool_call_id": call.id, "content": "a.py b.py"}]}
    paired = conversation(turn, following)[-1].calls[0]
    assert paired.state == "paired" and paired.result == "a.py b.py"


def test_text_past_the_record_limit_is_counted_and_shown_as_not_recorded() -> None:
    from tui.widgets.detail import conversation_text
    from tui.widgets.palette import Palette
    turn = history()[1]
    turn.text_parts, turn.reasoning_parts, turn.kept_chars = [], [], 0
    turn.append_reasoning("r" * 6, limit=10)
    turn.append_text("abc", limit=10)
    turn.append_text("defgh", limit=10)   # straddles the limit: its head is kept
    turn.append_reasoning("more", limit=10)
    turn.append_text("ijk", limit=10)
    assert (turn.reasoning, turn.text, turn.unrecorded_chars) == ("r" * 6, "abcd", 4 + 4 + 3)
    again = Turn.from_dict(turn.to_dict())
    assert (again.text, again.unrecorded_chars, again.kept_chars) == ("abcd", 11, 10)
    assert "kept_chars" not in turn.to_dict()
    response = conversation(again)[-1]
    assert response.response and "11 more characters" in response.note
    shown = conversation_text([response], Palette(*(["#ffffff"] * 8)), loaded=True).plain
    assert "not recorded" in shown


def test_pulse_derives_rate_silence_and_stall_from_chunks() -> None:
    pulse = Pulse(started_at=NOW - 10)
    rule = StallRule(first_token=4.0, idle=2.0)
    assert pulse.stalled(NOW - 5, rule) and not pulse.output_seen  # 5 s without first output
    for i in range(30):
        pulse.progress(NOW - 3 + i * 0.1, 1)  # 30 chunks over 3 s, the last at NOW - 0.1
    assert pulse.chunks == 30 and not pulse.stalled(NOW, rule)
    assert pulse.series(NOW, 4) == [10, 10, 10, 0]  # the current second has none yet
    assert pulse.rate(NOW) == pytest.approx(10.0)
    assert pulse.stalled(NOW + 2.0, rule)  # idle limit applies once output was seen
    assert sparkline([0, 1, 2, 4, 8]) == " ▁▂▄█"
    pulse.new_attempt(NOW + 3, 2)
    assert not pulse.output_seen and not pulse.stalled(NOW + 6, rule)  # 3 s < 4 s first-token


def test_the_cores_heartbeat_overrides_the_derived_one_while_fresh() -> None:
    pulse = Pulse(started_at=NOW)
    rule = StallRule(first_token=100.0, idle=100.0)
    pulse.report(NOW + 1, since_last=7.0, stalled=True, chunk_rate=0.0, keepalives=3)
    assert pulse.stalled(NOW + 1.5, rule) and pulse.since_last(NOW + 1.5) == pytest.approx(7.5)
    assert pulse.keepalives == 3
    assert not pulse.stalled(NOW + 10, rule)  # stale report: back to the derived rule


def started(turn_id: str, session: str, at: float) -> TurnStarted:
    return TurnStarted(turn_id=turn_id, at=at, session_id=session, model="m", route="m",
                       stream=True)


def test_model_is_bounded_and_never_drops_live_turns() -> None:
    model = DashboardModel(max_turns=10)
    source: dict[str, Turn] = {}
    events = []
    for i in range(40):
        turn_id = f"t{i:03d}"
        source[turn_id] = Turn(id=turn_id, session_id="s", model="m", route="m", stream=True,
                               request={}, started_at=NOW + i)
        events.append(started(turn_id, "s", NOW + i))
        if i >= 3:  # the first three stay live
            source[turn_id].state = "finished"
            events.append(TurnFinished(turn_id=turn_id, at=NOW + i, finish_reason="stop",
                                       prompt_tokens=1, completion_tokens=1, duration=0.1,
                                       tool_calls=0))
    model.apply(Batch(events), source.get, NOW + 50)
    assert len(model) == 10
    assert list(model.entries)[:3] == ["t000", "t001", "t002"]
    assert list(model.entries)[-1] == "t039"
    info = model.sessions["s"]
    assert (info.turns, info.live) == (40, 3)
    older = [Turn(id=f"old{i}", session_id="s", model="m", route="m", stream=True, request={},
                  started_at=NOW - 100 + i, state="finished") for i in range(5)]
    assert model.add_older(older) == 5 and list(model.entries)[0] == "old0"
    assert model.sessions["s"].turns == 40  # turns seen live; older ones are not re-counted


def test_session_counts_follow_state_changes_once() -> None:
    model = DashboardModel()
    turn = Turn(id="t1", session_id="s", model="m", route="m", stream=True, request={},
                started_at=NOW, state="failed")  # already failed when the batch is drained
    batch = Batch([started("t1", "s", NOW),
                   RepairApplied(turn_id="t1", kind="k", before="a", after="b"),
                   TurnFailed(turn_id="t1", error="x", status=502, duration=1.0)])
    turn.repairs = [object()]  # type: ignore[list-item]
    model.apply(batch, {"t1": turn}.get, NOW)
    info = model.sessions["s"]
    assert (info.turns, info.live, info.failed, info.repairs) == (1, 0, 1, 1)


def test_events_update_pulses_and_upstream_health() -> None:
    model = DashboardModel(stall_after=StallRule(2.0, 2.0))
    turn = Turn(id="t1", session_id="s", model="m", route="m", stream=True, request={},
                started_at=NOW)
    model.apply(Batch([started("t1", "s", NOW),
                       AttemptStarted(turn_id="t1", at=NOW, attempt=1, target="a:m"),
                       Heartbeat(turn_id="t1", at=NOW + 1),
                       UpstreamHealthChanged(turn_id="t1", target="a:m", healthy=False,
                                             until=NOW + 30, reason="hung twice")],
                      {"t1": ChunkTally(5, NOW + 1.5)}), {"t1": turn}.get, NOW + 2)
    entry = model.get("t1")
    assert entry.pulse.chunks == 5 and entry.pulse.keepalives == 1
    assert model.upstream_health["a:m"] == (False, NOW + 30, "hung twice")
    live = TurnFilter("stalled")
    assert not live.matches(entry, NOW + 3, model.stall_after)
    assert live.matches(entry, NOW + 4, model.stall_after)
    model.apply(Batch([StreamHeartbeat(turn_id="t1", at=NOW + 4, attempt=1, target="a:m",
                                       chunks=5, chunk_rate=0.0, since_last=0.2, keepalives=4,
                                       stalled=False)]), {"t1": turn}.get, NOW + 4)
    assert not live.matches(entry, NOW + 4, model.stall_after) and entry.pulse.keepalives == 4


def test_filters() -> None:
    model = DashboardModel()
    for turn in history():
        model.add(turn)
    ids = lambda flt: [e.turn.id for e in model.visible(flt, NOW)]  # noqa: E731
    assert ids(TurnFilter("failed")) == ["turn_fixed000000009"]
    assert ids(TurnFilter("retried")) == ["turn_fixed000000003", "turn_fixed000000004"]
    assert ids(TurnFilter("repaired"))[0] == "turn_pairs000000001"
    assert ids(TurnFilter(session="ses_beta")) == ["turn_fixed000000004", "turn_fixed000000009"]
    assert ids(TurnFilter(search="leaked")) == ["turn_pairs000000001"]
    assert ids(TurnFilter(search="TEST_CALC")) == ["turn_pairs000000001"]  # tool arguments
    assert TurnFilter("failed", "ses_beta", search="x").describe() == "failed, session ses_beta, /x"


def test_records_and_events_from_json_tolerate_newer_fields() -> None:
    data = paired_and_orphaned().to_dict()
    data["from_the_future"] = 1
    data["attempts"][0]["also_new"] = True
    turn = Turn.from_dict(data)
    assert turn.id == "turn_pairs000000001" and turn.text == "Running the tests next."
    assert turn.attempts[0].target == "sim:kimi-k2.5"
    event = parse_event("ShinyNewEvent", {"type": "ShinyNewEvent", "turn_id": "t", "at": 1.0,
                                          "x": 2})
    assert isinstance(event, ForeignEvent) and event.data == {"x": 2}
    chunk = parse_event("Chunk", Chunk(turn_id="t", kind="text", text="hi").to_dict())
    assert isinstance(chunk, Chunk) and chunk.text == "hi"


def test_sources_count_chunks_instead_of_queueing_them() -> None:
    source = StaticSource()
    for i in range(10_000):
        source._push(Chunk(turn_id="t", at=NOW + i / 1000, kind="text", text="x"))
    source._push(Heartbeat(turn_id="t"))
    batch = source.drain()
    assert len(batch.events) == 1 and batch.chunks["t"].count == 10_000
    assert source._interval == source._flush_interval * 4  # busy: redraw less often
    assert source.drain().events == []
    assert source._interval == source._flush_interval  # quiet again


# -- themes and keymaps ------------------------------------------------------------

def test_builtin_themes_load() -> None:
    found = load_themes(BUILTIN_THEMES_DIR)
    assert found.problems == []
    assert set(found.themes) == {"dark", "light", "high-contrast"}
    assert found.themes["light"].dark is False


@pytest.mark.parametrize(("text", "problem"), [
    ('primary = "#fff"\ncolour = "#000"', "colour: unknown key"),
    ('background = "#000"', "primary: is required"),
    ('primary = "blurple"', "primary: 'blurple' is not a colour"),
    ('primary = "#fff"\ndark = "yes"', "dark: must be true or false"),
    ('primary = "#fff"\ntext_alpha = 3', "text_alpha: must be a number between 0 and 1"),
    ('primary = "#fff"\n[variables]\nx = 1', "variables: must be a table of strings"),
    ('primary = ', "not valid TOML"),
])
def test_bad_theme_files_are_refused_with_the_key(text: str, problem: str) -> None:
    with pytest.raises(ThemeError) as error:
        parse_theme(text, Path("/x/mine.toml"))
    assert str(error.value).startswith("/x/mine.toml: ") and problem in str(error.value)


def test_user_themes_add_and_replace_builtins(tmp_path: Path) -> None:
    (tmp_path / "dark.toml").write_text('primary = "#123456"\n')
    (tmp_path / "night.toml").write_text('name = "midnight"\nprimary = "#000080"\n')
    (tmp_path / "bad.toml").write_text('nope = 1\n')
    found = load_themes(BUILTIN_THEMES_DIR, tmp_path, tmp_path / "missing")
    assert found.themes["dark"].primary == "#123456"
    assert "midnight" in found.themes
    assert len(found.problems) == 1 and "bad.toml" in found.problems[0]


def test_keymap_file(tmp_path: Path) -> None:
    path = tmp_path / "keymap.toml"
    assert load_keymap(path, {"retry"}) == ({}, [])
    path.write_text('retry = "ctrl+r, x"\nreroute = 3\nbogus = "y"\n')
    keymap, problems = load_keymap(path, {"retry", "reroute"})
    assert keymap == {"retry": "ctrl+r,x"}
    assert len(problems) == 2 and any("bogus: no binding" in p for p in problems)
    path.write_text("retry = ")
    assert "cannot read keymap" in load_keymap(path, {"retry"})[1][0]


def test_the_heartbeat_shows_the_deadline_the_silence_runs_against() -> None:
    from proxy_core.record import Attempt
    from tui.widgets.detail import heartbeat_text
    from tui.widgets.palette import Palette
    model = DashboardModel()
    turn = Turn(id="t1", session_id="s", model="m", route="m", stream=True, request={},
                started_at=NOW)
    turn.attempts.append(Attempt(number=1, target="a:m", started_at=NOW,
                                 first_output_deadline=3.4,
                                 first_output_basis="learned from 30 turns",
                                 idle_deadline=10.0, idle_basis="configured; adaptive off"))
    model.apply(Batch([started("t1", "s", NOW),
                       AttemptStarted(turn_id="t1", at=NOW, attempt=1, target="a:m"),
                       StreamHeartbeat(turn_id="t1", at=NOW + 1.4, attempt=1, target="a:m",
                                       chunks=0, chunk_rate=0.0, since_last=1.4, keepalives=0,
                                       stalled=False, deadline=3.4)]),
                {"t1": turn}.get, NOW + 1.4)
    p = Palette(*(["#ffffff"] * 8))
    text = heartbeat_text(model.get("t1"), NOW + 1.4, model.stall_after, p).plain
    assert "1.4s waiting for the first output (deadline 3.4s, learned from 30 turns)" in text
    # Once output flows, the idle deadline and its basis.
    turn.first_byte_at = NOW + 2
    model.apply(Batch([StreamHeartbeat(turn_id="t1", at=NOW + 3, attempt=1, target="a:m",
                                       chunks=3, chunk_rate=3.0, since_last=0.5, keepalives=0,
                                       stalled=False, deadline=10.0)],
                      {"t1": ChunkTally(3, NOW + 2.5)}), {"t1": turn}.get, NOW + 3)
    text = heartbeat_text(model.get("t1"), NOW + 3, model.stall_after, p).plain
    assert "since the last output (deadline 10.0s, configured; adaptive off)" in text
