"""The journal stores each message once: growth with what is new, migration, retention.

Agents resend the whole conversation every turn; the journal keeps each
message and tool schema once (content-addressed) and each turn refers to
the ones it sent. These tests drive a real proxy with a growing session
and read the journal file, open a journal written by the previous schema,
and prune sessions by size and by age.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_core.contents import encode, split
from proxy_core import journal as journal_module
from proxy_core import journal_db
from proxy_core.journal import Journal
from proxy_core.record import Turn
from proxy_core.retention import Retention, used_bytes
from proxy_core.secrets import Redactor
from proxy_core.store import TurnStore
from support import API, CHAT_PATH, FakeUpstream, api_turn, api_turns, openai_config, wait_until

FIXTURES = Path(__file__).resolve().parent / "fixtures"

TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"Use the {name} tool. " + "It has rules. " * 40,
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}} for name in ("read", "bash", "edit", "grep", "write")]


def session_request(steps: int, *, tag: str = "") -> dict[str, Any]:
    """An opencode-shaped request after `steps` tool steps: each turn resends all before it."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. " + "Be careful. " * 700},
        {"role": "user", "content": f"fix the failing test {tag} (token sk-PLANTEDplanted00000000)"}]
    for i in range(steps):
        call_id = f"functions.read:{i}"
        messages.append({"role": "assistant", "content": "",
                         "reasoning_content": f"{tag} I should read module {i} next. " * 5,
                         "tool_calls": [{"id": call_id, "type": "function", "function": {
                             "name": "read", "arguments": json.dumps({"path": f"/src/m{i}.py"})}}]})
        messages.append({"role": "tool", "tool_call_id": call_id,
                         "content": "".join(f"{n:05d}| line {n} of module {i} {tag}\n"
                                            for n in range(120))})
    return {"model": "test-model", "messages": messages, "tools": TOOLS, "stream": True,
            "temperature": 0.3}


def unique_bytes(requests: list[dict[str, Any]]) -> int:
    """The bytes a journal must keep: each distinct part once, each turn's skeleton."""
    parts: set[str] = set()
    total = 0
    for request in requests:
        skeleton, fields = split(request)
        total += len(encode(skeleton))
        parts.update(encode(item) for items in fields.values() for item in items)
    return total + sum(len(p) for p in parts)


def journal_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def test_a_sessions_history_is_stored_about_once(
        fake_upstream: FakeUpstream, proxy_factory: Any, tmp_path: Path) -> None:
    toml = openai_config(fake_upstream.base_url)
    proxy = await proxy_factory(toml)
    requests = [session_request(step) for step in range(30)]
    async with httpx.AsyncClient(timeout=10) as client:
        for body in requests:
            response = await client.post(proxy.base_url + CHAT_PATH, json=body,
                                         headers={"x-session-id": "ses_grow"})
            assert response.status_code == 200
        turns = await api_turns(client, proxy.base_url)
        await proxy.stop()

        journal = tmp_path / "journal.sqlite3"
        sent = sum(len(json.dumps(r).encode()) for r in requests)
        unique = unique_bytes(requests)
        size = journal_bytes(journal)
        assert sent > 10 * unique  # the session really is quadratic on the wire
        assert size < 3 * unique, f"journal {size} B for {unique} B unique ({sent} B sent)"
        assert b"PLANTED" not in journal.read_bytes()

        # After a restart every request comes back from the journal as it was sent
        # (the secret redacted), in the order of its keys.
        again = await proxy_factory(toml)
        assert [t["id"] for t in await api_turns(client, again.base_url)] == \
            [t["id"] for t in turns]
        for turn, body in zip(turns, requests, strict=True):
            shown = (await api_turn(client, again.base_url, turn["id"]))["request"]
            expected = json.loads(json.dumps(body).replace("sk-PLANTEDplanted00000000",
                                                           "[redacted]"))
            assert json.dumps(shown) == json.dumps(expected)


async def test_turns_in_memory_share_their_history(
        fake_upstream: FakeUpstream, proxy_factory: Any) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    async with httpx.AsyncClient(timeout=10) as client:
        # Requests are named on the journal's writer thread, which shares them.
        for step in range(20):
            response = await client.post(proxy.base_url + CHAT_PATH, json=session_request(step),
                                         headers={"x-session-id": "ses_share"})
            assert response.status_code == 200
    turns = proxy.store.recent(0)
    assert len(turns) == 20

    def shared() -> bool:
        last = turns[-1].request
        return all(m is last["messages"][i] and t.request["tools"][0] is last["tools"][0]
                   for t in turns for i, m in enumerate(t.request["messages"]))

    await wait_until(shared, what="the turns to share their messages")
    # Each distinct message is held once: 2 + 2 per step, however many turns sent it.
    held = {id(m) for t in turns for m in t.request["messages"]}
    assert len(held) == 2 + 2 * 19
    assert turns[3].request == session_request(3)  # sharing changes nothing a view shows


