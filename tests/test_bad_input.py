"""Bad client input gets a clear OpenAI-shaped error, and the proxy carries on serving.

Also the Host/Origin guard: a web page must not be able to drive the proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import tracemalloc
import zlib
from typing import Any

import httpx
import pytest

from proxy_core import request_body
from proxy_core.app import SwitchboardProxy
from proxy_core.errors import ClientRequestError
from support import (
    API, CHAT_PATH, FakeUpstream, api_turns, assert_openai_error, chat_body, content_of,
    openai_config, packed, stream_chat,
)


@pytest.fixture
async def small_proxy(fake_upstream: FakeUpstream, proxy_factory: Any) -> SwitchboardProxy:
    """A proxy whose body limit is 0.01 MB (10,485 bytes)."""
    return await proxy_factory(openai_config(fake_upstream.base_url, max_body_mb=0.01))


def journal_states(proxy: SwitchboardProxy) -> dict[str, str]:
    """Turn id → state, read from the journal file by a separate connection."""
    with sqlite3.connect(proxy.config.proxy.journal) as conn:
        return dict(conn.execute("SELECT id, state FROM turns").fetchall())


async def good_turn(client: httpx.AsyncClient, proxy: SwitchboardProxy) -> None:
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "Hello world"


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed JSON", b'{"model": "test-model", "messages": [', "not valid JSON"),
    ("not UTF-8", b'{"model": "\xff\xfe"}', "not valid JSON"),
    ("empty body", b"", "empty"),
    ("array body", raw([chat_body()]), "JSON object"),
    ("string body", raw("hello"), "JSON object"),
    ("null body", b"null", "JSON object"),
    ("missing model", raw({"messages": [{"role": "user", "content": "hi"}]}), "model"),
    ("model not a string", raw(chat_body(model=42)), "model"),  # type: ignore[arg-type]
    ("empty model", raw(chat_body(model="")), "model"),
    ("missing messages", raw({"model": "test-model"}), "messages"),
    ("messages not a list", raw({"model": "test-model", "messages": "hi"}), "messages"),
    ("messages empty", raw({"model": "test-model", "messages": []}), "messages"),
    ("message not an object", raw({"model": "test-model", "messages": ["hi"]}), "messages[0]"),
    ("message without role", raw({"model": "test-model", "messages": [{"content": "x"}]}),
     "messages[0].role"),
    ("stream not a boolean", raw(chat_body(stream="yes")), "stream"),  # type: ignore[arg-type]
    ("stream_options not an object", raw(chat_body(stream_options=[1])), "stream_options"),
    ("tools not an array", raw(chat_body(tools={"a": 1})), "tools"),
]


@pytest.mark.parametrize(("body", "fragment"), [(b, f) for _, b, f in BAD_BODIES],
                         ids=[name for name, _, _ in BAD_BODIES])
async def test_bad_request_body_gets_400_and_the_proxy_keeps_serving(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        body: bytes, fragment: str) -> None:
    await good_turn(client, proxy)
    response = await client.post(proxy.base_url + CHAT_PATH, content=body,
                                 headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert fragment in error["message"], error
    assert error["type"] == "invalid_request_error"
    await good_turn(client, proxy)
    # Nothing was sent upstream for the bad request and no turn was made of it;
    # the turns before and after are in the API and in the journal.
    assert len(fake_upstream.chat_requests) == 2
    turns = await api_turns(client, proxy.base_url)
    assert [t["state"] for t in turns] == ["finished", "finished"]
    assert journal_states(proxy) == {t["id"]: "finished" for t in turns}


async def test_body_over_max_body_mb_gets_413(
        fake_upstream: FakeUpstream, small_proxy: SwitchboardProxy,
        client: httpx.AsyncClient) -> None:
    await good_turn(client, small_proxy)
    huge = chat_body("x" * 50_000)
    response = await client.post(small_proxy.base_url + CHAT_PATH, json=huge)
    error = assert_openai_error(response, 413)
    assert "max_body_mb" in error["message"]
    await good_turn(client, small_proxy)
    assert len(fake_upstream.chat_requests) == 2
    turns = await api_turns(client, small_proxy.base_url)
    assert len(turns) == 2 and len(journal_states(small_proxy)) == 2


@pytest.mark.parametrize(("header", "pack"), [
    ("gzip", lambda d: packed(d, "gzip")),
    ("x-gzip", lambda d: packed(d, "gzip")),
    ("gzip", lambda d: packed(d[:40], "gzip") + packed(d[40:], "gzip")),  # two members
    ("deflate", lambda d: packed(d, "deflate")),
    ("deflate", lambda d: packed(d, "raw deflate")),  # as some clients send it
    ("gzip, deflate", lambda d: packed(packed(d, "gzip"), "deflate")),
    ("identity", lambda d: d),
], ids=["gzip", "x-gzip", "gzip-members", "deflate", "deflate-raw", "gzip-then-deflate",
        "identity"])
async def test_compressed_bodies_are_read_as_sent(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        header: str, pack: Any) -> None:
    body = chat_body("packed, then read")
    response = await client.post(proxy.base_url + CHAT_PATH, content=pack(raw(body)),
                                 headers={"content-type": "application/json",
                                          "content-encoding": header})
    assert response.status_code == 200, response.text
    assert fake_upstream.chat_requests[-1].body["messages"] == body["messages"]
    turn, = await api_turns(client, proxy.base_url)
    detail = (await client.get(f"{proxy.base_url}{API}/turns/{turn['id']}")).json()
    assert detail["request"]["messages"] == body["messages"]


@pytest.mark.parametrize(("header", "body", "status", "code"), [
    ("br", b"\x0b\x02\x80{}\x03", 415, "unsupported_content_encoding"),
    ("zstd", b"(\xb5/\xfd", 415, "unsupported_content_encoding"),
    ("gzip, compress", b"{}", 415, "unsupported_content_encoding"),
    ("gzip", b'{"model": "test-model"}', 400, "invalid_content_encoding"),
    ("deflate", b"\x78\x9c\x01\x02", 400, "invalid_content_encoding"),
    ("gzip", zlib.compress(b"x")[:-3], 400, "invalid_content_encoding"),
], ids=["br", "zstd", "compress", "not-gzip", "cut-deflate", "cut-gzip"])
async def test_bodies_that_cannot_be_decoded_get_a_clear_error(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        header: str, body: bytes, status: int, code: str) -> None:
    response = await client.post(proxy.base_url + CHAT_PATH, content=body,
                                 headers={"content-type": "application/json",
                                          "content-encoding": header})
    error = assert_openai_error(response, status)
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert fake_upstream.chat_requests == []
    await good_turn(client, proxy)


async def test_a_small_body_that_inflates_past_the_limit_gets_413(
        fake_upstream: FakeUpstream, small_proxy: SwitchboardProxy,
        client: httpx.AsyncClient) -> None:
    bomb = packed(b" " * (8 << 20), "gzip")
    assert len(bomb) < 10_000
    response = await client.post(small_proxy.base_url + CHAT_PATH, content=bomb,
                                 headers={"content-type": "application/json",
                                          "content-encoding": "gzip"})
    assert assert_openai_error(response, 413)["code"] == "request_too_large"
    await good_turn(client, small_proxy)


def test_inflating_never_builds_more_than_the_limit() -> None:
    """The memory a compressed body can take is the limit's, however far it inflates."""
    bomb = packed(b"\0" * (256 << 20), "gzip")  # 256 MB in ~250 KB
    limit = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ClientRequestError) as raised:
            request_body.decode(bomb, "gzip", limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.status == 413
    assert peak < 3 * limit, peak
    exact = b"x" * limit
    assert request_body.decode(packed(exact, "gzip"), "gzip", limit) == exact
    with pytest.raises(ClientRequestError):
        request_body.decode(packed(exact + b"x", "gzip"), "gzip", limit)


@pytest.mark.parametrize("where", ["top", "message"])
async def test_json_nested_past_the_parsers_limit_gets_400(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        where: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    message = '{"role": "user", "content": "hi"%s}' % (f', "meta": {deep}' * (where == "message"))
    extra = f', "response_format": {deep}' * (where == "top")
    body = f'{{"model": "test-model", "messages": [{message}]{extra}}}'.encode()
    response = await client.post(proxy.base_url + CHAT_PATH, content=body,
                                 headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert "levels deep" in error["message"], error
    reroute = await client.post(f"{proxy.base_url}{API}/turns/none/reroute",
                                content=f'{{"target": {deep}}}')
    assert reroute.status_code == 400 and "must be JSON" in reroute.json()["error"]["message"]
    await good_turn(client, proxy)


async def test_a_malformed_http_request_is_one_warning_line(
        proxy: SwitchboardProxy, client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp answers it; the log says who and why, without a traceback or the bytes."""
    secret = "sk-" + "s3cret" * 2000  # a header line over aiohttp's 8 KB
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    with caplog.at_level(logging.INFO):
        writer.write(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {secret}\r\n\r\n".encode())
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400")
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.levelno == logging.WARNING and line.exc_info is None
    message = line.getMessage()
    assert "refused a malformed HTTP request from 127.0.0.1" in message, message
    assert "s3cret" not in message
    await good_turn(client, proxy)


async def test_unknown_model_gets_404_model_not_found(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(model="gpt-9"))
    error = assert_openai_error(response, 404)
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"] and "test-model" in error["message"]
    assert fake_upstream.chat_requests == []
    await good_turn(client, proxy)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1/completions", 404),
    ("GET", "/v1/nope", 404),
    ("POST", "/chat/completions", 404),
    ("GET", "/", 404),
    ("GET", API + "/nope", 404),
    ("GET", CHAT_PATH, 405),
    ("PUT", CHAT_PATH, 405),
    ("DELETE", "/v1/models", 405),
    ("POST", API + "/turns", 405),
])
async def test_unknown_path_or_method_gets_openai_shaped_error(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        method: str, path: str, status: int) -> None:
    response = await client.request(method, proxy.base_url + path)
    error = assert_openai_error(response, status)
    if status == 404:
        assert path in error["message"]
    await good_turn(client, proxy)


async def test_models_lists_the_routes(proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    response = await client.get(proxy.base_url + "/v1/models")
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["test-model"]


# -- the Host / Origin guard ---------------------------------------------------------

GUARDED = [("GET", API + "/turns"), ("GET", API + "/health"), ("POST", CHAT_PATH),
           ("GET", "/v1/models")]
HOSTILE = [{"Origin": "http://evil.example"}, {"Host": "evil.example"},
           {"Host": "evil.example:4141"}, {"Origin": "null"},
           {"Origin": "http://127.0.0.1.evil.example"}]


@pytest.mark.parametrize("headers", HOSTILE, ids=lambda h: f"{next(iter(h))}={next(iter(h.values()))}")
@pytest.mark.parametrize(("method", "path"), GUARDED, ids=lambda v: v)
async def test_requests_from_web_pages_are_refused(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        method: str, path: str, headers: dict[str, str]) -> None:
    body = chat_body() if method == "POST" else None
    response = await client.request(method, proxy.base_url + path, json=body, headers=headers)
    error = assert_openai_error(response, 403)
    assert error["code"] == "forbidden"
    assert fake_upstream.chat_requests == []
    assert (await api_turns(client, proxy.base_url)) == []


@pytest.mark.parametrize("headers", [{}, {"Origin": "http://localhost:3000"},
                                     {"Origin": "http://127.0.0.1:4141"},
                                     {"Host": "localhost"}], ids=str)
async def test_local_origins_are_allowed(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        headers: dict[str, str]) -> None:
    response = await client.get(proxy.base_url + API + "/health", headers=headers)
    assert response.status_code == 200
    response, payloads = await stream_chat(client, proxy.base_url, headers=headers)
    assert response.status_code == 200 and content_of(payloads) == "Hello world"
