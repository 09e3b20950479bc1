"""The host scoreboard: per-target stats folded from turns and live events, and its endpoint."""

from __future__ import annotations

import httpx

from proxy_core.app import SwitchboardProxy
from proxy_core.events import AttemptFailed, StreamHeartbeat, TurnFinished, UpstreamHealthChanged
from proxy_core.record import Attempt, RepairRecord, ToolCallRecord, Turn, Usage
from proxy_core.scoreboard import MAX_TARGETS, Scoreboard, percentile
from support import API, FakeUpstream, chat_body, hang_reply, openai_config, stream_chat

A, B = "flaky:k2", "steady:k2"


def ended_turn(turn_id: str, *attempts: Attempt, tools: int = 0, repairs: tuple[str, ...] = (),
               usage: tuple[int, int] = (0, 0), state: str = "finished") -> Turn:
    turn = Turn(id=turn_id, session_id="s", model="k2", route="k2", stream=True, request={},
                started_at=100.0, finished_at=110.0)
    turn.state = state  # type: ignore[assignment]
    turn.attempts = list(attempts)
    turn.tool_calls = [ToolCallRecord(f"c{i}", "read", "{}") for i in range(tools)]
    turn.repairs = [RepairRecord(kind, "b", "a") for kind in repairs]
    turn.usage = Usage(*usage)
    return turn


def test_a_turn_counts_on_the_target_that_answered_and_attempts_on_theirs() -> None:
    board = Scoreboard(clock=lambda: 120.0)
    stalled = Attempt(1, A, started_at=100.0, ended_at=103.0, outcome="failed",
                      error="no first token from flaky:k2 within 3s")
    retried = Attempt(2, A, reason="retry", started_at=103.0, ended_at=104.0, outcome="failed",
                      error="HTTP 500 from flaky")
    moved = Attempt(3, B, reason="reroute", started_at=104.0, first_byte_at=104.5,
                    ended_at=106.0, outcome="ok", prepared_in=0.0008)
    turn = ended_turn("t1", stalled, retried, moved, tools=2,
                      repairs=("leaked_tool_call", "leaked_tool_call", "restored_tool_call"),
                      usage=(300, 40))
    assert board.count(turn) and not board.count(turn)  # once per turn id
    a, b = board.targets[A], board.targets[B]
    assert (a.turns, a.stalls, a.errors, a.retries, a.reroutes) == (0, 1, 1, 1, 1)
    assert (b.turns, b.tool_turns, b.leaks, b.history_repairs) == (1, 1, 2, 1)
    assert (b.tokens_in, b.tokens_out, b.stalls, b.errors) == (300, 40, 0, 0)
    assert b.ttft_p50 == 0.5 and a.ttft_p50 is None
    assert b.prep_p50 == 0.0008 and a.prep_p50 is None  # Switchboard's own time, sent ones only
    assert b.to_dict(120.0)["prep_p95"] == 0.0008
    assert a.status(120.0) == "failing" and b.status(120.0) == "ok"
    assert a.status(120.0 + 600) == "ok"  # old news: no longer "just went bad"
    assert [s.target for s in board.rows("status")] == [A, B]
    assert [s.target for s in board.rows("turns")] == [B, A]


def test_live_events_make_a_target_bad_at_once_and_a_finished_turn_counts() -> None:
    turns: dict[str, Turn] = {}
    board = Scoreboard(clock=lambda: 200.0)
    board.observe(StreamHeartbeat(turn_id="t2", at=199.0, attempt=1, target=A, chunks=0,
                                  chunk_rate=0.0, since_last=1.5, keepalives=0, stalled=True),
                  turns.get)
    assert board.targets[A].status(200.0) == "stalling"
    board.observe(AttemptFailed(turn_id="t2", at=199.5, attempt=1, target=A,
                                error="no first token from flaky:k2 within 3s", will_retry=True),
                  turns.get)
    assert board.targets[A].status(200.0) == "failing"
    board.observe(UpstreamHealthChanged(turn_id="", target=A, healthy=False, until=215.0,
                                        reason="x"), turns.get)
    assert board.targets[A].status(200.0) == "cooling"
    assert board.to_dict()["targets"][0]["cooling_for"] == 15.0
    turns["t2"] = ended_turn("t2", Attempt(1, B, started_at=199.0, first_byte_at=199.2,
                                          ended_at=201.0, outcome="ok"))
    board.observe(TurnFinished(turn_id="t2", finish_reason="stop", prompt_tokens=0,
                               completion_tokens=0, duration=1.0, tool_calls=0), turns.get)
    assert board.targets[B].turns == 1 and board.targets[B].status(202.0) == "ok"


