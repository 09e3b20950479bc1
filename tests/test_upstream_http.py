"""The OpenAI-compatible upstream's HTTP client (aiohttp's), end to end through the proxy.

TLS with a `ca_bundle`, keep-alive reuse, and proxies from the environment,
each against real servers on 127.0.0.1: the fake upstream (plain or TLS)
and a real proxy server, `pproxy` (HTTP with CONNECT, the same over TLS,
SOCKS5), started by the test. That a request really went through the
proxy is read from the proxy's own log of the connections it made.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import (
    CHAT_PATH, FakeUpstream, assert_openai_error, content_of, openai_config, stream_chat,
)

TLS = Path(__file__).parent / "fixtures" / "tls"
CERT, KEY = TLS / "localhost-cert.pem", TLS / "localhost-key.pem"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")

# pproxy installs uvloop's loop policy when it can import uvloop, and then asks
# for a loop in a way uvloop 0.23 refuses: run it on asyncio's loop.
_PPROXY = ("import sys; sys.modules['uvloop'] = None; from pproxy.server import main; "
           "sys.argv[0] = 'pproxy'; main()")


def server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERT, KEY)
    return context


def tls_config(base_url: str, *, ca_bundle: bool = True) -> str:
    text = openai_config(base_url)
    if ca_bundle:
        text = text.replace('kind = "openai"', f'kind = "openai"\nca_bundle = "{CERT}"', 1)
    return text


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test with no proxy variables (either case) from the outer environment."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class ProxyServer:
    """A `pproxy` process listening on 127.0.0.1 (`scheme` as pproxy names it)."""

    def __init__(self, scheme: str, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.scheme = scheme
        self.log = log
        args = ["-l", f"{scheme}://127.0.0.1:{self.port}", "-v"]
        if "ssl" in scheme:
            args += ["--ssl", f"{CERT},{KEY}"]
        self._out = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-c", _PPROXY, *args],
                                        stdout=self._out, stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return self.process.poll() is not None  # ended: reported below
            writer.close()
            return True
        deadline = asyncio.get_running_loop().time() + 20
        while not await listening():
            assert asyncio.get_running_loop().time() < deadline, "pproxy did not start"
            await asyncio.sleep(0.05)
        assert self.process.poll() is None, self.log.read_text()

    def relayed_to(self, port: int) -> int:
        """How many connections the proxy made to 127.0.0.1:`port` (from its log)."""
        return sum(1 for line in self.log.read_text().splitlines()
                   if f"-> 127.0.0.1:{port}" in line or f"-> localhost:{port}" in line)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._out.close()


@pytest.fixture
async def make_proxy_server(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[ProxyServer]]]:
    started: list[ProxyServer] = []

    async def make(scheme: str) -> ProxyServer:
        server = ProxyServer(scheme, tmp_path / f"pproxy-{len(started)}.log")
        started.append(server)
        await server.ready()
        return server

    yield make
    for server in started:
        server.close()


@pytest.fixture
async def tls_upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(tls=server_tls())
    await fake.start()
    yield fake
    await fake.close()


def ok(response: httpx.Response, payloads: list[Any]) -> None:
    assert response.status_code == 200 and content_of(payloads) == "Hello world", payloads


# -- TLS and keep-alive --------------------------------------------------------------

async def test_tls_upstream_trusted_through_ca_bundle(
        tls_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(tls_config(tls_upstream.base_url))
    ok(*await stream_chat(client, proxy.base_url))
    assert len(tls_upstream.chat_requests) == 1


async def test_tls_upstream_with_an_untrusted_certificate_is_a_clear_502(
        tls_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(tls_config(tls_upstream.base_url, ca_bundle=False))
    response = await client.post(proxy.base_url + CHAT_PATH,
                                 json={"model": "test-model", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]})
    error = assert_openai_error(response, 502)
    assert error["code"] == "upstream_unreachable"
    assert "certificate" in error["message"].lower(), error
    assert tls_upstream.chat_requests == []


async def test_turns_reuse_one_keep_alive_connection_to_the_upstream(
        fake_upstream: FakeUpstream, proxy: Any, client: httpx.AsyncClient) -> None:
    for _ in range(4):
        ok(*await stream_chat(client, proxy.base_url))
    assert len(fake_upstream.chat_requests) == 4
    assert len(fake_upstream.peers) == 1, fake_upstream.peers


async def test_an_upstream_that_refuses_connections_is_a_502_unreachable(
        proxy_factory: Any, client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    proxy = await proxy_factory(openai_config(f"http://127.0.0.1:{port}/v1"))
    response = await client.post(proxy.base_url + CHAT_PATH,
                                 json={"model": "test-model", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]})
    error = assert_openai_error(response, 502)
    assert error["code"] == "upstream_unreachable" and str(port) in error["message"]


# -- proxies from the environment ------------------------------------------------------

async def test_http_proxy_carries_a_plain_http_upstream(
        fake_upstream: FakeUpstream, make_proxy_server: Any, proxy_factory: Any,
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = await make_proxy_server("http")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{relay.port}")
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    ok(*await stream_chat(client, proxy.base_url))
    assert relay.relayed_to(fake_upstream.port) >= 1


@pytest.mark.parametrize("proxy_scheme", ["http", "http+ssl"], ids=["http-proxy", "https-proxy"])
async def test_https_proxy_tunnels_a_tls_upstream_with_connect(
        tls_upstream: FakeUpstream, make_proxy_server: Any, proxy_factory: Any,
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, proxy_scheme: str) -> None:
    """`HTTPS_PROXY=http://…` and `https://…` (TLS to the proxy too): CONNECT, then TLS inside."""
    relay = await make_proxy_server(proxy_scheme)
    url_scheme = "https" if "ssl" in proxy_scheme else "http"
    monkeypatch.setenv("HTTPS_PROXY", f"{url_scheme}://localhost:{relay.port}")
    proxy = await proxy_factory(tls_config(tls_upstream.base_url))
    ok(*await stream_chat(client, proxy.base_url))
    assert relay.relayed_to(tls_upstream.port) >= 1
    assert len(tls_upstream.chat_requests) == 1


async def test_all_proxy_is_used_when_no_scheme_proxy_is_set(
        fake_upstream: FakeUpstream, make_proxy_server: Any, proxy_factory: Any,
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = await make_proxy_server("http")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{relay.port}")
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    ok(*await stream_chat(client, proxy.base_url))
    assert relay.relayed_to(fake_upstream.port) >= 1


async def test_no_proxy_bypasses_the_proxy(
        fake_upstream: FakeUpstream, make_proxy_server: Any, proxy_factory: Any,
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = await make_proxy_server("http")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{relay.port}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    ok(*await stream_chat(client, proxy.base_url))
    assert relay.relayed_to(fake_upstream.port) == 0
    assert len(fake_upstream.chat_requests) == 1


async def test_a_socks_proxy_is_refused_with_a_clear_error_not_spoken_to_as_http(
        fake_upstream: FakeUpstream, make_proxy_server: Any, proxy_factory: Any,
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's client has no SOCKS: say so (and how to get around it), once, no retries."""
    relay = await make_proxy_server("socks5")
    monkeypatch.setenv("ALL_PROXY", f"socks5://127.0.0.1:{relay.port}")
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    response = await client.post(proxy.base_url + CHAT_PATH,
                                 json={"model": "test-model", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]})
    error = assert_openai_error(response, 502)
    assert error["code"] == "unsupported_proxy", error
    assert "socks5://" in error["message"] and "NO_PROXY" in error["message"]
    (turn,) = proxy.store.recent()
    assert len(turn.attempts) == 1  # not retried: it would fail the same way
    assert relay.relayed_to(fake_upstream.port) == 0 and fake_upstream.requests == []


def test_proxy_credentials_never_reach_the_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from yarl import URL

    from proxy_core.upstreams.openai import ProxySettingError, proxy_for

    monkeypatch.setenv("ALL_PROXY", "socks5://user:s3cret@127.0.0.1:1080")
    with pytest.raises(ProxySettingError) as caught:
        proxy_for(URL("https://api.example.com/v1/chat/completions"))
    assert "s3cret" not in caught.value.message and "user" not in caught.value.message
    monkeypatch.setenv("HTTPS_PROXY", "proxy.internal:3128")  # no scheme: http://
    assert proxy_for(URL("https://api.example.com/v1")) == URL("http://proxy.internal:3128")
