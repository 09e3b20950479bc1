"""The simulator's Converse face on the wire, and the faults added with it.

Raw HTTP against a running simulator (frames decoded with botocore's own
`EventStreamBuffer`): Bedrock's validation rules, authentication, the
`throttle` and `stream_error` faults on both faces, and the OpenAI face's
`stream_error` reaching a client through the proxy as a clear error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from botocore.eventstream import EventStreamBuffer

from proxy_core.simulator import RunningSimulator, SimulatorConfig, start_simulator
from proxy_core.simulator.config import FAULT_NAMES
from support import settled_turn

MODEL = "moonshotai.kimi-k2.5"
AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=0"}
TOOLS = {"tools": [{"toolSpec": {"name": "bash", "inputSchema": {"json": {
    "type": "object", "properties": {"command": {"type": "string"},
                                     "description": {"type": "string"}},
    "required": ["command"]}}}}]}


@pytest.fixture
async def sim_factory() -> AsyncIterator[Any]:
    started: list[RunningSimulator] = []

    async def make(**fields: Any) -> RunningSimulator:
        fields.setdefault("models", (MODEL, "kimi-k2.5"))
        fields.setdefault("chunk_delay", 0.0)
        sim = await start_simulator(SimulatorConfig(**fields))
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.close()


async def converse(sim: RunningSimulator, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                   model: str = MODEL) -> tuple[int, httpx.Headers, list[tuple[dict[str, str], Any]]]:
    """POST converse-stream; (status, headers, [(frame headers, JSON payload)]) or the error body."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{sim.origin}/model/{model}/converse-stream", json=body,
                                     headers=AUTH if headers is None else headers)
    if response.status_code != 200:
        return response.status_code, response.headers, [({}, response.json())]
    buffer = EventStreamBuffer()
    buffer.add_data(response.content)
    return 200, response.headers, [(m.headers, json.loads(m.payload)) for m in buffer]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def test_the_new_fault_names_are_known() -> None:
    assert {"throttle", "stream_error"} <= FAULT_NAMES


async def test_a_stream_is_framed_as_bedrock_sends_it(sim_factory: Any) -> None:
    sim = await sim_factory(reasoning=True)
    status, headers, frames = await converse(sim, {"messages": [user("go")], "toolConfig": TOOLS,
                                                   "system": [{"text": "Working directory: /w"}]})
    assert status == 200 and headers["Content-Type"] == "application/vnd.amazon.eventstream"
    kinds = [h[":event-type"] for h, _ in frames]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert {"contentBlockDelta", "contentBlockStart", "contentBlockStop"} <= set(kinds)
    starts = [p for h, p in frames if h[":event-type"] == "contentBlockStart"]
    assert starts == [{"contentBlockIndex": 2, "start": {"toolUse": {
        "toolUseId": "functions.bash:0", "name": "bash"}}}]
    assert frames[-2][1] == {"stopReason": "tool_use"}
    assert set(frames[-1][1]["usage"]) == {"inputTokens", "outputTokens", "totalTokens"}


@pytest.mark.parametrize(("messages", "problem"), [
    ([{"role": "assistant", "content": [{"text": "hi"}]}], "must start with a user message"),
    ([user("a"), user("b")], "must alternate between user and assistant"),
    ([user("a"), {"role": "assistant", "content": []}], "messages.1 is empty"),
    ([user("a"), {"role": "assistant", "content": [{"text": " "}]}], "messages.1.content.0 is blank"),
    ([user("a"), {"role": "assistant", "content": [{"toolUse": {
        "toolUseId": "call 1", "name": "bash", "input": {}}}]}], "toolUseId' failed to satisfy"),
    ([user("a"), {"role": "assistant", "content": [{"toolUse": {
        "toolUseId": "t1", "name": "bash", "input": {}}}]}, user("no result")],
     "Expected toolResult blocks at messages.2.content for the following Ids: t1"),
    ([user("a"), {"role": "assistant", "content": [{"text": "x"}]},
      {"role": "user", "content": [{"toolResult": {"toolUseId": "t9", "content": [{"text": "r"}]}}]}],
     "exceeds the number of toolUse blocks"),
])
async def test_bedrock_validation_rules(sim_factory: Any, messages: list[dict[str, Any]],
                                        problem: str) -> None:
    sim = await sim_factory()
    status, headers, frames = await converse(sim, {"messages": messages, "toolConfig": TOOLS})
    assert status == 400 and headers["x-amzn-ErrorType"].startswith("ValidationException:")
    assert problem in frames[0][1]["message"]