async def test_a_journal_of_the_previous_schema_migrates_on_open(
        fake_upstream: FakeUpstream, proxy_factory: Any, tmp_path: Path) -> None:
    # Written by the version-1 schema (one JSON text per request); see make_journal_v1.py.
    journal = tmp_path / "journal.sqlite3"
    shutil.copy(FIXTURES / "journal_v1.sqlite3", journal)
    shown_before = json.loads((FIXTURES / "journal_v1.json").read_text())

    proxy = await proxy_factory(openai_config(fake_upstream.base_url), journal=journal)
    async with httpx.AsyncClient(timeout=10) as client:
        turns = await api_turns(client, proxy.base_url)
        assert turns == shown_before["turns"]
        for turn in turns:
            assert await api_turn(client, proxy.base_url, turn["id"]) == \
                shown_before["details"][turn["id"]]
    assert proxy.journal is not None and proxy.journal.load_call("call_1") is not None

    assert query(journal, "PRAGMA user_version") == [(journal_db.VERSION,)]
    assert query(journal, "SELECT type FROM sqlite_master WHERE name = 'requests'") == [("view",)]
    # Three turns of one session sent 2, 4 and 6 messages: 6 distinct, plus
    # the lone other turn's one; 3 tool schemas sent three times are stored once.
    assert query(journal, "SELECT count(*) FROM contents") == [(7 + 3,)]
    # Each part is counted once per session that refers to it: the three-turn session
    # refers to its 6 messages and the 3 schemas, the other session to its one message.
    assert query(journal, "SELECT sum(n) FROM content_refs") == [(6 + 3 + 1,)]
    assert query(journal, "SELECT count(*) FROM session_parts") == [(6 + 3 + 1,)]


def test_a_version_3_journal_counts_its_parts_by_session_on_open(tmp_path: Path) -> None:
    """Version 3 counted every place a part was sent; version 4 counts sessions. After the
    migration, pruning a session still drops exactly the parts no other session uses."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path, Redactor(), TurnStore())
    sent = write_sessions(journal, 3, 4, start=time.time() - 3600)
    journal.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:  # back to version 3
        conn.execute("DROP TABLE session_parts")
        places: dict[int, int] = {}
        for (parts,) in conn.execute("SELECT parts FROM turn_requests"):
            for ids in json.loads(parts).values():
                for c in ids:
                    places[c] = places.get(c, 0) + 1
        conn.executemany("UPDATE content_refs SET n = ? WHERE id = ?",
                         [(n, c) for c, n in places.items()])
        conn.execute("PRAGMA user_version = 3")

    journal = Journal.open(path, Redactor(), TurnStore())
    assert query(path, "PRAGMA user_version") == [(journal_db.VERSION,)]
    shared = query(path, "SELECT content FROM session_parts GROUP BY content"
                         " HAVING count(*) = 3")
    assert len(shared) == 1 + len(TOOLS)  # the system prompt and the tool schemas
    assert query(path, "SELECT count(*) FROM content_refs r WHERE n != (SELECT count(*)"
                       " FROM session_parts s WHERE s.content = r.id)") == [(0,)]
    journal.retention = Retention(max_bytes=1)  # nothing fits: all but the newest go
    assert journal.prune() == 2
    referenced = {c for (parts,) in query(path, "SELECT parts FROM turn_requests")
                  for ids in json.loads(parts).values() for c in ids}
    assert {c for (c,) in query(path, "SELECT id FROM contents")} == referenced
    for turn_id, request in sent.items():
        record = journal.turn(turn_id)
        assert (record is not None) == turn_id.startswith("turn_2_")
        if record is not None:
            assert record["request"]["tools"] == request["tools"]
    journal.close()


# -- retention -----------------------------------------------------------------------

def write_sessions(journal: Journal, count: int, turns: int, *, start: float,
                   first: int = 0) -> dict[str, Any]:
    """Sessions `ses_{first}`... of `turns` growing turns each, a minute apart; turn id → request."""
    sent: dict[str, Any] = {}
    for s in range(first, first + count):
        for t in range(turns):
            request = session_request(t, tag=f"session {s}")
            turn = Turn(id=f"turn_{s}_{t}", session_id=f"ses_{s}", model="test-model",
                        route="test-model", stream=True, request=request,
                        started_at=start + 60 * ((s - first) * turns + t), state="finished")
            turn.finished_at = turn.started_at + 1
            journal.save(turn)
            sent[turn.id] = request
    return sent


def query(path: Path, sql: str) -> list[Any]:
    """Rows from a connection of its own, closed after (the last one out checkpoints)."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def sessions_in(path: Path) -> list[str]:
    return [s for (s,) in query(
        path, "SELECT session_id FROM turns GROUP BY session_id ORDER BY max(started_at)")]


