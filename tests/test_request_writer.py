"""`RequestWriter` takes the row ids of a part list it wrote before whole — never at the
cost of a request that reads back differently or a session's parts miscounted.

Hypothesis writes the requests of a few sessions that grow, start again (a
restart parses every message anew), send repaired copies of their messages
and share a system prompt, with rollbacks and forgetting (pruning) between;
after each, every request reads back as written and every part's count is
the number of sessions whose requests refer to it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core import journal_db
from proxy_core.contents import Namer
from proxy_core.secrets import Redactor

SYSTEM = {"role": "system", "content": "You are a coding agent."}
TOOLS = [{"type": "function", "function": {"name": "read"}}]

OPS = st.lists(st.tuples(st.sampled_from(["grow", "grow", "grow", "restart", "repaired",
                                          "rollback", "prune"]),
                         st.integers(0, 2), st.integers(1, 3)), max_size=30)


class Sessions:
    """The messages each session has sent so far (objects reused turn after turn)."""

    def __init__(self) -> None:
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self.repaired: dict[int, dict[str, Any]] = {}
        self.count = 0

    def grow(self, session: int, more: int) -> list[dict[str, Any]]:
        messages = self.messages.setdefault(session, [SYSTEM])
        for _ in range(more):
            self.count += 1
            messages.append({"role": "user", "content": f"message {self.count} of {session}"})
        self.messages[session] = messages = list(messages)
        return messages

    def restart(self, session: int) -> list[dict[str, Any]]:
        """The same conversation parsed anew: equal messages, new objects."""
        self.messages[session] = json.loads(json.dumps(self.grow(session, 0)))
        return self.messages[session]

    def repaired_copy(self, session: int) -> list[dict[str, Any]]:
        """What history repairs send: every other message changed, the same object each time."""
        return [self.repaired.setdefault(id(m), {**m, "content": m["content"] + " (repaired)"})
                if i % 2 else m for i, m in enumerate(self.grow(session, 0))]


def request(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": "m", "messages": messages, "tools": TOOLS, "stream": True}


# A session's new parts are counted one by one or in a batch, by how many there are:
# each way alone, then as it chooses.
@pytest.mark.parametrize("batch_from", [1, 10**6, journal_db.RequestWriter.BATCH_FROM])
@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_requests_read_back_as_written_and_parts_are_counted_per_session(
        batch_from: int, ops: Any) -> None:
    redactor = Redactor()
    conn = sqlite3.connect(":memory:", isolation_level=None)
    journal_db.create(conn, redactor)
    namer, writer, sessions = Namer(redactor), journal_db.RequestWriter(), Sessions()
    writer.BATCH_FROM = batch_from
    written: dict[str, tuple[str, dict[str, Any]]] = {}  # request id -> (session, request)
    for number, (op, session, more) in enumerate(ops):
        if op == "prune":  # as retention prunes a whole session: the writer forgets
            gone = [rid for rid, (owner, _) in written.items() if owner == f"s{session}"]
            rows = [row for (row,) in conn.execute(
                f"SELECT rid FROM turn_requests WHERE id IN ({','.join('?' * len(gone))})",
                gone)]
            conn.execute("BEGIN")
            journal_db.release_session(conn, f"s{session}", rows)
            conn.execute("COMMIT")
            for request_id in gone:
                del written[request_id]
            writer.forget()
            if more > 1:  # the journal's namer forgets too; the writer must not need it
                namer.forget()
            continue
        if op == "restart":
            messages = sessions.restart(session)
        elif op == "repaired":
            messages = sessions.repaired_copy(session)
        else:
            messages = sessions.grow(session, more)
        body = request(messages)
        prepared = namer.prepare(body)
        conn.execute("BEGIN")
        assert writer.write(conn, f"r{number}", f"s{session}", prepared,
                            lambda part, body=body: namer.body_of(body, part))
        if op == "rollback":
            conn.execute("ROLLBACK")
            writer.forget()
            continue
        conn.execute("COMMIT")
        writer.commit()
        written[f"r{number}"] = (f"s{session}", json.loads(json.dumps(body)))

    for request_id, (_, body) in written.items():
        (text,) = conn.execute("SELECT request FROM requests WHERE id = ?",
                               (request_id,)).fetchone()
        assert json.loads(text) == body
    referring: dict[int, set[str]] = {}
    for request_id, (session_id, _) in written.items():
        (parts,) = conn.execute("SELECT parts FROM turn_requests WHERE id = ?",
                                (request_id,)).fetchone()
        for ids in json.loads(parts).values():
            for content in ids:
                referring.setdefault(content, set()).add(session_id)
    pairs: dict[int, set[str]] = {}
    for session_id, content in conn.execute("SELECT session_id, content FROM session_parts"):
        pairs.setdefault(content, set()).add(session_id)
    assert pairs == referring
    counts = dict(conn.execute("SELECT id, n FROM content_refs WHERE n > 0"))
    assert counts == {content: len(s) for content, s in referring.items()}


def test_a_list_that_extends_one_written_takes_its_ids_whole() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    journal_db.create(conn, Redactor())
    namer, writer, sessions = Namer(Redactor()), journal_db.RequestWriter(), Sessions()
    looked_up: list[int] = []
    content = writer._content

    def counting(*args: Any) -> int:
        looked_up.append(1)
        return content(*args)

    writer._content = counting  # type: ignore[method-assign]
    for turn in range(5):
        body = request(sessions.grow(0, 2))
        conn.execute("BEGIN")
        writer.write(conn, f"r{turn}", "s", namer.prepare(body), lambda part: "")
        conn.execute("COMMIT")
        writer.commit()
        # After the first turn, only the two new messages are looked up one by one.
        assert len(looked_up) == (len(body["messages"]) + 1 if turn == 0 else 2)
        looked_up.clear()
    # What it remembers is bounded: a list per field here, none waiting for a commit...
    assert writer._lists.sizes() == [1, 1]
    assert not writer._new_lists
    # ... and a few per first part, however many lists part ways after it.
    for branch in range(10):
        body = request([SYSTEM, {"role": "user", "content": f"branch {branch}"}])
        conn.execute("BEGIN")
        writer.write(conn, f"b{branch}", "s", namer.prepare(body), lambda part: "")
        conn.execute("COMMIT")
        writer.commit()
    assert max(writer._lists.sizes()) == writer.LISTS_PER_START
