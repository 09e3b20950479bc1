"""The simulated host over real HTTP: the scripted task, every fault, determinism."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.simulator import LEAK_VARIANTS, RunningSimulator, SimulatorConfig, SimulatorConfigError, start_simulator
from proxy_core.simulator.faults import ORPHAN_MESSAGE, decide, fingerprint, validate
from proxy_core.simulator.script import EXPECTED_FILES, EXPECTED_TEST_OUTPUT, next_reply

FIXTURE = Path(__file__).parent / "fixtures" / "opencode_request.json"
OPENCODE_TOOLS: list[dict[str, object]] = json.loads(FIXTURE.read_text())["tools"]
TASK_TOOLS = ["write", "write", "bash", "read", "edit", "read", "edit", "bash", "glob", "grep"]
MARKERS = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_section_begin|>",
    "<|tool_call_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)


# --- a small OpenAI streaming client -------------------------------------------------


@dataclass
class Answer:
    """One parsed streamed (or whole) answer."""

    status: int
    raw: bytes = b""
    chunks: list[dict[str, object]] = field(default_factory=list)
    content_deltas: list[str] = field(default_factory=list)
    reasoning_deltas: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, object]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, object] | None = None
    error: dict[str, object] | None = None

    @property
    def content(self) -> str:
        return "".join(self.content_deltas)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_deltas)


def parse_sse(raw: bytes) -> Answer:
    """Parse a whole SSE body the way an OpenAI client would."""
    answer = Answer(200, raw)
    calls: dict[int, dict[str, object]] = {}
    events = raw.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]", "stream must end with data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: "), event
        chunk = json.loads(event[len("data: ") :])
        answer.chunks.append(chunk)
        if chunk.get("usage"):
            answer.usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                answer.content_deltas.append(delta["content"])
            if delta.get("reasoning_content"):
                answer.reasoning_deltas.append(delta["reasoning_content"])
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(piece["index"], {"id": None, "name": None, "arguments": ""})
                if "id" in piece:
                    call["id"], call["name"] = piece["id"], piece["function"]["name"]
                call["arguments"] = str(call["arguments"]) + piece["function"].get("arguments", "")
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]
    answer.tool_calls = [calls[i] for i in sorted(calls)]
    return answer


async def ask(client: httpx.AsyncClient, sim: RunningSimulator, messages: list[dict[str, object]], **extra: object) -> Answer:
    """POST a chat completion; parse a stream, a completion or an error."""
    body: dict[str, object] = {"model": "kimi-k2.5", "messages": messages, "tools": OPENCODE_TOOLS, "stream": True}
    body.update(extra)
    response = await client.post(f"{sim.base_url}/chat/completions", json=body)
    if response.status_code != 200:
        return Answer(response.status_code, response.content, error=response.json()["error"])
    if body.get("stream"):
        return parse_sse(response.content)
    data = response.json()
    choice = data["choices"][0]
    message = choice["message"]
    calls = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or []
    ]
    answer = Answer(200, response.content, [data], [message["content"]], [], calls, choice["finish_reason"], data["usage"])
    if message.get("reasoning_content"):
        answer.reasoning_deltas.append(message["reasoning_content"])
    return answer


def start_messages(workdir: Path | str = "/work/project") -> list[dict[str, object]]:
    system = f"You are a coding agent.\n<env>\n  Working directory: {workdir}\n  Platform: linux\n</env>"
    return [{"role": "system", "content": system}, {"role": "user", "content": "build a calculator"}]


def assistant_turn(answer: Answer) -> dict[str, object]:
    """The assistant message a well-behaved client replays."""
    message: dict[str, object] = {"role": "assistant", "content": answer.content}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in answer.tool_calls
        ]
    return message


def planned_turn(messages: list[dict[str, object]], steps: int = 10) -> dict[str, object]:
    """The assistant message of the next planned step, as a repairing proxy would replay it."""
    reply = next_reply(messages, OPENCODE_TOOLS, steps)
    assert reply.tool_call is not None
    call = reply.tool_call
    return {
        "role": "assistant",
        "content": reply.text,
        "reasoning_content": reply.reasoning,
        "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}],
    }


def tool_result(call_id: str, text: str = "done") -> dict[str, object]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def run_tool(workdir: Path, name: str, args: dict[str, object]) -> str:
    """Execute one tool call for real, like opencode would, in ``workdir``."""
    if name == "write":
        Path(str(args["filePath"])).write_text(str(args["content"]))
        return "Wrote file successfully."
    if name == "read":
        return Path(str(args["filePath"])).read_text()
    if name == "edit":
        path = Path(str(args["filePath"]))
        text = path.read_text()
        assert text.count(str(args["oldString"])) == 1, "oldString must match exactly once"
        path.write_text(text.replace(str(args["oldString"]), str(args["newString"])))
        return "Edit applied successfully."
    if name == "bash":
        done = subprocess.run(str(args["command"]), shell=True, cwd=workdir, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout
    if name == "glob":
        return "\n".join(sorted(p.name for p in workdir.iterdir() if fnmatch.fnmatch(p.name, str(args["pattern"]))))
    if name == "grep":
        found = [p.name for p in workdir.glob(str(args.get("include", "*"))) if str(args["pattern"]) in p.read_text()]
        return "\n".join(found)
    raise AssertionError(f"unexpected tool {name}")


def check_schema(name: str, arguments: dict[str, object], tools: list[dict[str, object]]) -> None:
    """The arguments fit the tool's JSON schema from the request."""
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)
    assert set(schema.get("required", [])) <= set(arguments), (name, arguments)
    assert set(arguments) <= set(schema["properties"]), (name, arguments)


