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
            head.append(message.get("content"))
        elif isinstance(message, dict) and message.get("role") == "user":
            head.append(message.get("content"))
            break
    blob = json.dumps(head, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