async def test_tool_blocks_need_a_tool_config(sim_factory: Any) -> None:
    sim = await sim_factory()
    messages = [user("a"), {"role": "assistant", "content": [{"toolUse": {
        "toolUseId": "t1", "name": "bash", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "r"}]}}]}]
    status, _, frames = await converse(sim, {"messages": messages})
    assert status == 400 and "toolConfig field must be defined" in frames[0][1]["message"]
    status, _, _ = await converse(sim, {"messages": messages, "toolConfig": TOOLS})
    assert status == 200


async def test_authentication(sim_factory: Any) -> None:
    sim = await sim_factory()
    status, headers, frames = await converse(sim, {"messages": [user("a")]}, headers={})
    assert status == 403 and headers["x-amzn-ErrorType"].startswith("AccessDeniedException")
    guarded = await sim_factory(bearer_token="tok-123456")
    assert (await converse(guarded, {"messages": [user("a")]}))[0] == 403, "SigV4 is not the token"
    ok = await converse(guarded, {"messages": [user("a")]}, headers={"Authorization": "Bearer tok-123456"})
    assert ok[0] == 200
    async with httpx.AsyncClient() as client:
        body = {"model": "kimi-k2.5", "messages": [{"role": "user", "content": "a"}]}
        refused = await client.post(f"{guarded.base_url}/chat/completions", json=body)
        allowed = await client.post(f"{guarded.base_url}/chat/completions", json=body,
                                    headers={"Authorization": "Bearer tok-123456"})
    assert refused.status_code == 401 and allowed.status_code == 200


async def test_throttle_fires_on_the_first_sightings_only(sim_factory: Any) -> None:
    sim = await sim_factory(faults=("throttle",), fault_rate=1.0, hang_repeats=2)
    body = {"messages": [user("a")], "toolConfig": TOOLS}
    statuses = [(await converse(sim, body))[0] for _ in range(3)]
    assert statuses == [429, 429, 200]
    async with httpx.AsyncClient() as client:
        chat = {"model": "kimi-k2.5", "messages": [{"role": "user", "content": "b"}]}
        openai = [(await client.post(f"{sim.base_url}/chat/completions", json=chat)).status_code
                  for _ in range(3)]
    assert openai == [429, 429, 200]
    assert sim.stats.fault_counts()["throttle"] == 4


async def test_stream_error_ends_the_stream_with_an_exception_frame(sim_factory: Any) -> None:
    sim = await sim_factory(faults=("stream_error",), fault_rate=1.0)
    status, _, frames = await converse(sim, {"messages": [user("a")], "toolConfig": TOOLS})
    assert status == 200
    last_headers, last_payload = frames[-1]
    assert last_headers[":message-type"] == "exception"
    assert last_headers[":exception-type"] == "modelStreamErrorException"
    assert last_payload["originalStatusCode"] == 500
    assert any(h.get(":event-type") == "contentBlockDelta" for h, _ in frames[:-1])
    assert not any(h.get(":event-type") == "messageStop" for h, _ in frames)


async def test_openai_face_stream_error_reaches_the_client_as_an_error(proxy_factory: Any) -> None:
    """The same fault on the OpenAI face: `data: {"error": ...}` mid-stream (OpenRouter's F6)."""
    proxy = await proxy_factory("""
[proxy]
port = 0
[upstreams.sim]
kind = "simulator"
faults = ["stream_error"]
fault_rate = 1.0
chunk_delay = 0.0
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
""")
    body = {"model": "kimi-k2.5", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        errors = [json.loads(line[6:])["error"] for line in lines
                  if line != "data: [DONE]" and "error" in json.loads(line[6:])]
        assert len(errors) == 1 and "The model stream failed" in errors[0]["message"]
        assert errors[0]["code"] == "upstream_stream_error"
        turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed"
