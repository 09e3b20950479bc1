"""OpenTelemetry export (issue 15): real proxy, real upstreams, a real OTLP/HTTP receiver.

Each test starts the proxy with `[telemetry]` pointing at an aiohttp receiver
that decodes the protobuf, drives turns with httpx, and checks what arrived:
the `chat {model}` span per turn, a child per attempt, repair and stall
events, `gen_ai.*`/`switchboard.*` attributes, the metrics, and that no
planted secret was exported. A collector that is down or answers late must
not hold turns up; what is lost shows on the health endpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from fault_support import ServeProcess
from otlp_support import OtlpReceiver, SpanView
from support import (
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    collect_answer,
    finish_chunk,
    hang_reply,
    sse,
    text_chunk,
    text_reply,
    usage_chunk,
    wait_until,
)

from proxy_core.simulator import SimulatorConfig, start_simulator

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "opencode_request.json").read_text())
CLIENT_TOKEN = "client-bearer-token-5f3a9c0e7d21"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    rx = OtlpReceiver()
    await rx.start()
    yield rx
    await rx.stop()


def config(endpoint: str, targets: list[tuple[str, str]], *, repairs: str = "kimi",
           capture: bool = False, first_token_timeout: float = 5.0, idle_timeout: float = 5.0,
           max_attempts: int = 3, export_timeout: float = 2.0, queue: int = 2048) -> str:
    lines = ["[watchdog]", f"first_token_timeout = {first_token_timeout}",
             f"idle_timeout = {idle_timeout}", f"max_attempts = {max_attempts}", "cooldown = 0", ""]
    for name, url in targets:
        lines += [f"[upstreams.{name}]", 'kind = "openai"', f"base_url = {json.dumps(url)}",
                  f"api_key_env = {json.dumps(UPSTREAM_KEY_ENV)}", "connect_timeout = 1", ""]
    lines += ["[[routes]]", 'model = "kimi-k2.5"',
              f"targets = {json.dumps([f'{n}:kimi-k2.5' for n, _ in targets])}",
              f"repairs = {json.dumps(repairs)}", "",
              "[telemetry]", f"otlp_endpoint = {json.dumps(endpoint)}",
              'service_name = "switchboard-test"', f"capture_content = {str(capture).lower()}",
              "schedule_delay = 0.05", "metric_interval = 0.2",
              f"export_timeout = {export_timeout}", f"max_queue_size = {queue}", ""]
    return "\n".join(lines)


async def chat(client: httpx.AsyncClient, base: str, text: str = "List the files here",
               *, tools: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "kimi-k2.5", "stream": True,
                            "stream_options": {"include_usage": True},
                            "messages": [*[dict(m) for m in FIXTURE["messages"][:1]],
                                         {"role": "user", "content": text}]}
    if tools:
        body["tools"] = FIXTURE["tools"]
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {CLIENT_TOKEN}",
                                      "x-session-affinity": "ses_telemetry_test"}) as response:
        assert response.status_code == 200, await response.aread()
        return await collect_answer(response)


async def turn_span(rx: OtlpReceiver, n: int = 1) -> list[SpanView]:
    """The first `n` turn spans, once each has arrived with its attempt children."""
    def ready() -> list[SpanView] | None:
        turns = rx.turn_spans()
        if len(turns) < n:
            return None
        for t in turns[:n]:
            if len(rx.children(t)) < t.attrs.get("switchboard.attempts", 1):
                return None
        return turns[:n]
    return await wait_until(ready, timeout=10.0, what="exported turn spans")


async def health(proxy: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{proxy.base_url}/switchboard/api/health")
        body: dict[str, Any] = response.json()
        return body


async def metric(rx: OtlpReceiver, name: str, **attrs: Any) -> list[Any]:
    def points() -> list[Any]:
        return [p for a, p in rx.metrics.get(name, [])
                if all(a.get(k) == v for k, v in attrs.items())]
    return await wait_until(points, timeout=10.0, what=f"metric {name} {attrs}")


async def test_clean_turn_is_one_client_span_with_genai_attributes_and_metrics(
        proxy_factory: Any, receiver: OtlpReceiver) -> None:
    sim = await start_simulator(SimulatorConfig(seed=3, chunk_delay=0.0))
    try:
        proxy = await proxy_factory(config(receiver.endpoint, [("sim", sim.base_url)]))
        async with httpx.AsyncClient(timeout=20) as client:
            answer = await chat(client, proxy.base_url, "Say hello", tools=False)
        assert answer["error"] is None
        [span] = await turn_span(receiver)
    finally:
        await sim.close()
    assert span.name == "chat kimi-k2.5"
    assert span.kind == PbSpan.SPAN_KIND_CLIENT
    assert span.resource["service.name"] == "switchboard-test"
    a = span.attrs
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "kimi-k2.5"
    assert a["gen_ai.response.model"] == "kimi-k2.5"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["server.address"] == "127.0.0.1"
    assert a["gen_ai.response.id"].startswith("chatcmpl-")  # the host's id, not ours
    assert a["gen_ai.response.finish_reasons"] == [answer["finish"]]
    assert a["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"] > 0
    assert a["gen_ai.conversation.id"]
    assert a["switchboard.route"] == "kimi-k2.5"
    assert a["switchboard.attempts"] == 1 and a["switchboard.repairs"] == 0
    assert a["switchboard.time_to_first_chunk"] > 0
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
    assert "error.type" not in a
    [attempt] = receiver.children(span)
    assert attempt.trace_id == span.trace_id
    assert attempt.attrs["switchboard.target"] == "sim:kimi-k2.5"
    assert attempt.attrs["switchboard.attempt.reason"] == "initial"
    assert attempt.attrs["switchboard.attempt.outcome"] == "ok"
    assert 0 < attempt.attrs["switchboard.prepared_in"] < 1.0
    assert "switchboard.stall" not in [e for e, _ in span.events]

    target = {"switchboard.target": "sim:kimi-k2.5", "gen_ai.request.model": "kimi-k2.5"}
    [duration, *_] = await metric(receiver, "gen_ai.client.operation.duration", **target)
    assert duration.count == 1 and duration.sum > 0
    inputs = await metric(receiver, "gen_ai.client.token.usage", **target,
                          **{"gen_ai.token.type": "input"})
    assert inputs[0].sum == answer["usage"]["prompt_tokens"]
    await metric(receiver, "gen_ai.client.token.usage", **target, **{"gen_ai.token.type": "output"})
    await metric(receiver, "gen_ai.client.operation.time_to_first_chunk", **target)

    status = (await health(proxy))["telemetry"]
    assert status["enabled"] is True and status["spans_exported"] >= 2
    assert status["spans_dropped"] == 0


async def test_repaired_turn_has_repair_events(proxy_factory: Any, receiver: OtlpReceiver) -> None:
    sim = await start_simulator(SimulatorConfig(faults=("leak",), fault_rate=1.0, seed=7,
                                                chunk_delay=0.0))
    try:
        proxy = await proxy_factory(config(receiver.endpoint, [("sim", sim.base_url)]))
        async with httpx.AsyncClient(timeout=20) as client:
            answer = await chat(client, proxy.base_url)
        assert answer["calls"], answer
        [span] = await turn_span(receiver)
    finally:
        await sim.close()
    repairs = [attrs for name, attrs in span.events if name == "switchboard.repair"]
    assert repairs and span.attrs["switchboard.repairs"] == len(repairs)
    assert all(r["switchboard.repair.kind"] for r in repairs)
    assert any("<|tool_call" in r["switchboard.repair.before"] or "<function" in
               r["switchboard.repair.before"] for r in repairs), repairs
    assert all(len(r["switchboard.repair.before"]) <= 201 for r in repairs)
    assert span.attrs["gen_ai.response.finish_reasons"] == ["tool_calls"]


async def test_stalled_attempt_is_retried_under_one_turn_span(
        proxy_factory: Any, make_fake_upstream: Any, receiver: OtlpReceiver) -> None:
    fake = await make_fake_upstream()
    fake.script(hang_reply(), text_reply("Hello", " world"))
    proxy = await proxy_factory(config(receiver.endpoint, [("fake", fake.base_url)],
                                       repairs="none", first_token_timeout=0.3))
    async with httpx.AsyncClient(timeout=20) as client:
        answer = await chat(client, proxy.base_url, tools=False)
    assert answer["text"] == "Hello world"
    [span] = await turn_span(receiver)
    assert span.attrs["switchboard.attempts"] == 2
    first, second = receiver.children(span)
    assert first.attrs["switchboard.attempt.end_reason"] == "stall"
    assert first.status_code == PbStatus.STATUS_CODE_ERROR
    assert second.attrs["switchboard.attempt.reason"] == "retry"
    assert second.attrs["switchboard.attempt.outcome"] == "ok"
    assert "switchboard.stall" in [name for name, _ in span.events]
    assert span.status_code != PbStatus.STATUS_CODE_ERROR


async def test_rerouted_turn_names_both_targets(proxy_factory: Any, receiver: OtlpReceiver) -> None:
    sim = await start_simulator(SimulatorConfig(seed=3, chunk_delay=0.0))
    down = OtlpReceiver()  # a port that was just open and is now closed: nobody listens
    await down.start()
    await down.stop()
    try:
        proxy = await proxy_factory(config(
            receiver.endpoint, [("down", f"http://127.0.0.1:{down.port}/v1"), ("sim", sim.base_url)],
            max_attempts=3))
        async with httpx.AsyncClient(timeout=20) as client:
            answer = await chat(client, proxy.base_url, "Say hello", tools=False)
        assert answer["error"] is None
        [span] = await turn_span(receiver)
    finally:
        await sim.close()
    attempts = receiver.children(span)
    assert len(attempts) >= 2
    assert attempts[0].attrs["switchboard.target"] == "down:kimi-k2.5"
    assert attempts[0].status_code == PbStatus.STATUS_CODE_ERROR
    assert attempts[0].attrs["error.type"]
    assert attempts[-1].attrs["switchboard.target"] == "sim:kimi-k2.5"
    assert attempts[-1].attrs["switchboard.attempt.reason"] == "reroute"
    assert span.attrs["switchboard.target"] == "sim:kimi-k2.5"


async def test_no_planted_secret_is_exported_even_with_content(
        proxy_factory: Any, receiver: OtlpReceiver) -> None:
    sim = await start_simulator(SimulatorConfig(faults=("leak",), fault_rate=1.0, seed=7,
                                                chunk_delay=0.0))
    try:
        proxy = await proxy_factory(config(receiver.endpoint, [("sim", sim.base_url)], capture=True))
        async with httpx.AsyncClient(timeout=20) as client:
            await chat(client, proxy.base_url,
                       f"my key is {UPSTREAM_KEY} and my token is {CLIENT_TOKEN}; list files")
        [span] = await turn_span(receiver)
        await metric(receiver, "gen_ai.client.operation.duration")
    finally:
        await sim.close()
    assert "list files" in span.attrs["gen_ai.input.messages"]
    assert "[redacted]" in span.attrs["gen_ai.input.messages"]
    assert json.loads(span.attrs["gen_ai.output.messages"])[0]["role"] == "assistant"
    everything = b"".join(receiver.raw)
    assert receiver.raw and b"list files" in everything
    for secret in (UPSTREAM_KEY, CLIENT_TOKEN):
        assert secret.encode() not in everything


async def _turns_complete(proxy: Any, n: int) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        for i in range(n):
            answer = await chat(client, proxy.base_url, f"Say hello {i}", tools=False)
            assert answer["error"] is None


async def test_a_collector_that_is_down_costs_turns_nothing_and_counts_the_loss(
        proxy_factory: Any) -> None:
    down = OtlpReceiver()
    await down.start()
    await down.stop()
    sim = await start_simulator(SimulatorConfig(seed=3, chunk_delay=0.0))
    try:
        proxy = await proxy_factory(config(down.endpoint, [("sim", sim.base_url)],
                                           export_timeout=0.3))
        await _turns_complete(proxy, 3)

        async def lost() -> int:
            return int((await health(proxy))["telemetry"]["spans_dropped"])
        assert await wait_until(lost, timeout=10.0, what="the drop counter") > 0
        assert (await health(proxy))["status"] == "ok"
    finally:
        await sim.close()


async def test_a_collector_that_answers_late_holds_nothing_and_counts_the_loss(
        proxy_factory: Any, receiver: OtlpReceiver) -> None:
    receiver.hold()  # every export waits (up to 10 s) for an answer
    sim = await start_simulator(SimulatorConfig(seed=3, chunk_delay=0.0))
    try:
        proxy = await proxy_factory(config(receiver.endpoint, [("sim", sim.base_url)],
                                           export_timeout=0.3, queue=2))
        await _turns_complete(proxy, 1)
        await wait_until(lambda: receiver.held > 0, timeout=10.0, what="an export to be held")
        # While the collector sits on an export, turns go on at once.
        await _turns_complete(proxy, 4)
        async def losses() -> dict[str, Any] | None:
            s = (await health(proxy))["telemetry"]
            return s if s["spans_failed_export"] > 0 and s["spans_dropped_queue_full"] > 0 else None
        status = await wait_until(losses, timeout=10.0, what="failed exports and queue drops")
        assert status["spans_dropped"] == status["spans_failed_export"] + status["spans_dropped_queue_full"]
    finally:
        receiver.release()
        await sim.close()


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_serve_exports_from_its_own_process_which_goes_when_the_proxy_is_killed(
        tmp_path: Path, receiver: OtlpReceiver) -> None:
    sim = await start_simulator(SimulatorConfig(seed=3, chunk_delay=0.0))
    path = tmp_path / "switchboard.toml"
    path.write_text(config(receiver.endpoint, [("sim", sim.base_url)])
                    + f'\n[proxy]\njournal = "{tmp_path / "journal.sqlite3"}"\n')
    serve = await ServeProcess.start(path, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY})
    children: set[int] = set()
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            answer = await chat(client, serve.base_url, "Say hello", tools=False)
        assert answer["error"] is None
        [span] = await turn_span(receiver)
        assert span.attrs["gen_ai.request.model"] == "kimi-k2.5"
        children = _children(serve.proc.pid)
        assert children, "the telemetry process"
        serve.proc.kill()
        # (not proc.wait(): asyncio waits for the pipes too, which children share)
        await wait_until(lambda: serve.proc.returncode is not None, timeout=10.0,
                         what="the proxy to die")
        await wait_until(lambda: not any(_alive(pid) for pid in children), timeout=15.0,
                         what=f"the proxy's children {children} to exit after kill -9")
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # left behind, it holds serve's pipes open
        if serve.proc.returncode is None:
            serve.proc.kill()
        await serve.proc.wait()
        await sim.close()


# -- configuration (unit seams) -------------------------------------------------

BASE = '[upstreams.sim]\nkind = "simulator"\n[[routes]]\nmodel = "*"\ntargets = ["sim:m"]\n'


def test_telemetry_is_off_without_an_endpoint() -> None:
    from proxy_core.config import parse_config
    from proxy_core.telemetry import plan
    assert plan(parse_config(BASE).telemetry, {}) is None


def test_the_standard_variables_turn_it_on() -> None:
    from proxy_core.config import parse_config
    from proxy_core.telemetry import plan
    export = plan(parse_config(BASE).telemetry, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/",
                                                 "OTEL_SERVICE_NAME": "team-agents"})
    assert export is not None
    assert (export.endpoint, export.service_name, export.headers) == ("http://c:4318", "team-agents", None)


def test_the_config_wins_over_the_variables() -> None:
    from proxy_core.config import parse_config
    from proxy_core.telemetry import plan
    toml = BASE + ('[telemetry]\notlp_endpoint = "https://cloud.langfuse.com/api/public/otel"\n'
                   'headers = { Authorization = "Basic abc" }\nservice_name = "mine"\n')
    export = plan(parse_config(toml).telemetry, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert export is not None
    assert export.endpoint == "https://cloud.langfuse.com/api/public/otel"
    assert export.headers == {"Authorization": "Basic abc"} and export.service_name == "mine"


@pytest.mark.parametrize("table, problem", [
    ('otlp_endpoint = "localhost:4318"', "must start with http"),
    ("capture_content = 1", "must be bool"),
    ("max_queue_size = 0", "at least 1"),
    ("export_timeout = 0", "greater than 0"),
    ("headers = { a = 1 }", "must be string"),
    ("endpoint = 'x'", "unknown key"),
])
def test_bad_telemetry_settings_are_named(table: str, problem: str) -> None:
    from proxy_core.config import parse_config
    from proxy_core.errors import ConfigError
    with pytest.raises(ConfigError, match=problem):
        parse_config(BASE + "[telemetry]\n" + table + "\n")


def test_the_status_line_shows_spans_not_exported_only_when_some_were_lost() -> None:
    from tui.widgets.palette import Palette
    from tui.widgets.status import StatusInfo, status_text
    p = Palette(*(["#ffffff"] * 8))
    assert "not exported" not in status_text(StatusInfo("http://127.0.0.1:4141"), p).plain
    lost = status_text(StatusInfo("http://127.0.0.1:4141", spans_dropped=12), p).plain
    assert "12 spans not exported" in lost


async def test_cache_reasoning_tokens_and_cost_reach_the_span(
        proxy_factory: Any, receiver: OtlpReceiver, fake_upstream: Any) -> None:
    usage = usage_chunk(1000, 200)
    usage["usage"]["prompt_tokens_details"] = {"cached_tokens": 600}
    usage["usage"]["completion_tokens_details"] = {"reasoning_tokens": 150}
    fake_upstream.default = sse(text_chunk("hi"), finish_chunk(), usage)
    proxy = await proxy_factory(config(receiver.endpoint, [("up", fake_upstream.base_url)],
                                       repairs="none")
                                + '\n[prices."kimi-k2.5"]\ninput_per_mtok = 1000\n'
                                  "output_per_mtok = 1000\n")
    async with httpx.AsyncClient(timeout=20) as client:
        answer = await chat(client, proxy.base_url, "Say hello", tools=False)
    assert answer["error"] is None
    [span] = await turn_span(receiver)
    a = span.attrs
    assert a["gen_ai.usage.input_tokens"] == 1000 and a["gen_ai.usage.output_tokens"] == 200
    assert a["gen_ai.usage.cache_read.input_tokens"] == 600
    assert a["switchboard.usage.reasoning_tokens"] == 150
    assert a["switchboard.cost"] == pytest.approx(1.2)  # 1200 tokens at 1000 per million
    assert "gen_ai.usage.cache_creation.input_tokens" not in a


async def test_turns_ending_together_go_to_the_telemetry_process_in_batches(
        proxy_factory: Any, receiver: OtlpReceiver) -> None:
    """A busy proxy wakes the queue's feeder thread and the child once per batch, not once
    per turn; every turn still arrives, each as its turn span and attempt span."""
    sim = await start_simulator(SimulatorConfig(seed=3, chunk_delay=0.0))
    try:
        proxy = await proxy_factory(config(receiver.endpoint, [("sim", sim.base_url)]))
        jobs = proxy.telemetry._jobs
        with mock.patch.object(jobs, "put_nowait", wraps=jobs.put_nowait) as put:
            async with httpx.AsyncClient(timeout=20) as client:
                answers = await asyncio.gather(*(chat(client, proxy.base_url, f"hi {i}",
                                                      tools=False) for i in range(24)))
            assert all(a["error"] is None for a in answers)
            await wait_until(lambda: len([s for s in receiver.spans if s.name.startswith("chat ")])
                             >= 24, timeout=10.0, what="24 turn spans")
        assert 1 <= put.call_count < 12  # 24 turns, ending within a few batches' time
        assert len([s for s in receiver.spans if s.name.startswith("chat ")]) == 24
    finally:
        await sim.close()


async def test_the_telemetry_process_only_takes_cpu_nothing_else_wants(
        proxy_factory: Any, receiver: OtlpReceiver) -> None:
    before = _children(os.getpid())
    proxy = await proxy_factory(config(receiver.endpoint, [("sim", "http://127.0.0.1:9")]))
    child = proxy.telemetry._child.pid
    assert child in _children(os.getpid()) - before
    await wait_until(lambda: os.sched_getscheduler(child) == os.SCHED_IDLE, timeout=10.0,
                     what="the telemetry process to lower its CPU priority")
