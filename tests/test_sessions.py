"""Grouping turns into sessions (`proxy_core/sessions.py`): the fingerprint of how a
conversation starts, worked out once per set of message objects."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from proxy_core.sessions import conversation_fingerprint, session_id_for

_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    "content": st.one_of(st.text(max_size=20), st.none(),
                         st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                         "text": st.text(max_size=5)}),
                                  max_size=2))}), max_size=6)


def _from_scratch(messages: list[dict[str, Any]]) -> str:
    head: list[Any] = []
    for message in messages:
        if message["role"] in ("system", "developer"):
            head.append(message["content"])
        elif message["role"] == "user":
            head.append(message["content"])
            break
    return hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


@given(st.lists(_messages, min_size=1, max_size=4))
def test_the_fingerprint_is_what_the_head_gives_whichever_objects_carry_it(
        conversations: list[list[dict[str, Any]]]) -> None:
    for messages in conversations:
        expected = _from_scratch(messages)
        assert conversation_fingerprint(messages) == expected
        assert conversation_fingerprint(list(messages)) == expected  # the same objects again
        copies = [dict(m) for m in messages]  # equal messages, new objects
        assert conversation_fingerprint(copies) == expected


def test_a_session_header_wins_and_the_fingerprint_follows_the_system_prompt() -> None:
    system = {"role": "system", "content": "agent"}
    user = {"role": "user", "content": "fix the bug"}
    assert session_id_for({"x-session-id": " ses_1 "}, [system, user]) == "ses_1"
    first = session_id_for({}, [system, user])
    grown = session_id_for({}, [system, user, {"role": "assistant", "content": "ok"}])
    assert first == grown and first.startswith("fp_")
    assert session_id_for({}, [{"role": "system", "content": "other"}, user]) != first


def test_the_starts_kept_for_fingerprints_are_bounded_by_their_size() -> None:
    """The kept starts hold their message objects: huge first messages must not pile up."""
    from proxy_core.sessions import _fingerprints
    _fingerprints.clear()
    small = [{"role": "user", "content": f"task {i}"} for i in range(100)]
    for message in small:
        conversation_fingerprint([message])
    assert len(_fingerprints) == 64  # the newest 64 starts
    huge = {"role": "user", "content": "x" * (17 << 20)}
    expected = _from_scratch([huge])
    assert conversation_fingerprint([huge]) == expected == conversation_fingerprint([huge])
    assert _fingerprints.bytes < 1 << 20  # worked out each time, never kept
    for i in range(8):
        conversation_fingerprint([{"role": "user", "content": f"{i}" + "y" * (15 << 20)}])
    assert _fingerprints.bytes <= 64 << 20 and len(_fingerprints) < 8
