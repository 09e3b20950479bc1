"""Support for property-based (hypothesis) tests against a running proxy.

Hypothesis runs many examples inside one synchronous test function, so the
servers can't live in pytest-asyncio's per-test loop. `BackgroundProxy`
runs a scripted fake upstream (`support.FakeUpstream`) and a real
`SwitchboardProxy` on their own event loop in a thread, on 127.0.0.1; tests
talk to them with a synchronous `httpx.Client`, as any client would.
Below it, the strategies for what clients send (`conversations`, `JSON`),
shared by the tests that throw it at the proxy and at the Converse translation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from hypothesis import strategies as st

from proxy_core.app import SwitchboardProxy
from proxy_core.config import parse_config
from support import CHAT_PATH, UPSTREAM_KEY, UPSTREAM_KEY_ENV, FakeUpstream, Reply, chat_body

T = TypeVar("T")


class BackgroundProxy:
    """A fake upstream and a proxy (configured by `make_toml(upstream_base_url)`) in a thread."""

    def __init__(self, make_toml: Callable[[str], str], journal: Path) -> None:
        self._make_toml = make_toml
        self.journal = journal
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="background proxy",
                                        daemon=True)
        self.fake: FakeUpstream | None = None
        self.proxy: SwitchboardProxy | None = None

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the servers' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> BackgroundProxy:
        self._thread.start()

        async def start() -> None:
            self.fake = FakeUpstream()
            await self.fake.start()
            config = parse_config(self._make_toml(self.fake.base_url), "fuzz.toml")
            config = dataclasses.replace(
                config, proxy=dataclasses.replace(config.proxy, journal=self.journal))
            self.proxy = SwitchboardProxy(config, host="127.0.0.1", port=0, journal=True)
            await self.proxy.start()

        self.run(start)
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self.proxy is not None:
                await self.proxy.stop()
            if self.fake is not None:
                await self.fake.close()

        try:
            self.run(stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def base_url(self) -> str:
        assert self.proxy is not None
        return self.proxy.base_url

    def script(self, *replies: Reply) -> None:
        """Answer the next upstream requests with `replies` (see `FakeUpstream.script`)."""
        assert self.fake is not None
        fake = self.fake

        async def script() -> None:
            fake._script.clear()
            fake.script(*replies)

        self.run(script)

    def upstream_requests(self) -> int:
        assert self.fake is not None
        return len(self.fake.chat_requests)

    def journal_states(self) -> dict[str, str]:
        """Turn id → state, read from the journal file by a separate connection."""
        with sqlite3.connect(self.journal) as conn:
            return dict(conn.execute("SELECT id, state FROM turns").fetchall())

    def api_turns(self, client: httpx.Client) -> list[dict[str, Any]]:
        response = client.get(self.base_url + "/switchboard/api/turns", params={"limit": 1000})
        assert response.status_code == 200, response.text
        return response.json()["turns"]

    def good_turn(self, client: httpx.Client) -> None:
        """A normal streamed turn through the proxy works (it keeps serving)."""
        self.script()
        with client.stream("POST", self.base_url + CHAT_PATH, json=chat_body()) as response:
            assert response.status_code == 200
            body = b"".join(response.iter_bytes())
        assert b"Hello" in body and body.rstrip().endswith(b"data: [DONE]"), body[-300:]


@contextmanager
def running_proxy(make_toml: Callable[[str], str], journal: Path) -> Iterator[BackgroundProxy]:
    """A started `BackgroundProxy` (upstream key set), stopped on exit: a module fixture's body."""
    with upstream_key_env():
        proxy = BackgroundProxy(make_toml, journal)
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.stop()


@contextmanager
def upstream_key_env() -> Iterator[str]:
    """Set the upstream key variable that `support.openai_config` names, for a module."""
    old = os.environ.get(UPSTREAM_KEY_ENV)
    os.environ[UPSTREAM_KEY_ENV] = UPSTREAM_KEY
    try:
        yield UPSTREAM_KEY
    finally:
        if old is None:
            os.environ.pop(UPSTREAM_KEY_ENV, None)
        else:
            os.environ[UPSTREAM_KEY_ENV] = old


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The `{"error": {...}}` of a response, checked for OpenAI's shape."""
    assert response.headers.get("content-type", "").startswith("application/json"), (
        response.status_code, response.text[:300])
    error = json.loads(response.content)["error"]
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert "code" in error
    return error


# -- what clients send, right or wrong (hypothesis strategies) --------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)

ROLES = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function"])
ANY_ROLE = ROLES | st.text(max_size=12)
BROKEN_ARGS = st.sampled_from([
    '{"path": "a.py"', '{"path": "a.py"}{"path": "b.py"}', "", "null", "[1, 2]",
    '{"a": 1,}', "```json\n{\"a\": 1}\n```", "{'a': True}", '{"a": "unterminated',
    '{"a": tru', "not json at all", '{"nested": {"deep": [1, 2, {"x": ',
]) | st.text(max_size=30)


@st.composite
def conversations(draw: st.DrawFn, roles: st.SearchStrategy[str] = ROLES) -> list[dict[str, Any]]:
    """Conversations an agent might send, right or wrong: any roles, tool calls with
    broken arguments and repeated ids, results that answer the call before them, an
    earlier call, a call answered already or nothing, empty and odd content."""
    messages: list[dict[str, Any]] = []
    call_ids: list[str] = []  # of every call so far, latest last
    for i in range(draw(st.integers(1, 7))):
        role = draw(roles)
        message: dict[str, Any] = {"role": role}
        message["content"] = draw(st.none() | st.text(max_size=40) | st.just("") | st.lists(
            st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
            max_size=2))
        if role == "assistant" and draw(st.booleans()):
            message["tool_calls"] = [
                {"id": draw(st.sampled_from([f"call_{i}_{j}", f"functions.read:{j}", "x"])),
                 "type": "function",
                 "function": {"name": draw(st.sampled_from(["read", "bash", "edit"])),
                              "arguments": draw(BROKEN_ARGS | st.dictionaries(
                                  st.text(max_size=5), st.integers(), max_size=2))}}
                for j in range(draw(st.integers(1, 3)))]
            call_ids += [call["id"] for call in message["tool_calls"]]
        if role == "tool":
            message["tool_call_id"] = draw(st.sampled_from(
                [*call_ids[-3:], f"call_{i - 1}_0", "call_nowhere", "functions.read:0"]))
        messages.append(message)
    return messages
