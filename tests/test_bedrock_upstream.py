"""`kind = "bedrock"`: the real boto3 client against the simulator's Converse face.

Real servers on 127.0.0.1: the proxy, and the simulator speaking Bedrock's
binary event stream (over TLS, because botocore sends a bearer token only
over HTTPS; the test certificate is `fixtures/tls/`). The AWS environment
is isolated per test: no config files, no instance metadata, and either
`AWS_BEARER_TOKEN_BEDROCK` or planted SigV4 keys.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.eventstream import EventStreamBuffer

from proxy_core.app import SwitchboardProxy
from proxy_core.config import parse_config
from proxy_core.errors import (
    ConfigError, UpstreamConnectError, UpstreamProtocolError, UpstreamStatusError, UpstreamStreamError,
)
from proxy_core.secrets import RedactingFilter
from proxy_core.simulator import RunningSimulator, SimulatorConfig, start_simulator
from proxy_core.simulator.converse_face import converse_log, event_frame, exception_frame
from proxy_core.simulator.script import CALC_V1
from proxy_core.upstreams.bedrock import BedrockUpstream
from support import collect_answer, settled_turn, wait_until

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
CERT = FIXTURES / "tls" / "localhost-cert.pem"
KEY = FIXTURES / "tls" / "localhost-key.pem"
OPENCODE = json.loads((FIXTURES / "opencode_request.json").read_text())
BEDROCK_MODEL = "moonshotai.kimi-k2.5"
TOKEN = "ABSKtest-bedrock-api-key-0123456789abcdef"
MARKERS = ("<|tool_call", "<|tool_calls_section", "<function=")
THREAD_PREFIX = "switchboard-bedrock-"

SimFactory = Callable[..., Awaitable[RunningSimulator]]


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS config files, no instance metadata, no inherited credentials."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bearer(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", TOKEN)
    return TOKEN


@pytest.fixture(autouse=True)
async def no_stray_threads() -> AsyncIterator[None]:
    """Every boto3 worker thread a test started has ended shortly after it."""
    yield
    await wait_until(lambda: not _workers(), timeout=3.0, what="bedrock worker threads to end")


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """`await make_sim(tls=True, **SimulatorConfig fields)`: a simulator serving the Converse face."""
    started: list[RunningSimulator] = []

    async def make(*, tls: bool = True, **fields: Any) -> RunningSimulator:
        fields.setdefault("models", (BEDROCK_MODEL,))
        fields.setdefault("chunk_delay", 0.0)
        fields.setdefault("seed", 7)
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(CERT, KEY)
        sim = await start_simulator(SimulatorConfig(**fields), ssl_context=context)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.close()


def bedrock_toml(endpoint: str, *, model: str = BEDROCK_MODEL, first_token_timeout: float = 5.0,
                 idle_timeout: float = 5.0, max_attempts: int = 3, extra: str = "",
                 repairs: str = "auto") -> str:
    ca = f'ca_bundle = "{CERT}"' if endpoint.startswith("https") else ""
    return f"""
[proxy]
host = "127.0.0.1"
port = 0
[watchdog]
first_token_timeout = {first_token_timeout}
idle_timeout = {idle_timeout}
max_attempts = {max_attempts}
[upstreams.converse]
kind = "bedrock"
region = "us-east-1"
endpoint_url = "{endpoint}"
{ca}
{extra}
[[routes]]
model = "kimi-k2.5"
targets = ["converse:{model}"]
repairs = "{repairs}"
"""


def opening() -> list[dict[str, Any]]:
    """opencode's real system prompt and first user message."""
    return [dict(m) for m in OPENCODE["messages"][:2]]