async def drive(client: httpx.AsyncClient, sim: RunningSimulator, workdir: Path, tools: list[dict[str, object]] | None = None) -> list[Answer]:
    """A scripted agent: run each tool call for real and feed back its result."""
    tools = OPENCODE_TOOLS if tools is None else tools
    messages = start_messages(workdir)
    answers = []
    for _ in range(50):
        answer = await ask(client, sim, messages, tools=tools, stream_options={"include_usage": True})
        assert answer.status == 200, answer.error
        answers.append(answer)
        messages.append(assistant_turn(answer))
        if answer.finish_reason != "tool_calls":
            return answers
        for call in answer.tool_calls:
            arguments = json.loads(str(call["arguments"]))
            check_schema(str(call["name"]), arguments, tools)
            messages.append(tool_result(str(call["id"]), run_tool(workdir, str(call["name"]), arguments)))
    raise AssertionError("the task never finished")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


@pytest.fixture
async def make_sim() -> AsyncIterator[object]:
    started: list[RunningSimulator] = []

    async def factory(**kwargs: object) -> RunningSimulator:
        kwargs.setdefault("chunk_delay", 0.0)
        sim = await start_simulator(SimulatorConfig(**kwargs))  # type: ignore[arg-type]
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.close()


# --- the clean task ------------------------------------------------------------------


async def test_clean_run_plays_every_step(make_sim, client, tmp_path: Path) -> None:
    sim = await make_sim()
    answers = await drive(client, sim, tmp_path)
    calls = [a.tool_calls[0] for a in answers[:-1]]
    assert [c["name"] for c in calls] == TASK_TOOLS
    assert [c["id"] for c in calls] == [f"functions.{n}:{i}" for i, n in enumerate(TASK_TOOLS)]
    assert all(a.content and a.finish_reason == "tool_calls" for a in answers[:-1])
    final = answers[-1]
    assert final.finish_reason == "stop" and not final.tool_calls and "Done" in final.content
    for name, content in EXPECTED_FILES.items():
        assert (tmp_path / name).read_text() == content
    run = subprocess.run([sys.executable, "test_calc.py"], cwd=tmp_path, capture_output=True, text=True)
    assert run.stdout.strip() == EXPECTED_TEST_OUTPUT
    assert sim.stats.tool_results_seen == 10 and sim.stats.tool_calls_emitted == 10 and sim.stats.finals == 1


@pytest.mark.parametrize("steps", [0, 3, 13])
async def test_step_count_is_configurable(make_sim, client, tmp_path: Path, steps: int) -> None:
    sim = await make_sim(steps=steps)
    answers = await drive(client, sim, tmp_path)
    assert len(answers) == steps + 1
    assert answers[-1].finish_reason == "stop"


async def test_only_tools_in_the_request_are_called(make_sim, client, tmp_path: Path) -> None:
    bash_only = [t for t in OPENCODE_TOOLS if t["function"]["name"] == "bash"]
    sim = await make_sim()
    answers = await drive(client, sim, tmp_path, tools=bash_only)
    assert {c["name"] for a in answers for c in a.tool_calls} == {"bash"}
    assert len(answers) == 11
    for name, content in EXPECTED_FILES.items():
        assert (tmp_path / name).read_text() == content