def test_size_retention_prunes_the_oldest_whole_sessions(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path, Redactor(), TurnStore())
    sent = write_sessions(journal, 6, 4, start=time.time() - 3600)
    full = used_bytes(journal.conn)
    journal.close()

    limit = full // 2
    journal = Journal.open(path, Redactor(), TurnStore(), Retention(max_bytes=limit))
    assert journal.pruned_sessions >= 3
    remaining = sessions_in(path)
    assert remaining == [f"ses_{s}" for s in range(6 - len(remaining), 6)]  # the newest, whole
    assert used_bytes(journal.conn) <= limit
    referenced = {c for (parts,) in query(path, "SELECT parts FROM turn_requests")
                  for ids in json.loads(parts).values() for c in ids}
    assert {c for (c,) in query(path, "SELECT id FROM contents")} == referenced
    assert query(path, "SELECT count(*) FROM turns") == [(4 * len(remaining),)]
    for turn_id, request in sent.items():  # what stays is whole; the system prompt too
        record = journal.turn(turn_id)
        if turn_id.split("_")[1] in {r.split("_")[1] for r in remaining}:
            assert record is not None and record["request"]["messages"] == json.loads(
                json.dumps(request["messages"]).replace("sk-PLANTEDplanted00000000",
                                                        "[redacted]"))
        else:
            assert record is None
    journal.close()
    assert path.stat().st_size < full  # pages handed back to the file system


def test_retention_keeps_a_session_in_flight_and_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path, Redactor(), TurnStore())
    write_sessions(journal, 3, 2, start=time.time() - 3600)
    journal.conn.execute("UPDATE turns SET state = 'live' WHERE id = 'turn_0_1'")
    journal.retention = Retention(max_bytes=1)  # nothing fits
    assert journal.prune() == 1
    assert sessions_in(path) == ["ses_0", "ses_2"]
    journal.close()


def test_age_retention_prunes_idle_sessions(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path, Redactor(), TurnStore())
    write_sessions(journal, 2, 2, start=time.time() - 10 * 86400)  # ten days ago
    write_sessions(journal, 1, 2, start=time.time() - 60, first=2)  # a minute ago
    journal.retention = Retention(max_age=7 * 86400)
    assert journal.prune() == 2
    assert sessions_in(path) == ["ses_2"]
    journal.close()


async def test_journal_max_mb_in_the_config_prunes(
        fake_upstream: FakeUpstream, proxy_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path, Redactor(), TurnStore())
    write_sessions(journal, 4, 3, start=time.time() - 3600)
    half_mb = used_bytes(journal.conn) / 2 / 1024 / 1024
    journal.close()
    toml = openai_config(fake_upstream.base_url).replace(
        "port = 0", f"port = 0\njournal_max_mb = {half_mb:.4f}\njournal_max_days = 30", 1)
    proxy = await proxy_factory(toml)
    async with httpx.AsyncClient(timeout=10) as client:
        shown = {t["session_id"] for t in await api_turns(client, proxy.base_url)}
        health = (await client.get(proxy.base_url + API + "/health")).json()
    assert "ses_3" in shown and "ses_0" not in shown
    assert health["journal"]["ok"]


async def test_the_wal_is_checkpointed_on_the_worker_not_the_event_loop(
        fake_upstream: FakeUpstream, proxy_factory: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "CHECKPOINT_INTERVAL", 0.0)  # at every turn's end
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    assert proxy.journal is not None
    threads: list[str] = []
    checkpoint = proxy.journal._checkpoint

    def watched() -> None:  # unit seam: see which thread checkpoints
        threads.append(threading.current_thread().name)
        checkpoint()

    proxy.journal._checkpoint = watched  # type: ignore[method-assign]
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(12):  # 12 sessions of ~500 KB: 6 MB of new parts
            body = session_request(120, tag=f"session {i}")
            response = await client.post(proxy.base_url + CHAT_PATH, json=body)
            assert response.status_code == 200
            proxy.journal.settle()  # the request written
        await wait_until(lambda: len(threads) >= 12, what="the checkpoints")
    assert set(threads) == {t for t in threads if t.startswith("switchboard-journal")}
    # The checkpoints moved the parts from the WAL into the database file
    # while the proxy ran (without them it all waits in the WAL).
    assert (tmp_path / "journal.sqlite3").stat().st_size > 4 * 1024 * 1024
