"""Shared fixtures: a fake upstream, a running proxy, an HTTP client.

Typical use::

    async def test_x(fake_upstream, proxy, client):
        fake_upstream.script(hang_reply())          # first request hangs
        response, payloads = await stream_chat(client, proxy.base_url)

For a proxy with other settings (tiny timeouts, two targets, a body limit)::

    async def test_y(make_fake_upstream, proxy_factory, client):
        a, b = await make_fake_upstream(), await make_fake_upstream()
        proxy = await proxy_factory(openai_config(a.base_url, b.base_url, max_attempts=2))

Builders for replies, chunks and configs are in `support.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from proxy_core.app import SwitchboardProxy
from proxy_core.config import parse_config
from support import UPSTREAM_KEY, UPSTREAM_KEY_ENV, FakeUpstream, Reply, openai_config

ProxyFactory = Callable[..., Awaitable[SwitchboardProxy]]


@pytest.fixture
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Sets `$SWITCHBOARD_TEST_UPSTREAM_KEY` (what `openai_config` names) and returns it."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    return UPSTREAM_KEY


@pytest.fixture
async def make_fake_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    """Factory: `await make_fake_upstream(default_reply=None)` starts another fake upstream.

    All are closed at teardown.
    """
    started: list[FakeUpstream] = []

    async def make(default: Reply | None = None) -> FakeUpstream:
        fake = FakeUpstream(default)
        await fake.start()
        started.append(fake)
        return fake

    yield make
    for fake in reversed(started):
        await fake.close()


@pytest.fixture
async def fake_upstream(make_fake_upstream: Callable[..., Awaitable[FakeUpstream]]) -> FakeUpstream:
    """One running fake upstream; by default it answers a short text stream."""
    return await make_fake_upstream()


@pytest.fixture
async def proxy_factory(tmp_path: Path, upstream_key: str) -> AsyncIterator[ProxyFactory]:
    """Factory: `await proxy_factory(toml_text, journal=None)` starts a SwitchboardProxy.

    The config is parsed with `parse_config` (source `"test.toml"`); the proxy
    binds 127.0.0.1 on an ephemeral port and journals to `journal` (default
    `tmp_path / "journal.sqlite3"`, so a second proxy in the same test
    reopens the first one's journal). Proxies still running at teardown are
    stopped. The upstream key variable is set (see `upstream_key`).
    """
    running: list[SwitchboardProxy] = []

    async def start(toml_text: str, *, journal: Path | None = None) -> SwitchboardProxy:
        config = parse_config(toml_text, "test.toml")
        settings = dataclasses.replace(config.proxy, journal=journal or tmp_path / "journal.sqlite3")
        config = dataclasses.replace(config, proxy=settings)
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0, journal=True)
        await proxy.start()
        running.append(proxy)
        return proxy

    yield start
    for proxy in reversed(running):
        if proxy._runner is not None:
            await proxy.stop()


@pytest.fixture
async def proxy(fake_upstream: FakeUpstream, proxy_factory: ProxyFactory) -> SwitchboardProxy:
    """A running proxy: route `test-model` → `primary:up-model` on `fake_upstream`.

    Watchdog: first_token_timeout = idle_timeout = 2 s, max_attempts = 3.
    """
    return await proxy_factory(openai_config(fake_upstream.base_url))


@pytest.fixture
async def client(proxy_factory: ProxyFactory) -> AsyncIterator[httpx.AsyncClient]:
    """An `httpx.AsyncClient` (10 s timeout), closed before the proxies stop."""
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c