async def test_side_request_without_tools_gets_plain_text(make_sim, client) -> None:
    sim = await make_sim()
    messages = [{"role": "system", "content": "You are a title generator."}, {"role": "user", "content": "say hello"}]
    answer = await ask(client, sim, messages, tools=None)
    assert answer.finish_reason == "stop" and not answer.tool_calls and answer.content
    assert sim.stats.side_requests == 1


async def test_a_history_of_several_megabytes_is_read(make_sim, client) -> None:
    """A long opencode session sends megabytes; the host must not stop at aiohttp's 1 MB."""
    sim = await make_sim()
    history = [{"role": "user", "content": "x" * (3 << 20)}]
    answer = await ask(client, sim, history, tools=None)
    assert answer.status == 200 and answer.content


async def test_stream_shape_follows_openai(make_sim, client) -> None:
    sim = await make_sim(reasoning=True)
    answer = await ask(client, sim, start_messages(), stream_options={"include_usage": True})
    first = answer.chunks[0]
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    assert len(answer.content_deltas) > 1 and answer.reasoning
    heads = [p for c in answer.chunks for ch in c["choices"] for p in ch["delta"].get("tool_calls", []) if "id" in p]
    assert heads == [
        {"index": 0, "id": "functions.write:0", "type": "function", "function": {"name": "write", "arguments": ""}}
    ]
    fragments = [p for c in answer.chunks for ch in c["choices"] for p in ch["delta"].get("tool_calls", []) if "id" not in p]
    assert len(fragments) > 1 and json.loads(str(answer.tool_calls[0]["arguments"]))["filePath"] == "/work/project/calc.py"
    assert answer.chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert answer.chunks[-1]["choices"] == [] and answer.usage and answer.usage["total_tokens"] > 0
    without_usage = await ask(client, sim, start_messages())
    assert without_usage.usage is None and without_usage.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_non_streaming_request_gets_a_completion(make_sim, client) -> None:
    sim = await make_sim()
    answer = await ask(client, sim, start_messages(), stream=False)
    data = answer.chunks[0]
    assert data["object"] == "chat.completion" and answer.finish_reason == "tool_calls"
    assert answer.tool_calls[0]["id"] == "functions.write:0" and "usage" in data


# --- leak ----------------------------------------------------------------------------


def _leaked_json(text: str) -> dict[str, object]:
    args = text.split("<|tool_call_argument_begin|>", 1)[1].split("<|tool_call_end|>", 1)[0]
    return json.loads(args)


def _splits_a_marker(deltas: list[str]) -> bool:
    """Whether some delta boundary falls strictly inside a Kimi marker."""
    text, cuts, position = "".join(deltas), set(), 0
    for delta in deltas[:-1]:
        position += len(delta)
        cuts.add(position)
    spans = [(m.start(), m.end()) for marker in MARKERS for m in re.finditer(re.escape(marker), text)]
    return any(start < cut < end for start, end in spans for cut in cuts)


async def test_leak_cycles_through_every_variant(make_sim, client) -> None:
    sim = await make_sim(faults=("leak",), fault_rate=1.0)
    messages = start_messages()
    seen: dict[str, Answer] = {}
    split_marker = False
    for _ in range(len(LEAK_VARIANTS)):
        answer = await ask(client, sim, messages)
        planned = planned_turn(messages)
        intended = json.loads(planned["tool_calls"][0]["function"]["arguments"])  # type: ignore[index]
        assert answer.finish_reason == "stop" and not answer.tool_calls
        variant = sim.stats.faults[-1].detail
        seen[variant] = answer
        if variant == "xml":
            assert answer.content.rstrip().endswith("</function>") and "<parameter=filePath>" in answer.content
        elif variant == "reasoning":
            assert "<|tool_call_begin|>" in answer.reasoning and "<|" not in answer.content
            assert _leaked_json(answer.reasoning) == intended
        else:
            assert _leaked_json(answer.content) == intended
        split_marker |= _splits_a_marker(answer.content_deltas)
        messages += [planned, tool_result(planned["tool_calls"][0]["id"])]  # type: ignore[index]
    assert set(seen) == set(LEAK_VARIANTS)
    assert split_marker, "some marker must be split across deltas"
    assert "\n <|tool_call_begin|>" in seen["spaced"].content
    assert "<|tool_call_section_begin|>" in seen["singular"].content and "<|tool_calls_" not in seen["singular"].content
    assert "section" not in seen["bare"].content and "<|tool_call_begin|>" in seen["bare"].content
    assert "<|tool_calls_section_begin|>" in seen["no_section_end"].content
    assert "section_end" not in seen["no_section_end"].content
    assert "\n" in seen["multiline_json"].content.split("<|tool_call_argument_begin|>")[1].split("<|tool_call_end|>")[0]
    assert seen["think"].content.startswith("<think>") and "</think>" not in seen["think"].content
    assert sim.stats.fault_counts() == {"leak": len(LEAK_VARIANTS)} and sim.stats.tool_calls_emitted == 0


