"""Grouping turns into agent sessions.

opencode sends `x-session-id: ses_...` on every request of a session; other
clients don't, so their turns are grouped by a fingerprint of how the
conversation starts (system prompt and first user message), which stays the
same as the history grows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .lru import LRU

SESSION_HEADERS = ("x-session-id", "x-session-affinity")
#: opencode names the session a subagent's session was started from.
PARENT_HEADERS = ("x-parent-session-id",)


def session_id_for(headers: Mapping[str, str], messages: list[Any]) -> str:
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()[:128]
    return "fp_" + conversation_fingerprint(messages)


def parent_session_id_for(headers: Mapping[str, str]) -> str | None:
    """The session this one was started from (a subagent's parent), if the client says."""
    for name in PARENT_HEADERS:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()[:128]
    return None


def conversation_fingerprint(messages: list[Any]) -> str:
    head: list[Any] = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            head.append(message)
        elif isinstance(message, dict) and message.get("role") == "user":
            head.append(message)
            break
    key = tuple(map(id, head))
    kept = _fingerprints.get(key)
    if kept is not None and all(a is b for a, b in zip(kept[0], head, strict=True)):
        return kept[1]
    blob = json.dumps([m.get("content") for m in head], sort_keys=True, default=str).encode()
    fingerprint = hashlib.sha256(blob).hexdigest()[:12]
    # An agent resends the same message objects each turn (`RequestParser`): the
    # fingerprint of its ~10 KB system prompt is worked out once, not every turn.
    # The messages are held with it, so their ids cannot name other objects meanwhile;
    # by their size too, so that clients sending huge first messages cannot fill memory.
    _fingerprints.put(key, (tuple(head), fingerprint), len(blob))
    return fingerprint


#: Conversation starts whose fingerprints are kept: 64, and 64 MB of them (a start
#: over 16 MB is hashed on every turn instead).
_fingerprints: LRU[tuple[int, ...], tuple[tuple[Any, ...], str]] = LRU(
    64 * 1024 * 1024, 64, largest=16 * 1024 * 1024)