async def chat(client: httpx.AsyncClient, proxy: SwitchboardProxy, messages: list[dict[str, Any]],
               *, tools: bool = True, stream: bool = True, **extra: Any) -> tuple[int, dict[str, Any]]:
    """One completion through the proxy, collected: (status, {text, reasoning, calls, finish, error, usage})."""
    body: dict[str, Any] = {"model": "kimi-k2.5", "messages": messages, "stream": stream, **extra}
    if tools:
        body["tools"] = OPENCODE["tools"]
    if stream:
        body["stream_options"] = {"include_usage": True}
    out: dict[str, Any] = {"text": "", "reasoning": "", "calls": [], "finish": None, "error": None,
                           "usage": None}
    url = f"{proxy.base_url}/v1/chat/completions"
    if not stream:
        response = await client.post(url, json=body)
        payload = response.json()
        if response.status_code != 200:
            out["error"] = payload["error"]
            return response.status_code, out
        message = payload["choices"][0]["message"]
        out.update(text=message.get("content") or "", calls=message.get("tool_calls") or [],
                   finish=payload["choices"][0]["finish_reason"], usage=payload.get("usage"),
                   reasoning=message.get("reasoning_content") or "")
        return 200, out
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            out["error"] = json.loads(await response.aread())["error"]
            return response.status_code, out
        out.update(await collect_answer(response))
    return 200, out


def answered(messages: list[dict[str, Any]], got: dict[str, Any], result: str = "ok") -> None:
    """Append the assistant's tool call and its result, as an agent would."""
    messages.append({"role": "assistant", "content": got["text"] or None,
                     "tool_calls": [{k: c[k] for k in ("id", "type", "function")} for c in got["calls"]]})
    for call in got["calls"]:
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20.0) as c:
        yield c


# -- streams ------------------------------------------------------------------------------

