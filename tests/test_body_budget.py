"""The body budget: request bytes handled at once are bounded, whatever clients send.

Unit tests of `BodyBudget`'s admission (first come, first served; alone
always fits; shrinking and cancelling let the next in), then a real proxy
with a 1 MB budget whose third concurrent request waits for room, a body
whose `Content-Length` is over the limit refused before it is read, and a
large body's share kept until the journal has written it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import Future
from typing import Any

import httpx
import pytest

from proxy_core.app import SwitchboardProxy
from proxy_core.body_budget import JOURNAL_WAIT, BodyBudget
from support import (
    API, CHAT_PATH, FakeUpstream, WaitFor, chat_body, content_of, openai_config, sse,
    stream_chat, text_chunk, wait_until,
)

MB = 1024 * 1024


# -- admission ---------------------------------------------------------------------

async def test_shares_that_fit_are_taken_at_once_and_the_rest_wait_in_order() -> None:
    budget = BodyBudget(100)
    first = await budget.take(60)
    second = await budget.take(40)
    assert budget.in_use == 100
    third = asyncio.create_task(budget.take(30))
    fourth = asyncio.create_task(budget.take(10))  # would fit after 30, but comes later
    await wait_until(lambda: budget.waiting == 2)
    first.release()
    await wait_until(lambda: third.done() and fourth.done())
    assert budget.in_use == 40 + 30 + 10 and budget.waited == 2
    second.release()
    third.result().release()
    fourth.result().release()
    assert budget.in_use == 0


async def test_the_log_says_when_requests_start_to_wait_but_not_for_each_one(
        caplog: pytest.LogCaptureFixture) -> None:
    budget = BodyBudget(2 * MB)
    held = await budget.take(2 * MB)
    with caplog.at_level("WARNING", logger="proxy_core.body_budget"):
        waiters = [asyncio.create_task(budget.take(MB)) for _ in range(3)]
        await wait_until(lambda: budget.waiting == 3)
    said = [r.getMessage() for r in caplog.records if r.name == "proxy_core.body_budget"]
    assert said == ["1 request(s) waiting for room: 2.0 MB of request bodies are being handled,"
                    " [proxy] max_inflight_mb allows 2.0 MB (1 waited so far)"]
    held.release()
    for waiter in waiters:  # two fit at once: each gives its share back in turn
        (await waiter).release()
    assert budget.in_use == 0


async def test_a_later_small_request_does_not_pass_a_waiting_large_one() -> None:
    budget = BodyBudget(100)
    held = await budget.take(90)
    large = asyncio.create_task(budget.take(50))
    await wait_until(lambda: budget.waiting == 1)
    small = asyncio.create_task(budget.take(5))  # fits now, but the large one was first
    await wait_until(lambda: budget.waiting == 2)
    assert not small.done()
    held.release()
    await wait_until(lambda: large.done() and small.done())


async def test_a_share_larger_than_the_budget_is_taken_when_nothing_else_is_held() -> None:
    budget = BodyBudget(100)
    small = await budget.take(1)
    huge = asyncio.create_task(budget.take(500))
    await wait_until(lambda: budget.waiting == 1)
    small.release()
    share = await asyncio.wait_for(huge, 5)
    assert budget.in_use == 500
    share.release()
    assert budget.in_use == 0


async def test_shrinking_a_share_lets_the_next_request_in() -> None:
    budget = BodyBudget(100)
    share = await budget.take(100)  # a chunked body: the limit until it is read
    waiting = asyncio.create_task(budget.take(50))
    await wait_until(lambda: budget.waiting == 1)
    share.shrink(20)  # it was 20 bytes
    await asyncio.wait_for(waiting, 5)
    assert budget.in_use == 70
    share.shrink(30)  # never grows
    assert share.size == 20 and budget.in_use == 70
    share.release()
    share.release()  # once only
    assert budget.in_use == 50


async def test_a_request_cancelled_while_waiting_gives_its_place_to_the_next() -> None:
    budget = BodyBudget(100)
    held = await budget.take(80)
    gone = asyncio.create_task(budget.take(90))
    after = asyncio.create_task(budget.take(20))
    await wait_until(lambda: budget.waiting == 2)
    gone.cancel()  # its client went away
    await asyncio.wait_for(after, 5)  # 80 + 20 fits once the 90 is out of the way
    assert budget.in_use == 100 and budget.waiting == 0
    with pytest.raises(asyncio.CancelledError):
        await gone
    held.release()
    after.result().release()
    assert budget.in_use == 0


async def test_a_request_let_in_just_as_it_is_cancelled_gives_its_share_back() -> None:
    budget = BodyBudget(100)
    held = await budget.take(100)
    waiter = asyncio.create_task(budget.take(60))
    await wait_until(lambda: budget.waiting == 1)
    held.release()  # lets the waiter in...
    waiter.cancel()  # ...and it is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0


async def test_release_after_waits_for_another_threads_future() -> None:
    budget = BodyBudget(100)
    share = await budget.take(70)
    done: Future[None] = Future()
    share.release_after(done)
    assert budget.in_use == 70
    threading.Thread(target=done.set_result, args=(None,)).start()
    await wait_until(lambda: budget.in_use == 0)


# -- through a real proxy ------------------------------------------------------------

def budget_config(base_url: str) -> str:
    """A route to `base_url` with a 0.5 MB body limit and a 1 MB budget."""
    return openai_config(base_url, max_body_mb=0.5, first_token_timeout=30,
                         idle_timeout=30).replace("max_body_mb = 0.5",
                                                  "max_body_mb = 0.5\nmax_inflight_mb = 1")


def body_of(kb: int, text: str) -> bytes:
    """A chat request of about `kb` KB."""
    body = chat_body(text)
    body["messages"].insert(0, {"role": "system", "content": "x" * (kb * 1024)})
    return json.dumps(body).encode()


async def health(client: httpx.AsyncClient, proxy: SwitchboardProxy) -> dict[str, Any]:
    response = await client.get(proxy.base_url + API + "/health")
    return response.json()["request_bytes"]  # type: ignore[no-any-return]


async def test_a_request_that_does_not_fit_waits_until_an_earlier_one_ends(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(budget_config(fake_upstream.base_url))
    go = asyncio.Event()
    fake_upstream.default = sse(text_chunk("held "), WaitFor(go), text_chunk("then done"))
    bodies = [body_of(400, f"request {i}") for i in range(3)]  # 3 x 400 KB; 1 MB fits two

    async def send(body: bytes) -> str:
        async with client.stream("POST", proxy.base_url + CHAT_PATH, content=body,
                                 headers={"Content-Type": "application/json"}) as response:
            assert response.status_code == 200
            text = ""
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    payload = json.loads(line[6:])
                    text += "".join(c["delta"].get("content") or "" for c in payload["choices"])
            return text

    sends = [asyncio.create_task(send(body)) for body in bodies]
    await wait_until(lambda: len(fake_upstream.chat_requests) == 2, timeout=10)
    status = await wait_for_health(client, proxy, lambda s: s["waiting"] == 1)
    assert status["limit_bytes"] == MB and status["in_use_bytes"] > 800 * 1024
    assert len(fake_upstream.chat_requests) == 2  # the third is still waiting
    go.set()
    assert await asyncio.wait_for(asyncio.gather(*sends), 20) == ["held then done"] * 3
    status = await wait_for_health(client, proxy, lambda s: s["in_use_bytes"] == 0)
    assert status["waited"] == 1 and status["waiting"] == 0
    # The proxy serves on.
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and "then done" in content_of(payloads)


async def wait_for_health(client: httpx.AsyncClient, proxy: SwitchboardProxy,
                          ok: Any) -> dict[str, Any]:
    """The budget's status in `/health`, once `ok(status)` holds."""
    async def status() -> dict[str, Any] | None:
        seen = await health(client, proxy)
        return seen if ok(seen) else None

    return await wait_until(status, timeout=10, what="the body budget's status")  # type: ignore[no-any-return]