async def test_leak_rate_zero_never_leaks(make_sim, client, tmp_path: Path) -> None:
    sim = await make_sim(faults=("leak",), fault_rate=0.0)
    answers = await drive(client, sim, tmp_path)
    assert len(answers) == 11 and not sim.stats.faults


# --- hang ----------------------------------------------------------------------------


async def _history_after_first_call(client: httpx.AsyncClient, sim: RunningSimulator) -> list[dict[str, object]]:
    messages = start_messages()
    first = await ask(client, sim, messages)
    assert first.finish_reason == "tool_calls", "hang must not fire before any tool result"
    return messages + [assistant_turn(first), tool_result(str(first.tool_calls[0]["id"]))]


async def _read_until_timeout(client: httpx.AsyncClient, sim: RunningSimulator, messages: list[dict[str, object]], wait: float) -> tuple[int, bytes]:
    body = {"model": "kimi-k2.5", "messages": messages, "tools": OPENCODE_TOOLS, "stream": True}
    received = b""
    async with client.stream("POST", f"{sim.base_url}/chat/completions", json=body) as response:
        status = response.status_code
        try:
            async with asyncio.timeout(wait):
                async for data in response.aiter_raw():
                    received += data
        except TimeoutError:
            pass
    return status, received


async def test_hang_sends_headers_then_nothing_until_the_client_leaves(make_sim, client) -> None:
    sim = await make_sim(faults=("hang",), fault_rate=1.0)
    messages = await _history_after_first_call(client, sim)
    status, received = await _read_until_timeout(client, sim, messages, 0.5)
    assert status == 200 and received == b""
    await sim.wait_for(lambda s: s.hangs_active == 0 and s.disconnects == 1, timeout=5)
    retry = await ask(client, sim, messages)
    assert retry.finish_reason == "tool_calls" and retry.tool_calls[0]["id"] == "functions.write:1"
    assert sim.stats.fault_counts() == {"hang": 1}


async def test_hang_can_send_keepalive_pings(make_sim, client) -> None:
    sim = await make_sim(faults=("hang",), fault_rate=1.0, keepalive_interval=0.05)
    messages = await _history_after_first_call(client, sim)
    status, received = await _read_until_timeout(client, sim, messages, 0.5)
    assert status == 200 and received.startswith(b": ping\n\n") and b"data:" not in received
    await sim.wait_for(lambda s: s.hangs_active == 0, timeout=5)


async def test_hang_repeats_bounds_hangs_per_identical_request(make_sim, client) -> None:
    sim = await make_sim(faults=("hang",), fault_rate=1.0, hang_repeats=2)
    messages = await _history_after_first_call(client, sim)
    for _ in range(2):
        status, received = await _read_until_timeout(client, sim, messages, 0.2)
        assert (status, received) == (200, b"")
    assert (await ask(client, sim, messages)).finish_reason == "tool_calls"


async def test_close_ends_a_hanging_stream(client) -> None:
    sim = await start_simulator(SimulatorConfig(faults=("hang",), fault_rate=1.0, chunk_delay=0))
    messages = await _history_after_first_call(client, sim)
    body = {"model": "kimi-k2.5", "messages": messages, "tools": OPENCODE_TOOLS, "stream": True}
    async with client.stream("POST", f"{sim.base_url}/chat/completions", json=body) as response:
        assert response.status_code == 200
        await sim.wait_for(lambda s: s.hangs_active == 1, timeout=5)
        async with asyncio.timeout(5):
            await sim.close()


# --- validation rules ----------------------------------------------------------------