async def test_clean_stream_with_a_tool_call(bearer: str, make_sim: SimFactory, proxy_factory: Any,
                                             client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    status, got = await chat(client, proxy, opening(), max_tokens=32000, top_p=0.95)
    assert status == 200, got["error"]
    assert got["text"] == "I'll start by creating the calculator module."
    assert got["finish"] == "tool_calls" and len(got["calls"]) == 1
    call = got["calls"][0]
    assert call["function"]["name"] == "write" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"])["content"] == CALC_V1
    assert got["usage"]["prompt_tokens"] > 0 and got["usage"]["total_tokens"] > got["usage"]["prompt_tokens"]

    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "finished" and len(turn["attempts"]) == 1
    assert 0 < turn["attempts"][0]["prepared_in"] < 1.0  # translated, then handed to boto3
    assert turn["tool_calls"][0]["upstream_id"] == "functions.write:0"
    seen = converse_log(sim.app).requests[-1]
    assert (seen.operation, seen.model, seen.auth) == ("converse-stream", BEDROCK_MODEL, "bearer")
    assert seen.body["system"][0]["text"].startswith("You are OpenCode")
    assert {t["toolSpec"]["name"] for t in seen.body["toolConfig"]["tools"]} >= {"bash", "write", "read"}
    assert seen.body["inferenceConfig"] == {"maxTokens": 32000, "topP": 0.95}


async def test_reasoning_and_a_plain_side_request(bearer: str, make_sim: SimFactory,
                                                  proxy_factory: Any, client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer, reasoning=True)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    status, got = await chat(client, proxy, opening())
    assert status == 200 and got["reasoning"].startswith("The user wants a small tested module.")
    status, side = await chat(client, proxy, [
        {"role": "system", "content": "You are a title generator."},
        {"role": "user", "content": "Generate a title for this conversation:\n"},
        {"role": "user", "content": '"build a calculator"'}], tools=False)
    assert status == 200 and side["text"] == "Scripted calculator task"
    assert side["finish"] == "stop" and not side["calls"]
    merged = converse_log(sim.app).requests[-1].body["messages"]
    assert len(merged) == 1 and len(merged[0]["content"]) == 2, "two user messages merged into one"


async def test_the_whole_task_with_every_step_leaking(bearer: str, make_sim: SimFactory,
                                                      proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """Seed 000 on Converse: the calls leak into the text and stop with end_turn; all repaired.

    The history Switchboard sends back carries Kimi's native ids, which pass
    Bedrock's toolUseId pattern, and alternates as Converse requires (the
    face rejects it otherwise).
    """
    sim = await make_sim(bearer_token=bearer, faults=("leak",), fault_rate=1.0, reasoning=True)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    messages = opening()
    for step in range(10):
        status, got = await chat(client, proxy, messages)
        assert status == 200, f"step {step}: {got['error']}"
        assert got["finish"] == "tool_calls" and len(got["calls"]) == 1, f"step {step}: {got}"
        assert not any(m in got["text"] + got["reasoning"] for m in MARKERS), got
        answered(messages, got)
    status, final = await chat(client, proxy, messages)
    assert status == 200 and final["finish"] == "stop" and final["text"].startswith("Done.")

    variants = {f.detail for f in sim.stats.faults if f.kind == "leak"}
    assert len(variants) >= 8, f"the leak forms were exercised: {variants}"
    turns = (await client.get(f"{proxy.base_url}/switchboard/api/turns")).json()["turns"]
    assert sum(r["kind"] == "leaked_tool_call" for t in turns for r in t["repairs"]) == 10
    last = converse_log(sim.app).requests[-1].body
    uses = [b["toolUse"]["toolUseId"] for m in last["messages"] for b in m["content"] if "toolUse" in b]
    assert uses == [f"functions.{c}:{i}" for i, c in enumerate(
        ["write", "write", "bash", "read", "edit", "read", "edit", "bash", "glob", "grep"])]


@pytest.mark.parametrize("repairs", ["none", "auto"])
async def test_history_with_empty_content_is_accepted(bearer: str, make_sim: SimFactory,
                                                      proxy_factory: Any, client: httpx.AsyncClient,
                                                      repairs: str) -> None:
    """F5: Bedrock refuses empty content; the translation never sends any, repairs or not."""
    sim = await make_sim(bearer_token=bearer)
    proxy = await proxy_factory(bedrock_toml(sim.origin, repairs=repairs))
    messages = opening()
    status, got = await chat(client, proxy, messages)
    answered(messages, got, result="")
    messages[-2]["content"] = [{"type": "text", "text": ""}]
    messages += [{"role": "assistant", "content": ""}, {"role": "user", "content": "go on"},
                 {"role": "user", "content": [{"type": "text", "text": " "}]}]
    status, got = await chat(client, proxy, messages)
    assert status == 200, got["error"]
    sent = converse_log(sim.app).requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[2]["content"][0]["toolResult"]["content"] == [{"text": "(no output)"}]


async def test_non_streaming_client_and_the_converse_operation(bearer: str, make_sim: SimFactory,
                                                               proxy_factory: Any,
                                                               client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer, reasoning=True)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    status, got = await chat(client, proxy, opening(), stream=False)
    assert status == 200 and got["finish"] == "tool_calls" and got["calls"][0]["function"]["name"] == "write"
    assert converse_log(sim.app).requests[-1].operation == "converse-stream", \
        "the pipeline streams upstream even for a non-streaming client"

    whole = await proxy_factory(bedrock_toml(sim.origin, extra="stream = false"))
    status, got = await chat(client, whole, opening(), stream=False)
    assert status == 200, got["error"]
    assert converse_log(sim.app).requests[-1].operation == "converse"
    assert got["finish"] == "tool_calls" and got["calls"][0]["function"]["name"] == "write"
    assert got["reasoning"].startswith("The user wants") and got["usage"]["prompt_tokens"] > 0
    status, streamed = await chat(client, whole, opening())
    assert status == 200 and streamed["text"] == "I'll start by creating the calculator module."
    assert converse_log(sim.app).requests[-1].operation == "converse"


# -- failures -----------------------------------------------------------------------------

async def test_a_mid_stream_exception_is_a_clear_client_error(bearer: str, make_sim: SimFactory,
                                                              proxy_factory: Any,
                                                              client: httpx.AsyncClient) -> None:
    """F6: Bedrock's `exception` frame after output started ends the stream with an error."""
    sim = await make_sim(bearer_token=bearer, faults=("stream_error",), fault_rate=1.0)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    status, got = await chat(client, proxy, opening())
    assert status == 200 and got["text"], "some text had reached the client"
    assert got["finish"] is None and not got["calls"]
    error = got["error"]
    assert error is not None, "not a silent end"
    assert "modelStreamErrorException" in error["message"] and "retry" in error["message"]
    assert error["code"] == "upstream_stream_error"
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and "modelStreamErrorException" in turn["error"]


async def test_throttling_is_retried(bearer: str, make_sim: SimFactory, proxy_factory: Any,
                                     client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer, faults=("throttle",), fault_rate=1.0)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    status, got = await chat(client, proxy, opening())
    assert status == 200 and got["calls"], got["error"]
    turn = await settled_turn(client, proxy.base_url)
    assert [a["outcome"] for a in turn["attempts"]] == ["failed", "ok"]
    assert "ThrottlingException" in turn["attempts"][0]["error"]


async def test_persistent_throttling_ends_with_429(bearer: str, make_sim: SimFactory,
                                                   proxy_factory: Any, client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer, faults=("throttle",), fault_rate=1.0, hang_repeats=99)
    proxy = await proxy_factory(bedrock_toml(sim.origin, max_attempts=2))
    status, got = await chat(client, proxy, opening())
    assert status == 429
    assert "ThrottlingException" in got["error"]["message"] and "Too many requests" in got["error"]["message"]
    turn = await settled_turn(client, proxy.base_url)
    assert len(turn["attempts"]) == 2 and turn["state"] == "failed"
    assert len(converse_log(sim.app).requests) == 2, "botocore itself did not retry"


async def test_a_validation_error_is_a_400_and_not_retried(bearer: str, make_sim: SimFactory,
                                                           proxy_factory: Any,
                                                           client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer)
    proxy = await proxy_factory(bedrock_toml(sim.origin, model="moonshotai.no-such-model"))
    status, got = await chat(client, proxy, opening())
    assert status == 400
    assert "ValidationException" in got["error"]["message"]
    assert "The provided model identifier is invalid." in got["error"]["message"]
    turn = await settled_turn(client, proxy.base_url)
    assert len(turn["attempts"]) == 1
    assert len(converse_log(sim.app).requests) == 1


async def test_a_request_converse_cannot_express_is_a_400(bearer: str, make_sim: SimFactory,
                                                          proxy_factory: Any,
                                                          client: httpx.AsyncClient) -> None:
    sim = await make_sim(bearer_token=bearer)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    messages = opening() + [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]
    status, got = await chat(client, proxy, messages)
    assert status == 400 and "does not fetch image URLs" in got["error"]["message"]
    assert not converse_log(sim.app).requests, "nothing was sent"


async def test_images_reach_bedrock_as_bytes(bearer: str, make_sim: SimFactory, proxy_factory: Any,
                                             client: httpx.AsyncClient) -> None:
    import base64
    png = b"\x89PNG\r\n\x1a\n-test-image-"
    sim = await make_sim(bearer_token=bearer)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    messages = opening()
    messages[1] = {"role": "user", "content": [
        {"type": "text", "text": messages[1]["content"]},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}]}
    status, got = await chat(client, proxy, messages)
    assert status == 200 and got["calls"], got["error"]
    image = converse_log(sim.app).requests[-1].body["messages"][0]["content"][1]["image"]
    assert image["format"] == "png" and base64.b64decode(image["source"]["bytes"]) == png


async def test_a_hung_stream_is_retried_and_its_thread_released(bearer: str, make_sim: SimFactory,
                                                                proxy_factory: Any,
                                                                client: httpx.AsyncClient) -> None:
    """F2 on Converse: 200 after a tool result, then nothing. The watchdog retries; the blocked
    boto3 read is interrupted, so the worker thread ends and the connection closes."""
    sim = await make_sim(bearer_token=bearer, faults=("hang",), fault_rate=1.0)
    proxy = await proxy_factory(bedrock_toml(sim.origin, first_token_timeout=0.5))
    messages = opening()
    status, got = await chat(client, proxy, messages)
    assert status == 200 and got["calls"]
    answered(messages, got)
    status, got = await chat(client, proxy, messages)
    assert status == 200 and got["calls"], got["error"]
    turn = await settled_turn(client, proxy.base_url)
    assert [a["outcome"] for a in turn["attempts"]] == ["failed", "ok"]
    assert "no first token" in turn["attempts"][0]["error"]
    await sim.wait_for(lambda s: s.hangs_active == 0 and s.disconnects == 1, timeout=3.0)
    await wait_until(lambda: not _workers(), timeout=2.0, what="the hung worker thread to end")


async def test_an_unreachable_endpoint_is_a_connect_error(bearer: str, proxy_factory: Any,
                                                          client: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = await proxy_factory(bedrock_toml(f"https://127.0.0.1:{port}", max_attempts=2))
    status, got = await chat(client, proxy, opening())
    assert status == 502 and got["error"]["code"] == "upstream_unreachable"
    assert f"127.0.0.1:{port}" in got["error"]["message"]
    turn = await settled_turn(client, proxy.base_url)
    assert len(turn["attempts"]) == 2


def _botocore_errors() -> list[tuple[BaseException, type, int, bool]]:
    from botocore import eventstream, exceptions
    client_error = exceptions.ClientError(
        {"Error": {"Code": "ServiceUnavailableException", "Message": "busy"},
         "ResponseMetadata": {"HTTPStatusCode": 503}}, "ConverseStream")
    stream_error = exceptions.EventStreamError(
        {"Error": {"Code": "validationException", "Message": "bad input"}}, "ConverseStream")
    return [
        (client_error, UpstreamStatusError, 503, True),
        (stream_error, UpstreamStreamError, 400, False),
        (exceptions.NoCredentialsError(), UpstreamStatusError, 401, False),
        (exceptions.TokenRetrievalError(provider="sso", error_msg="expired"), UpstreamStatusError, 401, False),
        (exceptions.ParamValidationError(report="messages.0.content is required"), UpstreamStatusError, 400, False),
        (exceptions.EndpointConnectionError(endpoint_url="https://x"), UpstreamConnectError, 502, True),
        (exceptions.ReadTimeoutError(endpoint_url="https://x"), UpstreamConnectError, 502, True),
        (eventstream.ChecksumMismatch(1, 2), UpstreamProtocolError, 502, True),
    ]


@pytest.mark.parametrize("case", range(8))
def test_botocore_exceptions_are_mapped_once_at_the_boundary(case: int) -> None:
    exc, kind, status, retryable = _botocore_errors()[case]
    upstream = BedrockUpstream(parse_config(bedrock_toml("https://127.0.0.1:9")).upstreams["converse"])
    mapped = upstream._error(exc)
    assert type(mapped) is kind and (mapped.status, mapped.retryable) == (status, retryable)
    assert mapped.message.startswith("converse: ")
    with pytest.raises(ValueError):
        upstream._error(ValueError("a bug of ours is not an upstream error"))


@pytest.fixture
def sigv4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAZZTESTSIGV4KEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test/secret/key/0123456789abcdefghijkl")


def eventstream_reply(*frames: bytes) -> Any:
    """A fake-upstream reply: 200, the event-stream content type, `frames`, then the end."""
    from aiohttp import web

    async def reply(request: web.Request, fake: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        return response

    return reply


START = event_frame("messageStart", {"role": "assistant"})
HELLO = event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}})
DONE = [event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame("messageStop", {"stopReason": "end_turn"})]