async def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(
        fake_upstream: FakeUpstream, proxy_factory: Any) -> None:
    proxy = await proxy_factory(budget_config(fake_upstream.base_url))
    # 100 MB announced, a few bytes sent: the answer must not wait for the rest.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
    status, payload = await raw_exchange(proxy, head, [b'{"model"'], 0)
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    error = payload["error"]
    assert error["code"] == "request_too_large" and "max_body_mb" in error["message"]
    assert fake_upstream.chat_requests == []


async def test_a_large_body_keeps_its_share_until_the_journal_has_written_it(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, first_token_timeout=30,
                                              idle_timeout=30))
    journal = proxy.journal
    assert journal is not None
    # The raw answer is the last thing the journal writes for a turn: hold it there.
    entered, gate = threading.Event(), threading.Event()
    write_wire = journal._write_wire_of

    def held(*args: Any) -> None:
        entered.set()
        gate.wait(10)
        write_wire(*args)

    monkeypatch.setattr(journal, "_write_wire_of", held)
    body = body_of(JOURNAL_WAIT // 1024 + 64, "a large history")
    try:
        response = await client.post(proxy.base_url + CHAT_PATH, content=body,
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == 200  # the client has its whole answer...
        assert await asyncio.to_thread(entered.wait, 10)
        status = await health(client, proxy)
        assert status["in_use_bytes"] == len(body)  # ...the journal is still writing it
    finally:
        gate.set()
    await wait_for_health(client, proxy, lambda s: s["in_use_bytes"] == 0)


async def test_a_small_body_gives_its_share_back_when_its_turn_ends(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    journal = proxy.journal
    assert journal is not None
    gate = threading.Event()
    write_wire = journal._write_wire_of
    monkeypatch.setattr(journal, "_write_wire_of", lambda *a: (gate.wait(10), write_wire(*a)))
    try:
        response, payloads = await stream_chat(client, proxy.base_url)
        assert response.status_code == 200
        assert (await health(client, proxy))["in_use_bytes"] == 0
    finally:
        gate.set()


async def test_a_request_without_a_body_never_waits() -> None:
    budget = BodyBudget(100)
    held = await budget.take(100)
    waiting = asyncio.create_task(budget.take(50))
    await wait_until(lambda: budget.waiting == 1)
    await asyncio.wait_for(budget.take(0), 5)  # a health check, say
    assert budget.waiting == 1
    held.release()
    (await waiting).release()


# -- a body that stops arriving ------------------------------------------------------

def timeout_config(base_url: str, seconds: float) -> str:
    return budget_config(base_url).replace("max_inflight_mb = 1",
                                           f"max_inflight_mb = 1\nbody_timeout = {seconds}")


async def raw_exchange(proxy: SwitchboardProxy, head: bytes,
                       pieces: list[bytes], pause: float) -> tuple[bytes, dict[str, Any]]:
    """Send `head`, then each of `pieces` `pause` seconds apart, then nothing more; the
    status line and JSON body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(head)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = int(next(line.split(b":")[1] for line in answer.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        payload = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        return answer.split(b"\r\n")[0], payload
    finally:
        writer.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_that_stops_arriving_is_refused_and_gives_its_share_back(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        framing: str) -> None:
    proxy = await proxy_factory(timeout_config(fake_upstream.base_url, 0.3))
    if framing == "chunked":
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"8\r\n{\"model\"\r\n"
    else:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        piece = b"{\"model\""
    status, payload = await raw_exchange(proxy, head, [piece], 0)
    assert status == b"HTTP/1.1 408 Request Timeout"
    error = payload["error"]
    assert error["code"] == "request_timeout" and "body_timeout" in error["message"]
    await wait_for_health(client, proxy, lambda s: s["in_use_bytes"] == 0 and s["waiting"] == 0)
    assert fake_upstream.chat_requests == []
    response, payloads = await stream_chat(client, proxy.base_url)  # and serves on
    assert response.status_code == 200 and content_of(payloads) == "Hello world"


async def test_a_body_that_keeps_arriving_slowly_is_read_to_its_end(
        fake_upstream: FakeUpstream, proxy_factory: Any) -> None:
    proxy = await proxy_factory(timeout_config(fake_upstream.base_url, 1.0))
    body = json.dumps(chat_body("slowly", stream=False)).encode()
    pieces = [body[i:i + 4] for i in range(0, len(body), 4)][:25]
    pieces.append(body[4 * 25:])  # 26 pieces, 0.1 s apart: 2.5 s, past the 1 s timeout
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    status, payload = await raw_exchange(proxy, head, pieces, 0.1)
    assert status == b"HTTP/1.1 200 OK"
    assert payload["choices"][0]["message"]["content"] == "Hello world"