def test_targets_stay_bounded() -> None:
    board = Scoreboard(clock=lambda: 0.0)
    for n in range(MAX_TARGETS + 10):
        board.count(ended_turn(f"t{n}", Attempt(1, f"up:m{n}", started_at=n + 1.0,
                                                ended_at=n + 1.0, outcome="ok")))
    assert len(board.targets) == MAX_TARGETS
    assert "up:m0" not in board.targets and f"up:m{MAX_TARGETS + 9}" in board.targets


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


async def test_the_control_api_serves_the_scoreboard_live_and_from_the_journal(
        make_fake_upstream: object, proxy_factory: object) -> None:
    primary: FakeUpstream = await make_fake_upstream(hang_reply())  # type: ignore[operator]
    backup: FakeUpstream = await make_fake_upstream()  # type: ignore[operator]
    toml = openai_config(primary.base_url, backup.base_url, first_token_timeout=0.3,
                         idle_timeout=0.3)
    proxy: SwitchboardProxy = await proxy_factory(toml)  # type: ignore[operator]
    async with httpx.AsyncClient(timeout=10.0) as client:
        response, payloads = await stream_chat(client, proxy.base_url, chat_body("hi"))
        assert response.status_code == 200 and payloads[-1] == "[DONE]"
        board = (await client.get(proxy.base_url + API + "/scoreboard")).json()
        by_target = {row["target"]: row for row in board["targets"]}
        assert by_target["primary:up-model"]["stalls"] >= 1
        assert by_target["primary:up-model"]["status"] in ("failing", "cooling")
        assert by_target["backup:up-model"]["turns"] == 1
        assert by_target["backup:up-model"]["tokens_in"] == 11
        # Switchboard's own time before each attempt left, on both (the stalled one was sent).
        assert all(0 < by_target[t]["prep_p50"] <= by_target[t]["prep_p95"] < 1.0
                   for t in ("primary:up-model", "backup:up-model"))
        bad = await client.get(proxy.base_url + API + "/scoreboard", params={"sort": "nope"})
        assert bad.status_code == 400 and "sort must be one of" in bad.json()["error"]["message"]
        await proxy.stop()
        again: SwitchboardProxy = await proxy_factory(toml)  # type: ignore[operator]
        board = (await client.get(again.base_url + API + "/scoreboard",
                                  params={"sort": "turns"})).json()
        assert board["targets"][0]["target"] == "backup:up-model"
        assert board["targets"][0]["turns"] == 1  # counted from the journal after a restart


def test_hedged_attempts_count_on_the_target_they_went_to() -> None:
    board = Scoreboard(clock=lambda: 100.0)
    turn = Turn(id="turn_h", session_id="s", model="m", route="m", stream=True, request={},
                state="finished", finished_at=3.0)
    turn.attempts = [Attempt(number=1, target="a:m", started_at=1.0, ended_at=3.0, outcome="ok",
                             first_byte_at=2.5),
                     Attempt(number=2, target="b:m", reason="hedge", started_at=2.0, ended_at=2.6,
                             outcome="cancelled")]
    assert board.count(turn)
    a, b = board.targets["a:m"], board.targets["b:m"]
    assert (a.hedges, b.hedges) == (0, 1)
    assert b.errors == b.stalls == 0  # a hedge that lost its race is no failure
    assert board.to_dict("hedges")["targets"][0]["target"] == "b:m"
