"""Repro fixtures: a leaked-call turn and a stalled turn, recorded through the real
proxy from the real simulator, written from the journal and replayed offline to the
same client output."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ProxyFactory
from proxy_core import journal_db
from proxy_core.app import SwitchboardProxy
from proxy_core.capture import WireCapture, reads_of
from proxy_core.config import parse_config
from proxy_core.replay import replay
from proxy_core.retention import delete_session
from proxy_core.repro import (
    ReproError, client_view, from_journal, normalized, read_fixture, recorded_view, write_fixture,
)
from support import API, wait_until
from tui.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "opencode_request.json"
TOOLS: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["tools"]
SECRET = "sk-repro-secret-0123456789abcdef"

SIM_CONFIG = """
[proxy]
host = "127.0.0.1"
port = 0

[watchdog]
first_token_timeout = 0.6
idle_timeout = 0.6
max_attempts = 3

[upstreams.sim]
kind = "simulator"
faults = ["leak", "hang"]
fault_rate = 1.0
seed = 3

[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
repairs = "kimi"
"""


def start_messages() -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are a coding agent.\n<env>\n  Working directory:"
                                          " /work/project\n  Platform: linux\n</env>"},
            {"role": "user", "content": f"build a calculator (my key is {SECRET})"}]


async def live_turn(client: httpx.AsyncClient, proxy: SwitchboardProxy,
                    messages: list[dict[str, Any]]) -> tuple[bytes, dict[str, Any]]:
    """One streamed turn through the proxy: the client's raw bytes and the settled turn,
    once its raw upstream answer is in the journal."""
    body = {"model": "kimi-k2.5", "messages": messages, "tools": TOOLS, "stream": True}
    async with client.stream("POST", proxy.base_url + "/v1/chat/completions", json=body,
                             headers={"x-session-id": "ses_repro"}) as response:
        assert response.status_code == 200
        raw = await response.aread()
    turn = (await client.get(proxy.base_url + API + "/turns", params={"limit": 1})).json()["turns"][-1]
    assert proxy.journal is not None
    journal = proxy.journal
    await wait_until(lambda: journal.wire(turn["id"]) is not None, what="the raw answer on disk")
    return raw, turn


def assistant_message(turn: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": turn["text"], "reasoning_content": turn["reasoning"],
            "tool_calls": [{"id": c["id"], "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]}}
                           for c in turn["tool_calls"]]}


async def record_both(proxy_factory: ProxyFactory, client: httpx.AsyncClient
                      ) -> tuple[SwitchboardProxy, list[tuple[bytes, dict[str, Any]]]]:
    proxy = await proxy_factory(SIM_CONFIG)
    proxy.redactor.add(SECRET)
    leaked = await live_turn(client, proxy, start_messages())
    call = leaked[1]["tool_calls"][0]
    history = start_messages() + [assistant_message(leaked[1]),
                                  {"role": "tool", "tool_call_id": call["id"], "content": "done"}]
    stalled = await live_turn(client, proxy, history)
    return proxy, [leaked, stalled]


async def test_a_leaked_and_a_stalled_turn_replay_to_the_live_output(
        proxy_factory: ProxyFactory, client: httpx.AsyncClient, tmp_path: Path) -> None:
    proxy, recorded = await record_both(proxy_factory, client)
    (leak_raw, leak_turn), (stall_raw, stall_turn) = recorded
    assert any(r["kind"].startswith("leak") for r in leak_turn["repairs"]), leak_turn["repairs"]
    assert [a["outcome"] for a in stall_turn["attempts"]] == ["failed", "ok"]
    assert stall_turn["attempts"][0]["error"].startswith("no first token")

    for raw, turn in recorded:
        path = tmp_path / f"{turn['id']}.json"
        write_fixture(from_journal(proxy.config.proxy.journal, turn["id"], proxy.config), path,
                      proxy.redactor)
        assert SECRET not in path.read_text()
        fixture = read_fixture(path)
        assert len(fixture["wire"]) == len(turn["attempts"])
        assert fixture["upstream_request"]["model"] == "kimi-k2.5"
        assert fixture["watchdog"]["first_token_timeout"] == 0.6
        for instant in (False, True):
            result = await replay(fixture, instant=instant)
            assert result.status == 200 and result.requests == len(turn["attempts"])
            assert normalized(result.output) == normalized(raw)
            assert client_view(result.output) == recorded_view(turn)

    # The control API gives the same fixture.
    api = (await client.get(f"{proxy.base_url}{API}/turns/{stall_turn['id']}/repro")).json()
    assert api["wire"] == read_fixture(tmp_path / f"{stall_turn['id']}.json")["wire"]

    # Pruning the session takes its raw answers with it.
    assert proxy.journal is not None
    delete_session(proxy.journal.conn, "ses_repro")
    assert proxy.journal.wire(stall_turn["id"]) is None
    assert proxy.journal.conn.execute("SELECT count(*) FROM wire").fetchone() == (0,)


async def test_a_turn_of_a_long_session_replays(
        proxy_factory: ProxyFactory, client: httpx.AsyncClient) -> None:
    """A history of megabytes, past aiohttp's default 1 MB request limit, both live (the
    simulated host) and replayed (the stand-in host)."""
    proxy = await proxy_factory(SIM_CONFIG.replace('faults = ["leak", "hang"]', "faults = []"))
    messages = start_messages()
    messages[1]["content"] += "\n" + "the whole log follows " * 150_000  # 3.3 MB
    raw, turn = await live_turn(client, proxy, messages)
    assert turn["state"] == "finished" and turn["request_bytes"] > 3_000_000
    fixture = from_journal(proxy.config.proxy.journal, turn["id"], proxy.config)
    result = await replay(fixture, instant=True)
    assert result.status == 200 and result.requests == 1
    assert normalized(result.output) == normalized(raw)


async def test_the_raw_answer_is_capped_with_a_marker(tmp_path: Path) -> None:
    capture = WireCapture(1, "sim:kimi-k2.5", limit=10)
    for piece in (b"data: ", "é".encode()[:1], "é".encode()[1:], b"0123456789"):
        capture.add(piece)
    encoded = capture.encode()
    assert encoded["body"] == "data: é" and [size for _, size in encoded["reads"]] == [6, 1, 1]
    assert encoded["truncated"] is True and encoded["dropped_bytes"] == 10
    assert [data for _, data in reads_of(encoded)] == [b"data: ", b"\xc3", b"\xa9"]
    encoded["body"] = "data: [redacted]"  # a body the redactor changed: the rest comes last
    assert b"".join(data for _, data in reads_of(encoded)) == b"data: [redacted]"


def test_cli_repro_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "journal.sqlite3"
    config_path = tmp_path / "config.toml"
    config_path.write_text(SIM_CONFIG.replace("port = 0", f'port = 0\njournal = "{journal}"'))

    async def record() -> str:
        proxy = SwitchboardProxy(parse_config(config_path.read_text(), str(config_path)))
        await proxy.start()
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                _, turn = await live_turn(client, proxy, start_messages())
        finally:
            await proxy.stop()
        return str(turn["id"])

    turn_id = asyncio.run(record())
    out = tmp_path / "leak.json"
    assert main(["repro", turn_id, "-o", str(out), "--config", str(config_path)]) == 0
    assert "switchboard replay" in capsys.readouterr().err
    assert main(["replay", str(out), "--instant"]) == 0
    printed = capsys.readouterr()
    assert "matches the live run" in printed.err
    assert client_view(printed.out.encode()).tool_calls  # the repaired call, as the client got it

    assert main(["repro", "turn_nope", "--config", str(config_path)]) == 1
    assert "no turn 'turn_nope'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["replay", str(tmp_path / "bad.json")]) == 1
    assert "not a Switchboard repro fixture" in capsys.readouterr().err
    with pytest.raises(ReproError):
        read_fixture(tmp_path / "missing.json")


def test_a_version_2_journal_gains_the_wire_table(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    from proxy_core.secrets import Redactor
    journal_db.create(conn, Redactor())
    conn.execute("DROP TABLE wire")
    conn.execute("PRAGMA user_version = 2")
    journal_db.create(conn, Redactor())
    assert conn.execute("PRAGMA user_version").fetchone()[0] == journal_db.VERSION
    assert conn.execute("SELECT count(*) FROM wire").fetchone() == (0,)
    conn.close()


async def test_the_per_turn_cap_and_turning_capture_off(
        proxy_factory: ProxyFactory, client: httpx.AsyncClient, tmp_path: Path) -> None:
    capped = await proxy_factory(SIM_CONFIG.replace("port = 0", "port = 0\njournal_wire_kb = 1"),
                                 journal=tmp_path / "capped.sqlite3")
    _, turn = await live_turn(client, capped, start_messages())
    fixture = from_journal(tmp_path / "capped.sqlite3", turn["id"], capped.config)
    [attempt] = fixture["wire"]
    assert attempt["truncated"] is True and attempt["bytes"] <= 1024 < attempt["bytes"] + \
        attempt["dropped_bytes"]

    off = await proxy_factory(SIM_CONFIG.replace("port = 0", "port = 0\njournal_wire_kb = 0"),
                              journal=tmp_path / "off.sqlite3")
    body = {"model": "kimi-k2.5", "messages": start_messages(), "stream": True}
    response = await client.post(off.base_url + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    [recorded] = off.store.recent(1)
    await wait_until(lambda: recorded.state != "live", what="the turn to end")
    fixture = from_journal(tmp_path / "off.sqlite3", recorded.id, off.config)
    assert fixture["wire_recorded"] is False and fixture["wire"] == []
    with pytest.raises(ReproError, match="no recorded upstream bytes"):
        await replay(fixture)


async def test_a_turn_that_ends_as_the_proxy_stops_keeps_its_raw_answer(
        proxy_factory: ProxyFactory, client: httpx.AsyncClient, tmp_path: Path) -> None:
    proxy = await proxy_factory(SIM_CONFIG)
    body = {"model": "kimi-k2.5", "messages": start_messages(), "stream": True}
    response = await client.post(proxy.base_url + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    [turn] = proxy.store.recent(1)
    await proxy.stop()  # at once: the raw answer may still be on the journal's worker
    fixture = from_journal(proxy.config.proxy.journal, turn.id, proxy.config)
    assert fixture["wire_recorded"] is True and fixture["wire"][0]["body"]


async def test_repaired_messages_sent_upstream_are_kept_as_parts_once_per_session(
        proxy_factory: ProxyFactory, client: httpx.AsyncClient, tmp_path: Path) -> None:
    """Each turn's repaired history is in its fixture, but a session's is stored about once:
    a copy per turn in the raw answer's row made the journal grow with the square of it."""
    proxy = await proxy_factory(SIM_CONFIG.replace('faults = ["leak", "hang"]', "faults = []"),
                                journal=tmp_path / "j.sqlite3")
    messages = start_messages()
    turns = []
    for i in range(8):  # tool calls without reasoning_content: repaired on every turn
        call = f"functions.read:{i}"
        messages = messages + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call, "type": "function",
                 "function": {"name": "read", "arguments": json.dumps({"filePath": f"/f{i}"})}}]},
            {"role": "tool", "tool_call_id": call, "content": f"contents of file {i} " * 200}]
        turns.append((await live_turn(client, proxy, messages))[1])

    last = turns[-1]
    fixture = from_journal(tmp_path / "j.sqlite3", last["id"], proxy.config)
    sent = fixture["upstream_request"]["messages"]
    assert len(sent) == len(messages)
    assert all(m["reasoning_content"] == " " for m in sent if m["role"] == "assistant")
    assert SECRET not in json.dumps(sent)  # the parts are redacted like a request's

    conn = sqlite3.connect(tmp_path / "j.sqlite3")
    for (data,) in conn.execute("SELECT data FROM wire"):
        assert b"contents of file" not in zlib.decompress(data)
    # Every tool result once, and each repaired assistant message once, not once per turn.
    assert conn.execute("SELECT count(*) FROM contents WHERE body LIKE '%contents of file%'"
                        ).fetchone() == (8,)
    assert conn.execute("SELECT count(*) FROM contents WHERE body LIKE '%reasoning_content%'"
                        ).fetchone() == (8,)

    conn.execute("PRAGMA foreign_keys = ON")
    delete_session(conn, "ses_repro")
    assert conn.execute("SELECT count(*) FROM turn_requests").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM contents").fetchone() == (0,)
    conn.close()
