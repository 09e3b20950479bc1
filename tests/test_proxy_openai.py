"""The proxy end to end with a `kind = "openai"` upstream: relay, retry, reroute, failures.

Real servers on 127.0.0.1 (the proxy and a scripted fake upstream), real
httpx clients. Timeouts are tiny so stalls are cheap.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_core.app import SwitchboardProxy
from proxy_core.errors import RunawayAnswer
from proxy_core.events import Event, Heartbeat
from proxy_core.openai_wire import ChunkDecoder
from support import (
    CHAT_PATH, MODEL, UPSTREAM_KEY, UPSTREAM_MODEL, Drop, FakeUpstream, Hang, Sleep, WaitFor,
    api_turn, assert_openai_error, chat_body, completion_payload, content_of, deltas,
    error_reply, finish_chunk, finish_reasons, hang_reply, json_reply, keepalive_reply,
    last_turn, openai_config, reasoning_chunk, settled_turn, sse, sse_payloads, stream_chat,
    stream_errors, text_chunk, text_reply, tool_call_chunk, usage_chunk, wait_until,
)

FIXTURES = Path(__file__).parent / "fixtures"
#: Watchdog timeouts for stall tests: short, but far above a local round trip.
FAST = {"first_token_timeout": 0.4, "idle_timeout": 0.4}


@pytest.fixture
async def fast_proxy(fake_upstream: FakeUpstream, proxy_factory: Any) -> SwitchboardProxy:
    """Like `proxy`, with 0.4 s watchdog timeouts and 3 attempts."""
    return await proxy_factory(openai_config(fake_upstream.base_url, **FAST))


def tool_calls_in(payloads: list[Any]) -> list[dict[str, Any]]:
    """Every tool-call entry of every delta, in order."""
    return [call for d in deltas(payloads) for call in d.get("tool_calls") or ()]


# -- relaying ------------------------------------------------------------------------

async def test_stream_is_relayed_as_it_arrives_not_buffered(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    release = asyncio.Event()
    fake_upstream.script(sse(text_chunk("first"), WaitFor(release), text_chunk(" second"),
                             finish_chunk("stop")))
    async with client.stream("POST", proxy.base_url + CHAT_PATH, json=chat_body()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        payloads = sse_payloads(response)
        # The upstream is blocked until we set `release`: a buffering proxy
        # would never deliver this first chunk.
        async with asyncio.timeout(3):
            first = await anext(payloads)
        assert not release.is_set()
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": "first"}
        release.set()
        async with asyncio.timeout(5):
            rest = [p async for p in payloads]
    assert content_of([first, *rest]) == "first second"
    assert finish_reasons(rest) == ["stop"]
    assert rest[-1] == "[DONE]"
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "finished" and turn["text"] == "first second"


async def test_non_streaming_request_gets_one_completion(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello world"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    # Upstream is always streamed (so the watchdog can see progress).
    (seen,) = fake_upstream.chat_requests
    assert seen.body["stream"] is True and seen.body["model"] == UPSTREAM_MODEL


async def test_upstream_answering_plain_json_is_relayed(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(json_reply(completion_payload("whole answer")),
                         json_reply(completion_payload("again")))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200
    assert content_of(payloads) == "whole answer"
    assert finish_reasons(payloads) == ["stop"] and payloads[-1] == "[DONE]"
    plain = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False))
    assert plain.json()["choices"][0]["message"]["content"] == "again"


async def test_request_body_is_forwarded_intact_except_model_and_streaming(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    body = json.loads((FIXTURES / "opencode_request.json").read_text())
    body["model"] = MODEL
    response, payloads = await stream_chat(client, proxy.base_url, body)
    assert response.status_code == 200 and payloads[-1] == "[DONE]"
    (seen,) = fake_upstream.chat_requests
    sent = dict(seen.body)
    assert sent.pop("model") == UPSTREAM_MODEL
    assert sent.pop("stream") is True
    assert sent.pop("stream_options")["include_usage"] is True
    expected = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
    assert sent == expected


def _as_written(body: dict[str, Any]) -> bytes:
    """`body` in a shape no encoder of ours writes: indented, keys in the client's order."""
    return json.dumps(body, indent=3, ensure_ascii=True).encode()