async def test_strict_rejects_missing_or_empty_reasoning(make_sim, client) -> None:
    sim = await make_sim(faults=("strict",), fault_rate=0.0)
    messages = start_messages()
    first = await ask(client, sim, messages)
    assert first.reasoning, "strict mode streams reasoning_content"
    turn = assistant_turn(first)
    history = messages + [turn, tool_result(str(first.tool_calls[0]["id"]))]
    assert (await ask(client, sim, history)).status == 200
    for bad in (None, ""):
        stripped = dict(turn)
        stripped.pop("reasoning_content")
        if bad is not None:
            stripped["reasoning_content"] = bad
        answer = await ask(client, sim, messages + [stripped, history[-1]])
        assert answer.status == 400
        assert answer.error == {
            "message": "thinking is enabled but reasoning_content is missing in assistant tool call message at index 2",
            "type": "invalid_request_error",
            "code": "reasoning_content_missing",
        }
    spaced = dict(turn, reasoning_content=" ")
    assert (await ask(client, sim, messages + [spaced, history[-1]])).status == 200


async def test_strict_steps_without_thinking_at_fault_rate(make_sim, client) -> None:
    sim = await make_sim(faults=("strict",), fault_rate=1.0)
    first = await ask(client, sim, start_messages())
    assert first.finish_reason == "tool_calls" and first.reasoning == ""
    replayed = start_messages() + [assistant_turn(first), tool_result(str(first.tool_calls[0]["id"]))]
    second = await ask(client, sim, replayed)
    assert second.status == 400 and "at index 2" in str(second.error["message"])  # type: ignore[index]


async def test_orphan_tool_result_is_rejected(make_sim, client) -> None:
    sim = await make_sim(faults=("orphan",))
    messages = start_messages()
    first = await ask(client, sim, messages)
    call_id = str(first.tool_calls[0]["id"])
    good = messages + [assistant_turn(first), tool_result(call_id)]
    assert (await ask(client, sim, good)).status == 200
    stripped = dict(assistant_turn(first))
    stripped.pop("tool_calls")
    answer = await ask(client, sim, messages + [stripped, tool_result(call_id)])
    assert answer.status == 400 and answer.error["message"] == ORPHAN_MESSAGE  # type: ignore[index]
    foreign = await ask(client, sim, messages + [assistant_turn(first), tool_result("call_59ad")])
    assert foreign.status == 400


@pytest.mark.parametrize("content", ["", [], [{"type": "text", "text": ""}], None])
async def test_empty_assistant_content_is_rejected(make_sim, client, content: object) -> None:
    sim = await make_sim(faults=("empty",))
    messages = start_messages() + [{"role": "assistant", "content": content}, {"role": "user", "content": "go on"}]
    answer = await ask(client, sim, messages)
    assert answer.status == 400
    assert answer.error["message"] == "The content field in the Message object at messages.2 is empty"  # type: ignore[index]


async def test_empty_rule_accepts_text_and_tool_calls(make_sim, client) -> None:
    sim = await make_sim(faults=("empty",))
    first = await ask(client, sim, start_messages())
    no_text = dict(assistant_turn(first), content="")
    history = start_messages() + [no_text, tool_result(str(first.tool_calls[0]["id"]))]
    assert (await ask(client, sim, history)).status == 200
    chatty = start_messages() + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "go on"}]
    assert (await ask(client, sim, chatty)).status == 200


# --- determinism and bad input -------------------------------------------------------


async def _transcript(client: httpx.AsyncClient, seed: int) -> list[bytes]:
    sim = await start_simulator(SimulatorConfig(faults=("leak",), fault_rate=0.5, seed=seed, chunk_delay=0, fixed_created=1))
    try:
        messages = start_messages()
        raws = []
        for _ in range(6):
            answer = await ask(client, sim, messages, stream_options={"include_usage": True})
            raws.append(answer.raw)
            planned = planned_turn(messages)
            messages += [planned, tool_result(planned["tool_calls"][0]["id"])]  # type: ignore[index]
        return raws
    finally:
        await sim.close()