async def test_a_stream_cut_before_message_stop_is_a_dropped_connection(
        sigv4: None, fake_upstream: Any, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    fake_upstream.script(eventstream_reply(START), eventstream_reply(START, HELLO, *DONE))
    proxy = await proxy_factory(bedrock_toml(fake_upstream.base_url.removesuffix("/v1")))
    status, got = await chat(client, proxy, [{"role": "user", "content": "hi"}], tools=False)
    assert status == 200 and got["text"] == "Hello" and got["finish"] == "stop"
    turn = await settled_turn(client, proxy.base_url)
    assert [a["outcome"] for a in turn["attempts"]] == ["failed", "ok"]
    assert "the stream ended before the model finished" in turn["attempts"][0]["error"]
    assert fake_upstream.requests[0].path == f"/model/{BEDROCK_MODEL}/converse-stream"


async def test_a_corrupt_frame_is_a_protocol_error(sigv4: None, fake_upstream: Any,
                                                   proxy_factory: Any, client: httpx.AsyncClient) -> None:
    corrupt = HELLO[:-1] + bytes([HELLO[-1] ^ 0xFF])  # the message CRC no longer matches
    fake_upstream.default = eventstream_reply(START, corrupt)
    proxy = await proxy_factory(bedrock_toml(fake_upstream.base_url.removesuffix("/v1"), max_attempts=2))
    status, got = await chat(client, proxy, [{"role": "user", "content": "hi"}], tools=False)
    assert status == 502 and got["error"]["code"] == "upstream_protocol_error"
    assert "bad Bedrock event stream" in got["error"]["message"]


# -- credentials ----------------------------------------------------------------------------

async def test_a_wrong_bearer_token_is_refused_not_retried(monkeypatch: pytest.MonkeyPatch,
                                                           make_sim: SimFactory, proxy_factory: Any,
                                                           client: httpx.AsyncClient) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSKwrong-token-0000000000000000")
    sim = await make_sim(bearer_token=TOKEN)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    status, got = await chat(client, proxy, opening())
    assert status == 403 and "AccessDeniedException" in got["error"]["message"]
    seen = converse_log(sim.app).requests
    assert len(seen) == 1 and seen[0].auth == "bearer"


AKID = "AKIAZZTESTPLANTED123"
SECRET = "planted/SecretAccessKey+0123456789abcdefXYZ"
SESSION = "IQoJb3JpZ2luX2VjEPlantedSessionToken0123456789"


async def test_sigv4_credentials_from_the_environment_never_reach_records(
        monkeypatch: pytest.MonkeyPatch, make_sim: SimFactory, proxy_factory: Any,
        client: httpx.AsyncClient, tmp_path: Path) -> None:
    """The standard chain (env keys) signs with SigV4; the keys stay out of journal, API and logs,
    even botocore's debug log (which prints the signed headers) and a user pasting them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION)
    sim = await make_sim(tls=False)
    proxy = await proxy_factory(bedrock_toml(sim.origin))
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.addFilter(RedactingFilter(proxy.redactor))
    botocore_log = logging.getLogger("botocore")
    old_level = botocore_log.level
    botocore_log.addHandler(handler)
    botocore_log.setLevel(logging.DEBUG)
    try:
        messages = opening() + [{"role": "user", "content": f"my keys: {AKID} {SECRET} {SESSION}"}]
        status, got = await chat(client, proxy, messages)
    finally:
        botocore_log.removeHandler(handler)
        botocore_log.setLevel(old_level)
    assert status == 200 and got["calls"], got["error"]
    seen = converse_log(sim.app).requests[-1]
    assert seen.auth.startswith(f"sigv4 {AKID}/") and seen.auth.endswith("/us-east-1/bedrock/aws4_request")

    log_text = captured.getvalue()
    assert "X-Amz-Security-Token" in log_text, "botocore's debug log did show the signed headers"
    turn = await settled_turn(client, proxy.base_url)
    detail = (await client.get(f"{proxy.base_url}/switchboard/api/turns/{turn['id']}")).text
    await proxy.stop()
    journal = (tmp_path / "journal.sqlite3").read_bytes()
    for where, text in (("log", log_text), ("api", detail), ("journal", journal.decode("utf-8", "replace"))):
        for secret in (AKID, SECRET, SESSION):
            assert secret not in text, f"{secret[:8]}… leaked into the {where}"
    assert "[redacted]" in detail


# -- the README's route: mantle first, Converse second ---------------------------------------

def readme_bedrock_config() -> str:
    """The first TOML block of the README's Bedrock section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Bedrock\n"):]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_readme_bedrock_config_is_ready(bearer: str) -> None:
    config = parse_config(readme_bedrock_config(), "README.md")
    mantle, converse = config.upstreams["mantle"], config.upstreams["converse"]
    assert (mantle.kind, mantle.api_key_env) == ("openai", "AWS_BEARER_TOKEN_BEDROCK")
    assert mantle.base_url == "https://bedrock-mantle.us-east-1.api.aws/v1"
    assert (converse.kind, converse.region) == ("bedrock", "us-east-1")
    route = config.route_for("kimi-k2.5")
    assert route is not None and route.repairs == "kimi"
    assert [str(t) for t in route.targets] == ["mantle:moonshotai.kimi-k2.5",
                                               "converse:moonshotai.kimi-k2.5"]


async def test_the_readme_route_goes_to_mantle_first_then_converse(
        bearer: str, make_sim: SimFactory, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """mantle is an OpenAI upstream with the Bedrock bearer token; when it keeps failing before
    any output, the turn is rerouted to Converse, as seed 000 recommends."""
    mantle = await make_sim(tls=False, bearer_token=bearer, faults=("throttle",), fault_rate=1.0,
                            hang_repeats=2)
    converse = await make_sim(bearer_token=bearer)
    toml = readme_bedrock_config().replace(
        "https://bedrock-mantle.us-east-1.api.aws/v1", mantle.base_url).replace(
        'region = "us-east-1"', f'region = "us-east-1"\nendpoint_url = "{converse.origin}"\n'
                                f'ca_bundle = "{CERT}"')
    proxy = await proxy_factory("[proxy]\nport = 0\n" + toml)
    status, got = await chat(client, proxy, opening())
    assert status == 200 and got["calls"], got["error"]
    turn = await settled_turn(client, proxy.base_url)
    assert [(a["target"], a["outcome"]) for a in turn["attempts"]] == [
        ("mantle:moonshotai.kimi-k2.5", "failed"), ("mantle:moonshotai.kimi-k2.5", "failed"),
        ("converse:moonshotai.kimi-k2.5", "ok")]
    assert "429" in turn["attempts"][0]["error"] or "Too many" in turn["attempts"][0]["error"]
    assert mantle.stats.requests == 2, "mantle accepted the bearer token (it answers 401 otherwise)"
    assert converse_log(converse.app).requests[-1].auth == "bearer"


# -- configuration ------------------------------------------------------------------------

def test_a_bedrock_table_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(bedrock_toml("https://127.0.0.1:9", extra='profile = "work"\nread_timeout = 60\nstream = false'))
    upstream = config.upstreams["converse"]
    assert (upstream.kind, upstream.region, upstream.endpoint_url, upstream.profile) == (
        "bedrock", "us-east-1", "https://127.0.0.1:9", "work")
    assert upstream.ca_bundle == str(CERT) and upstream.read_timeout == 60.0 and upstream.stream is False
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    bare = parse_config('[upstreams.c]\nkind = "bedrock"\n[[routes]]\nmodel = "m"\ntargets = ["c:x"]\n')
    assert bare.upstreams["c"].region == "eu-west-1" and bare.upstreams["c"].endpoint_url is None


def test_the_design_example_with_its_converse_upstream_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", TOKEN)
    config = parse_config("""
[upstreams.mantle]
kind = "openai"
base_url = "https://bedrock-mantle.us-east-1.api.aws/v1"
api_key_env = "AWS_BEARER_TOKEN_BEDROCK"
[upstreams.converse]
kind = "bedrock"
region = "us-east-1"
[[routes]]
model = "kimi-k2.5"
targets = ["mantle:moonshotai.kimi-k2.5", "converse:moonshotai.kimi-k2.5"]
repairs = "kimi"
""")
    assert [str(t) for t in config.routes[0].targets] == [
        "mantle:moonshotai.kimi-k2.5", "converse:moonshotai.kimi-k2.5"]


@pytest.mark.parametrize(("table", "problem"), [
    ('kind = "bedrock"', "upstreams.c.region: is required"),
    ('kind = "bedrock"\nregion = "us-east-1"\nendpoint_url = "localhost:9"', "upstreams.c.endpoint_url: must start with"),
    ('kind = "bedrock"\nregion = "us-east-1"\nbase_url = "https://x"', "upstreams.c.base_url: unknown key"),
    ('kind = "bedrock"\nregion = "us-east-1"\nca_bundle = "/no/such/ca.pem"', "upstreams.c.ca_bundle: no such file"),
    ('kind = "bedrock"\nregion = "us-east-1"\nstream = "yes"', "upstreams.c.stream: must be bool"),
])
def test_bad_bedrock_tables_fail_clearly(table: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[upstreams.c]\n{table}\n[[routes]]\nmodel = "m"\ntargets = ["c:x"]\n', "cfg.toml")
    assert str(caught.value).startswith(f"cfg.toml: {problem}"), str(caught.value)


async def test_start_up_refuses_what_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def upstream(extra: str = "", endpoint: str = "https://127.0.0.1:9") -> BedrockUpstream:
        return BedrockUpstream(parse_config(bedrock_toml(endpoint, extra=extra)).upstreams["converse"])

    with pytest.raises(ConfigError, match="no AWS credentials"):
        await upstream().start()
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        await upstream('profile = "nope"').start()
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", TOKEN)
    with pytest.raises(ConfigError, match="only over https"):
        await upstream(endpoint="http://127.0.0.1:9").start()
    ok = upstream()
    await ok.start()
    await ok.aclose()


# -- the event-stream encoder -------------------------------------------------------------

def test_frames_decode_with_botocore() -> None:
    """The simulator's encoder against botocore's decoder (prelude and message CRCs checked)."""
    buffer = EventStreamBuffer()
    buffer.add_data(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}))
    buffer.add_data(exception_frame("modelStreamErrorException", {"message": "boom"}))
    delta, failure = list(buffer)
    assert delta.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                             ":message-type": "event"}
    assert json.loads(delta.payload) == {"contentBlockIndex": 0, "delta": {"text": "héllo"}}
    assert failure.headers[":message-type"] == "exception"
    assert failure.headers[":exception-type"] == "modelStreamErrorException"
    assert json.loads(failure.payload) == {"message": "boom"}


async def test_profile_credentials_are_redacted_too(
        monkeypatch: pytest.MonkeyPatch, make_sim: SimFactory, proxy_factory: Any,
        client: httpx.AsyncClient, tmp_path: Path) -> None:
    """Keys from a profile file are not in the environment; the upstream hands them to
    the redactor once it has resolved them."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_BEARER_TOKEN_BEDROCK", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[planted]\naws_access_key_id = {AKID}\n"
                           f"aws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-missing"))
    sim = await make_sim(tls=False)
    proxy = await proxy_factory(bedrock_toml(sim.origin, extra='profile = "planted"'))
    messages = opening() + [{"role": "user", "content": f"keys: {AKID} {SECRET}"}]
    status, got = await chat(client, proxy, messages)
    assert status == 200, got["error"]
    assert converse_log(sim.app).requests[-1].auth.startswith(f"sigv4 {AKID}/")
    turn = await settled_turn(client, proxy.base_url)
    detail = (await client.get(f"{proxy.base_url}/switchboard/api/turns/{turn['id']}")).text
    await proxy.stop()
    journal = (tmp_path / "journal.sqlite3").read_bytes().decode("utf-8", "replace")
    for text in (detail, journal):
        assert AKID not in text and SECRET not in text