async def test_a_body_that_needs_no_change_goes_upstream_as_the_client_sent_it(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """Nothing to re-model or repair: the client's bytes are sent, not an encoding of them."""
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, upstream_model=MODEL)
                                .replace('repairs = "none"', 'repairs = "kimi"'))
    body = chat_body(stream_options={"include_usage": True}, temperature=0.5)
    for turn in range(3):  # a whole parse, then turns that extend and cut back the last
        raw = _as_written(body)
        response = await client.post(proxy.base_url + CHAT_PATH, content=raw,
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        assert fake_upstream.chat_requests[-1].raw == raw
        body = (chat_body(stream_options={"include_usage": True}, temperature=0.5) if turn
                else {**body, "messages": body["messages"] + [
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Again"}]})


@pytest.mark.parametrize("change", ["model", "no usage asked", "usage as 1", "lone surrogate",
                                    "repaired history"])
async def test_a_body_that_needs_a_change_goes_upstream_changed(
        change: str, fake_upstream: FakeUpstream, proxy_factory: Any,
        client: httpx.AsyncClient) -> None:
    config = openai_config(fake_upstream.base_url,
                           upstream_model=UPSTREAM_MODEL if change == "model" else MODEL)
    proxy = await proxy_factory(config.replace('repairs = "none"', 'repairs = "kimi"'))
    body = chat_body(stream_options={"include_usage": 1 if change == "usage as 1" else True})
    if change == "no usage asked":
        del body["stream_options"]
    if change == "repaired history":  # an assistant tool call without its reasoning
        call = {"id": "call_x", "type": "function", "function": {"name": "read", "arguments": "{}"}}
        body["messages"] += [{"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": "call_x", "content": "1"}]
    raw = _as_written(body)
    if change == "lone surrogate":
        body["messages"][-1]["content"] += "\ufffd"  # what the lone one is read as
        raw = raw.replace(b'"Say hello"', b'"Say hello\\ud800"')
    response = await client.post(proxy.base_url + CHAT_PATH, content=raw,
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    (seen,) = fake_upstream.chat_requests
    assert seen.raw != raw
    sent = dict(seen.body)
    assert sent.pop("model") == (UPSTREAM_MODEL if change == "model" else MODEL)
    assert sent.pop("stream_options") == {"include_usage": True}
    expected = {k: v for k, v in body.items() if k not in ("model", "stream_options")}
    if change == "repaired history":  # reasoning filled in, the call's id made Kimi's own
        (call,) = sent["messages"][2]["tool_calls"]
        assert sent["messages"][2]["reasoning_content"] and call["id"] == "functions.read:0"
        assert sent.pop("messages")[:2] == expected.pop("messages")[:2]
    assert sent == expected


async def test_tool_call_fragments_are_delivered_whole_in_one_delta(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(
        text_chunk("Let me look."),
        tool_call_chunk(0, id="call_abc", name="read_file", arguments=""),
        tool_call_chunk(0, arguments='{"path": '),
        tool_call_chunk(0, arguments='"src/main.py"}'),
        tool_call_chunk(1, name="list_dir", arguments='{"dir"'),  # this upstream sends no id
        tool_call_chunk(1, arguments=': "."}'),
        finish_chunk("tool_calls"),
        usage_chunk(),
    ))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200
    calls = tool_calls_in(payloads)
    assert len(calls) == 2, calls  # each call in exactly one delta
    first, second = calls
    assert first["index"] == 0 and second["index"] == 1
    assert first["id"] == "call_abc"
    assert isinstance(second["id"], str) and second["id"]
    assert first["id"] != second["id"]
    assert first["type"] == second["type"] == "function"
    assert first["function"]["name"] == "read_file"
    assert second["function"]["name"] == "list_dir"
    assert json.loads(first["function"]["arguments"]) == {"path": "src/main.py"}
    assert json.loads(second["function"]["arguments"]) == {"dir": "."}
    assert content_of(payloads) == "Let me look."
    assert finish_reasons(payloads) == ["tool_calls"]
    assert payloads[-1] == "[DONE]"
    turn = await last_turn(client, proxy.base_url)
    assert [c["name"] for c in turn["tool_calls"]] == ["read_file", "list_dir"]
    assert turn["finish_reason"] == "tool_calls"


async def test_stall_inside_a_tool_call_is_retried_transparently(
        fake_upstream: FakeUpstream, fast_proxy: SwitchboardProxy,
        client: httpx.AsyncClient) -> None:
    # Invariant 5: tool-call deltas are held until complete, so a stall in
    # the middle of one is still before the commit boundary.
    fake_upstream.script(
        sse(tool_call_chunk(0, id="call_1", name="read_file", arguments='{"pa'), Hang(), done=False),
        sse(tool_call_chunk(0, id="call_2", name="read_file", arguments='{"path": "a"}'),
            finish_chunk("tool_calls")))
    response, payloads = await stream_chat(client, fast_proxy.base_url)
    assert response.status_code == 200
    (call,) = tool_calls_in(payloads)
    assert call["id"] == "call_2" and json.loads(call["function"]["arguments"]) == {"path": "a"}
    assert stream_errors(payloads) == []
    assert len(fake_upstream.chat_requests) == 2
    turn = await last_turn(client, fast_proxy.base_url)
    assert [a["outcome"] for a in turn["attempts"]] == ["failed", "ok"]


async def test_usage_chunk_only_when_the_client_asks(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    _, asked = await stream_chat(client, proxy.base_url,
                                 chat_body(stream_options={"include_usage": True}))
    usage = [p for p in asked if isinstance(p, dict) and "usage" in p]
    assert len(usage) == 1
    # The usage chunk is the last one before [DONE], with no choices.
    assert asked[-2] is usage[0] and asked[-1] == "[DONE]"
    assert usage[0]["choices"] == []
    assert usage[0]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert content_of(asked) == "Hello world" and finish_reasons(asked) == ["stop"]

    _, plain = await stream_chat(client, proxy.base_url, chat_body())
    assert not any(isinstance(p, dict) and "usage" in p for p in plain)
    assert content_of(plain) == "Hello world" and plain[-1] == "[DONE]"
    # Either way the upstream was asked for usage, and the turn records it.
    assert all(r.body["stream_options"]["include_usage"] for r in fake_upstream.chat_requests)
    turn = await last_turn(client, proxy.base_url)
    assert turn["usage"]["prompt_tokens"] == 11


# -- headers -------------------------------------------------------------------------

async def test_upstream_gets_the_configured_key_and_headers_never_the_clients_auth(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(openai_config(
        fake_upstream.base_url, headers={"X-Title": "switchboard-tests",
                                         "HTTP-Referer": "https://example.test"}))
    client_token = "client-own-token-5551234"
    response, _ = await stream_chat(client, proxy.base_url, headers={
        "Authorization": f"Bearer {client_token}", "x-session-id": "ses_hdr"})
    assert response.status_code == 200
    (seen,) = fake_upstream.chat_requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen.headers["x-title"] == "switchboard-tests"
    assert seen.headers["http-referer"] == "https://example.test"
    assert not any(client_token in v for v in seen.headers.values())


# -- upstream errors -----------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_upstream_400_is_passed_through_without_retry(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        stream: bool) -> None:
    fake_upstream.default = error_reply(400, "messages[2]: tool result has no matching call")
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=stream))
    error = assert_openai_error(response, 400)
    assert "tool result has no matching call" in error["message"]
    assert len(fake_upstream.chat_requests) == 1
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and turn["status"] == 400
    assert len(turn["attempts"]) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_upstream_5xx_and_429_are_retried_up_to_max_attempts(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        status: int) -> None:
    fake_upstream.default = error_reply(status, "try again later", type_="server_error")
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
    assert response.status_code in (status, 502)
    error = assert_openai_error(response, response.status_code)
    assert "try again later" in error["message"]
    assert len(fake_upstream.chat_requests) == proxy.config.watchdog.max_attempts == 3
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "failed"
    assert [a["reason"] for a in turn["attempts"]] == ["initial", "retry", "retry"]
    assert {a["outcome"] for a in turn["attempts"]} == {"failed"}


async def test_a_failed_attempt_then_success_is_invisible_to_the_client(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(error_reply(502, "bad gateway", type_="server_error"))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200
    assert content_of(payloads) == "Hello world" and stream_errors(payloads) == []
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "finished"
    assert [(a["reason"], a["outcome"]) for a in turn["attempts"]] == [
        ("initial", "failed"), ("retry", "ok")]


async def test_each_attempt_records_how_long_switchboard_took_before_sending_it(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(error_reply(502, "bad gateway", type_="server_error"))
    started = time.perf_counter()
    response, _ = await stream_chat(client, proxy.base_url)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    first, second = (await last_turn(client, proxy.base_url))["attempts"]
    # The first counts from the body's last byte, the retry from its own start: two
    # stretches one after the other, both inside the client's wait.
    assert first["prepared_in"] > 0 and second["prepared_in"] > 0
    assert first["prepared_in"] + second["prepared_in"] < elapsed


async def test_unreachable_upstream_gives_502(proxy_factory: Any, client: httpx.AsyncClient) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = await proxy_factory(openai_config(f"http://127.0.0.1:{port}/v1", max_attempts=2))
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
    error = assert_openai_error(response, 502)
    assert error["code"] == "upstream_unreachable"
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and len(turn["attempts"]) == 2


# -- stalls --------------------------------------------------------------------------

async def test_hang_before_first_byte_is_retried_and_the_retry_succeeds(
        fake_upstream: FakeUpstream, fast_proxy: SwitchboardProxy,
        client: httpx.AsyncClient) -> None:
    fake_upstream.script(hang_reply())  # only the first request hangs
    started = time.monotonic()
    response, payloads = await stream_chat(client, fast_proxy.base_url)
    assert time.monotonic() - started >= FAST["first_token_timeout"]
    assert response.status_code == 200
    assert content_of(payloads) == "Hello world" and stream_errors(payloads) == []
    assert len(fake_upstream.chat_requests) == 2
    turn = await last_turn(client, fast_proxy.base_url)
    first, second = turn["attempts"]
    assert first["outcome"] == "failed" and "first token" in first["error"]
    assert second["outcome"] == "ok" and second["reason"] == "retry"
    # The hung upstream connection was closed, not leaked.
    await wait_until(lambda: fake_upstream.disconnects >= 1, what="hung upstream closed")


async def test_keepalives_alone_are_not_progress(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, max_attempts=2, **FAST))
    heartbeats: list[Event] = []
    proxy.bus.subscribe(lambda e: heartbeats.append(e) if isinstance(e, Heartbeat) else None)
    fake_upstream.default = keepalive_reply(0.05)
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
    error = assert_openai_error(response, 504)
    assert error["code"] == "upstream_timeout"
    assert len(fake_upstream.chat_requests) == 2
    assert len(heartbeats) >= 4  # the keep-alives did arrive; they just don't count
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and turn["status"] == 504


async def test_stall_after_first_output_ends_the_stream_with_an_error(
        fake_upstream: FakeUpstream, fast_proxy: SwitchboardProxy,
        client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(text_chunk("partial answer"), Hang(), done=False))
    response, payloads = await stream_chat(client, fast_proxy.base_url)
    assert response.status_code == 200
    assert content_of(payloads) == "partial answer"
    assert payloads[-1] == "[DONE]"
    assert "error" in payloads[-2]
    (error,) = stream_errors(payloads)
    assert error["message"] and error["code"] == "upstream_timeout"
    assert finish_reasons(payloads) == []  # not dressed up as a normal ending
    assert len(fake_upstream.chat_requests) == 1  # past the commit boundary: no retry
    turn = await last_turn(client, fast_proxy.base_url)
    assert turn["state"] == "failed" and turn["text"] == "partial answer"
    await wait_until(lambda: fake_upstream.disconnects >= 1, what="stalled upstream closed")


# -- broken streams ------------------------------------------------------------------

F6_ERROR = {"error": {"message": "Provider returned error: overloaded", "code": 502}}


async def test_error_inside_a_200_stream_after_output_is_an_error(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(text_chunk("Hi"), F6_ERROR))  # then [DONE], as OpenRouter does
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200
    (error,) = stream_errors(payloads)
    assert "overloaded" in error["message"]
    assert finish_reasons(payloads) == [] and payloads[-1] == "[DONE]"
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and "overloaded" in turn["error"]


async def test_error_inside_a_200_stream_before_output_is_retried(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(F6_ERROR))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "Hello world"
    turn = await last_turn(client, proxy.base_url)
    assert "overloaded" in turn["attempts"][0]["error"]
    assert turn["state"] == "finished"

    fake_upstream.default = sse(F6_ERROR)  # every attempt: the client gets an error
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
    error = assert_openai_error(response, 502)
    assert "overloaded" in error["message"]


@pytest.mark.parametrize("before_output", [True, False], ids=["before-output", "after-output"])
async def test_malformed_json_frame_is_an_error_and_the_proxy_keeps_serving(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        before_output: bool) -> None:
    steps = ["data: {not json at all\n\n"] if before_output else [
        text_chunk("ok so far"), "data: {\"choices\": [\n\n"]
    fake_upstream.default = sse(*steps)
    if before_output:
        response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
        error = assert_openai_error(response, 502)
        assert error["code"] == "upstream_protocol_error"
    else:
        response, payloads = await stream_chat(client, proxy.base_url)
        (error,) = stream_errors(payloads)
        assert error["code"] == "upstream_protocol_error" and payloads[-1] == "[DONE]"
    assert (await last_turn(client, proxy.base_url))["state"] == "failed"

    fake_upstream.default = text_reply("fine", " now")
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "fine now"


async def test_connection_dropped_mid_stream(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(text_chunk("part"), Drop()))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200
    assert content_of(payloads) == "part"
    (error,) = stream_errors(payloads)
    assert error["code"] == "upstream_unreachable" and payloads[-1] == "[DONE]"
    assert (await last_turn(client, proxy.base_url))["state"] == "failed"
    # Dropped before any output: retried transparently.
    fake_upstream.script(sse(Drop()))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "Hello world" and stream_errors(payloads) == []
    assert len(fake_upstream.chat_requests) == 3


async def test_stream_ending_without_done_or_finish_is_an_error(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    # A clean EOF in the middle of the answer is not a finished answer.
    fake_upstream.script(sse(text_chunk("trunc"), done=False))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "trunc"
    assert len(stream_errors(payloads)) == 1
    assert (await last_turn(client, proxy.base_url))["state"] == "failed"


# -- reroute -------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["503", "hang"])
async def test_second_target_takes_over_when_the_first_fails(
        make_fake_upstream: Any, proxy_factory: Any, client: httpx.AsyncClient,
        failure: str) -> None:
    primary = await make_fake_upstream(
        error_reply(503, "unavailable", type_="server_error") if failure == "503" else hang_reply())
    backup = await make_fake_upstream(text_reply("from", " backup"))
    proxy = await proxy_factory(openai_config(primary.base_url, backup.base_url, **FAST))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "from backup"
    # Retry on the same target once, then reroute down the route's targets.
    assert len(primary.chat_requests) == 2 and len(backup.chat_requests) == 1
    turn = await last_turn(client, proxy.base_url)
    detail = await api_turn(client, proxy.base_url, turn["id"])
    attempts = [(a["target"], a["reason"], a["outcome"]) for a in detail["attempts"]]
    assert attempts == [(f"primary:{UPSTREAM_MODEL}", "initial", "failed"),
                        (f"primary:{UPSTREAM_MODEL}", "retry", "failed"),
                        (f"backup:{UPSTREAM_MODEL}", "reroute", "ok")]
    assert detail["state"] == "finished"
    assert [(a["target"], a["outcome"]) for a in turn["attempts"]] == [
        (t, o) for t, _, o in attempts]  # the list shows the same attempts


# -- client going away ---------------------------------------------------------------

async def test_client_disconnect_mid_stream_closes_the_upstream(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    steps: list[Any] = [text_chunk("a")]
    for _ in range(200):  # ten seconds of slow output
        steps += [Sleep(0.05), text_chunk("b")]
    fake_upstream.script(sse(*steps))
    async with client.stream("POST", proxy.base_url + CHAT_PATH, json=chat_body()) as response:
        async with asyncio.timeout(3):
            first = await anext(sse_payloads(response))
        assert first["choices"][0]["delta"]["content"] == "a"
    # Leaving the block closed the client's connection mid-stream.
    await wait_until(lambda: fake_upstream.disconnects >= 1, timeout=3,
                     what="the upstream connection to be closed")
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed"
    assert len(fake_upstream.chat_requests) == 1


@pytest.mark.parametrize("phase", ["before-first-byte", "after-output"])
async def test_client_disconnect_while_upstream_is_silent_closes_it_promptly(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        phase: str) -> None:
    # Long watchdog: only the client's leaving can end this turn quickly.
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, first_token_timeout=20,
                                              idle_timeout=20))
    if phase == "before-first-byte":
        fake_upstream.script(hang_reply())
        request = asyncio.create_task(client.post(proxy.base_url + CHAT_PATH, json=chat_body()))
        await wait_until(lambda: fake_upstream.chat_requests, what="the upstream request")
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    else:
        fake_upstream.script(sse(text_chunk("a"), Hang(), done=False))
        async with client.stream("POST", proxy.base_url + CHAT_PATH, json=chat_body()) as resp:
            async with asyncio.timeout(3):
                await anext(sse_payloads(resp))
    await wait_until(lambda: fake_upstream.disconnects >= 1, timeout=3,
                     what="the upstream connection to be closed")
    turn = await settled_turn(client, proxy.base_url, timeout=3)
    assert turn["state"] == "failed"
    assert len(fake_upstream.chat_requests) == 1  # nobody retries for a client that left


# -- observers -----------------------------------------------------------------------

class Boom:
    """An observer that raises on every event it handles."""

    def __init__(self) -> None:
        self.calls = 0

    def _raise(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError(f"observer bug on {event.name}")

    on_TurnStarted = on_AttemptStarted = on_FirstByte = on_Chunk = _raise
    on_ToolCallRelayed = on_TurnFinished = on_TurnFailed = _raise


async def test_an_observer_that_raises_never_breaks_a_stream(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    boom = Boom()
    proxy.bus.add_observer(boom)
    proxy.bus.subscribe(lambda event: 1 / 0)
    fake_upstream.script(text_reply("one", " two", " three", delay=0.01))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200
    assert content_of(payloads) == "one two three" and payloads[-1] == "[DONE]"
    assert boom.calls >= 6  # it really was called, and raised, each time
    turn = await last_turn(client, proxy.base_url)
    assert turn["state"] == "finished"
    assert proxy.journal is not None
    assert proxy.journal.turn(turn["id"])["state"] == "finished"
    # And the next turn works too.
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "Hello world"


async def test_a_host_that_never_stops_is_relayed_whole_and_recorded_up_to_the_limit(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """A turn keeps `record_text_kb` of text and reasoning; the client gets everything."""
    proxy = await proxy_factory(openai_config(fake_upstream.base_url).replace(
        "port = 0", "port = 0\nrecord_text_kb = 1", 1))
    pieces = [f"{i:03d}" + "x" * 97 for i in range(40)]  # 4,000 characters of text
    fake_upstream.script(sse(reasoning_chunk("r" * 600), *map(text_chunk, pieces),
                             finish_chunk("stop")))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "".join(pieces)
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "finished" and turn["finish_reason"] == "stop"
    assert turn["reasoning"] == "r" * 600
    assert turn["text"] == "".join(pieces)[:1024 - 600]
    assert turn["unrecorded_chars"] == 600 + 4000 - 1024
    assert proxy.journal is not None
    stored = proxy.journal.turn(turn["id"])
    assert stored is not None
    assert (stored["text"], stored["unrecorded_chars"]) == (turn["text"], turn["unrecorded_chars"])


def runaway_call(leaked: bool, before: str = "") -> Any:
    """An answer whose one tool call never ends: 40 pieces of 4 KB, then the stream stops."""
    piece = "x" * 4096
    if leaked:
        opening = text_chunk(before + "<|tool_calls_section_begin|><|tool_call_begin|>"
                             'functions.bash:0<|tool_call_argument_begin|>{"command": "')
        rest = [text_chunk(piece) for _ in range(40)]
    else:
        opening = tool_call_chunk(0, id="call_1", name="bash", arguments='{"command": "')
        rest = [tool_call_chunk(0, arguments=piece) for _ in range(40)]
    return sse(*([text_chunk(before)] if before and not leaked else []), opening, *rest,
               finish_chunk("tool_calls"))


@pytest.mark.parametrize("leaked", [False, True], ids=["native", "leaked"])
async def test_a_tool_call_that_never_ends_is_given_up_and_retried(
        leaked: bool, fake_upstream: FakeUpstream, proxy_factory: Any,
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls are held until whole; one past the limit fails the attempt, not the memory."""
    monkeypatch.setattr("proxy_core.errors.HELD_CALL_LIMIT", 64 * 1024)
    proxy = await proxy_factory(openai_config(fake_upstream.base_url).replace(
        'repairs = "none"', 'repairs = "kimi"'))
    fake_upstream.script(runaway_call(leaked), text_reply("Done", " instead."))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "Done instead."
    assert stream_errors(payloads) == []
    turn = await settled_turn(client, proxy.base_url)
    first, second = turn["attempts"]
    assert first["outcome"] == "failed" and "runaway answer" in first["error"]
    assert second["outcome"] == "ok" and turn["state"] == "finished"


def test_the_decoder_holds_no_more_calls_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy_core.errors.HELD_CALLS_LIMIT", 3)
    decoder = ChunkDecoder()
    for index in range(3):
        decoder.feed(tool_call_chunk(index, id=f"c{index}", name="bash", arguments="{}"))
    assert len(decoder.feed(finish_chunk("tool_calls"))) == 4  # released at the finish
    for index in range(3):
        decoder.feed(tool_call_chunk(index, id=f"c{index}", name="bash", arguments="{}"))
    with pytest.raises(RunawayAnswer, match="in 4 unfinished"):
        decoder.feed(tool_call_chunk(10**9, id="c", name="bash"))


async def test_a_tool_call_that_never_ends_after_text_is_an_error_in_the_stream(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy_core.errors.HELD_CALL_LIMIT", 64 * 1024)
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    fake_upstream.script(runaway_call(False, before="Running it."))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "Running it."
    [error] = stream_errors(payloads)
    assert error["code"] == "upstream_runaway" and "runaway answer" in error["message"]
    assert len(fake_upstream.chat_requests) == 1  # output had started: not retried
    # And the proxy serves on.
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "Hello world"


async def test_a_non_streamed_answer_past_the_whole_answer_limit_is_a_clear_502(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that asked for one JSON answer gets it built whole, so only up to a limit;
    a streaming client gets the same answer in full."""
    monkeypatch.setattr("proxy_core.errors.WHOLE_ANSWER_LIMIT", 64 * 1024)
    long_answer = text_reply(*["y" * 4096] * 40)
    fake_upstream.script(long_answer)
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False))
    error = assert_openai_error(response, 502)
    assert error["code"] == "upstream_runaway" and "ask for a stream" in error["message"]
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and len(fake_upstream.chat_requests) == 1
    fake_upstream.script(long_answer)
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "y" * 4096 * 40


async def test_internal_error_fails_only_that_turn(proxy, fake_upstream, client, monkeypatch) -> None:
    """A bug inside the pipeline gives the client a 500 in OpenAI's shape; the proxy goes on."""
    import proxy_core.pipeline as pipeline

    def broken(*args, **kwargs):
        raise ValueError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "plan_for", broken)
        response = await client.post(f"{proxy.base_url}{CHAT_PATH}", json=chat_body(stream=True))
    assert response.status_code == 500
    assert "internal error" in response.json()["error"]["message"]
    turns = (await client.get(f"{proxy.base_url}/switchboard/api/turns")).json()["turns"]
    assert turns[-1]["state"] == "failed" and turns[-1]["status"] == 500
    response = await client.post(f"{proxy.base_url}{CHAT_PATH}", json=chat_body(stream=True))
    assert response.status_code == 200