async def test_same_seed_gives_the_same_bytes(client) -> None:
    first, again, other = await _transcript(client, 7), await _transcript(client, 7), await _transcript(client, 8)
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'{"model": "kimi-k2.5"}', 400, "invalid_request"),
        (b'{"model": "kimi-k2.5", "messages": [{"content": "no role"}]}', 400, "invalid_request"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
    ],
)
async def test_bad_input_gets_an_openai_error(make_sim, client, payload: bytes, status: int, code: str) -> None:
    sim = await make_sim()
    response = await client.post(f"{sim.base_url}/chat/completions", content=payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert (await ask(client, sim, start_messages())).status == 200, "the host keeps serving"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "x"])},
    optional={"content": _json, "tool_calls": _json, "tool_call_id": _json, "reasoning_content": _json},
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_message, min_size=1, max_size=6), tools=_json)
def test_odd_but_well_formed_requests_never_crash_the_host(messages: list[dict[str, object]], tools: object) -> None:
    config = SimulatorConfig(faults=("leak", "hang", "strict", "orphan", "empty"), fault_rate=0.5)
    reply = next_reply(messages, tools, config.steps)
    validate(config, messages)
    decide(config, reply, messages, fingerprint(messages), 0)


def test_the_same_task_in_another_folder_on_another_day_meets_the_same_faults() -> None:
    """The fingerprint that draws every fault leaves out the system prompt (opencode's
    names the folder and the date) and the folder wherever the dialog repeats it."""

    def dialog(folder: str, date: str, result: str = "ok 2") -> list[dict[str, object]]:
        system, user = start_messages(folder)
        system["content"] = f"{system['content']}\nToday's date: {date}"
        call = {"id": "functions.bash:0", "type": "function",
                "function": {"name": "bash", "arguments": json.dumps({"command": f"cd {folder} && ls"})}}
        return [system, user, {"role": "assistant", "content": "", "tool_calls": [call]},
                tool_result("functions.bash:0", f"{folder}/calc.py\n{result}")]

    here = fingerprint(dialog("/tmp/pytest-1/work", "Sat Nov 21 2026"))
    assert fingerprint(dialog("/home/dev/other place", "Sun Nov 22 2026")) == here
    assert fingerprint(dialog("/tmp/pytest-1/work", "Sat Nov 21 2026", "ok 1")) != here
    assert fingerprint(dialog("/tmp/pytest-1/work", "x")[1:]) != here, "no folder stated: kept"


async def test_models_are_listed(make_sim, client) -> None:
    sim = await make_sim(models=("kimi-k2.5", "moonshotai.kimi-k2.5"))
    data = (await client.get(f"{sim.base_url}/models")).json()
    assert [m["id"] for m in data["data"]] == ["kimi-k2.5", "moonshotai.kimi-k2.5"]


def test_config_rejects_unknown_faults_and_bad_rates() -> None:
    with pytest.raises(SimulatorConfigError, match="unknown fault"):
        SimulatorConfig(faults=("leek",))
    with pytest.raises(SimulatorConfigError, match="fault_rate"):
        SimulatorConfig(fault_rate=1.5)


def test_simulator_never_imports_textual_or_rich() -> None:
    code = "import sys, proxy_core.simulator, proxy_core.simulator.__main__; print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_command_line_entry_point_serves(client) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy_core.simulator", "--port", "0", "--faults", "leak,hang", "--seed", "1",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        base_url = re.search(r"(http://\S+/v1)", line).group(1)  # type: ignore[union-attr]
        models = (await client.get(f"{base_url}/models")).json()
        assert models["data"][0]["id"] == "kimi-k2.5"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def _first_chunk_after(client: httpx.AsyncClient, sim: RunningSimulator,
                             content: str) -> float:
    """Seconds from sending a streamed request to its first chunk (headers come at once)."""
    body = {"model": "kimi-k2.5", "stream": True,
            "messages": [{"role": "user", "content": content}]}
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.stream("POST", sim.base_url + "/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            return loop.time() - started
    raise AssertionError("no chunk")


async def test_slow_but_healthy_profile_thinks_longer_the_larger_the_request(make_sim, client) -> None:
    sim = await make_sim(ttfb=0.1, ttfb_per_kb=0.01)
    small = await _first_chunk_after(client, sim, "hi")
    large = await _first_chunk_after(client, sim, "x" * 60_000)
    assert small >= 0.1 and large >= 0.1 + 0.6
    assert large > small


def test_ttfb_jitter_stays_within_its_share() -> None:
    config = SimulatorConfig(ttfb=1.0, ttfb_per_kb=0.5, ttfb_jitter=0.2)
    assert config.first_chunk_delay(2000, 0.5) == pytest.approx(2.0)
    assert config.first_chunk_delay(2000, 0.0) == pytest.approx(1.6)
    assert config.first_chunk_delay(2000, 1.0) == pytest.approx(2.4)
    with pytest.raises(SimulatorConfigError):
        SimulatorConfig(ttfb_jitter=1.5)
