"""Tool-call ids: Kimi's native `functions.NAME:IDX` form and client ids.

Kimi expects the ids in its history in its own form, where IDX counts every
tool call in the dialog from 0 (a foreign id such as `call_59ad...` makes it
emit raw tokens). Clients keep the ids Switchboard gave them; the native
form is derived from a call's position in the history, so the upward map
needs no memory, and the downward map mints a fresh client id per call.
"""

from __future__ import annotations

import re
import uuid

_KIMI_ID = re.compile(r"^functions\.(?P<name>.+):(?P<idx>\d+)$")


def kimi_id(name: str, index: int) -> str:
    return f"functions.{name}:{index}"


def is_kimi_id(call_id: str) -> bool:
    return _KIMI_ID.match(call_id) is not None


def new_client_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]
