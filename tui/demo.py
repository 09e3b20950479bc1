"""`switchboard demo`: the dashboard on the built-in simulator, driven by a scripted agent.

The proxy gets a built-in config (no account needed): `flaky`, a simulated
Kimi host that leaks tool calls as text, hangs after tool results and
enforces Moonshot's `reasoning_content` rule; `steady`, a strict but
reliable one; and `mantle`, an OpenAI-compatible upstream that is down
(nothing listens on its port). Route `kimi-k2.5` tries flaky then steady,
so a hang is retried; route `kimi-k2.5-mantle` tries mantle then flaky, so
its turns are rerouted (until mantle cools down for a while). The watchdog
is set short (3 s), so within seconds a new user sees live sessions, leaks
repaired, stalls retried and reroutes.

The agent plays several sessions at once over HTTP (httpx) like a coding
agent: it streams each completion, "runs" the tool calls it gets, appends
the results and asks again, until the model's final answer; then it starts
a new session. One session replays its history without the assistant's
tool calls (a known client bug), so restored calls show up too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from proxy_core.config import Config, parse_config
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEMO_TOML = """
[proxy]
journal = "{journal}"

[watchdog]
first_token_timeout = 3.0
idle_timeout = 3.0
max_attempts = 4
keepalive_interval = 1.0
cooldown = 15.0

[upstreams.mantle]          # down: nothing listens there, so its turns are rerouted
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
connect_timeout = 1.0

[upstreams.flaky]           # leaks tool calls (known and wild shapes), hangs or goes silent after tool results, strict
kind = "simulator"
faults = ["leak", "leak_wild", "hang", "empty_reply", "strict"]
fault_rate = 0.45
seed = {seed}
chunk_delay = 0.03

[upstreams.steady]
kind = "simulator"
faults = ["strict"]
seed = 5
chunk_delay = 0.02

[[routes]]
model = "kimi-k2.5"
targets = ["flaky:kimi-k2.5", "steady:kimi-k2.5"]
repairs = "kimi"

[[routes]]
model = "kimi-k2.5-mantle"
targets = ["mantle:kimi-k2.5", "flaky:kimi-k2.5"]
repairs = "kimi"
"""

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."


def demo_config(journal: Path, seed: int = 3) -> Config:
    return parse_config(DEMO_TOML.format(journal=journal.as_posix(), seed=seed), "<demo>")


def _tool(name: str, properties: dict[str, str], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": f"the {name} tool",
        "parameters": {"type": "object",
                       "properties": {k: {"type": v} for k, v in properties.items()},
                       "required": required}}}


TOOLS = [
    _tool("bash", {"command": "string", "description": "string"}, ["command"]),
    _tool("read", {"filePath": "string"}, ["filePath"]),
    _tool("write", {"filePath": "string", "content": "string"}, ["filePath", "content"]),
    _tool("edit", {"filePath": "string", "oldString": "string", "newString": "string"},
          ["filePath", "oldString", "newString"]),
    _tool("glob", {"pattern": "string"}, ["pattern"]),
    _tool("grep", {"pattern": "string", "include": "string"}, ["pattern"]),
]


def tool_result(name: str, arguments: str) -> str:
    """What the pretend tools answer."""
    try:
        args = json.loads(arguments)
    except ValueError:
        return "error: arguments are not JSON"
    if name == "write":
        return f"Wrote file successfully: {args.get('filePath')}"
    if name == "edit":
        return f"Edit applied successfully to {args.get('filePath')}"
    if name == "read":
        return f"<file>\n00001| def add(a, b):\n00002|     return a + b\n</file>  ({args.get('filePath')})"
    if name == "glob":
        return "calc.py\ntest_calc.py"
    if name == "grep":
        return "calc.py:6:def mul(a, b):"
    command = str(args.get("command", ""))
    return "ok 2" if "test_calc" in command else "(no output)"


@dataclass
class Reply:
    status: int
    text: str = ""
    reasoning: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      headers: dict[str, str]) -> Reply:
    """One streamed completion, collected."""
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raw = await response.aread()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw[:200].decode(errors="replace")
            return Reply(response.status_code, error=message)
        reply = Reply(200)
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                reply.error = str(chunk["error"].get("message", chunk["error"]))
                continue
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                reply.text += delta.get("content") or ""
                reply.reasoning += delta.get("reasoning_content") or ""
                reply.calls.extend(delta.get("tool_calls") or [])
                reply.finish = choice.get("finish_reason") or reply.finish
        return reply


@dataclass
class SessionPlan:
    label: str
    model: str
    strip_calls: bool = False


PLANS = (
    SessionPlan("a", "kimi-k2.5"),
    SessionPlan("b", "kimi-k2.5-mantle"),
    SessionPlan("c", "kimi-k2.5"),
    SessionPlan("d", "kimi-k2.5", strip_calls=True),
)


class DemoAgent:
    """Drives `sessions` concurrent scripted sessions through the proxy at `base_url`."""

    def __init__(self, base_url: str, *, sessions: int = 4, think: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.plans = [PLANS[i % len(PLANS)] for i in range(sessions)]
        self.think = think
        self.turns_sent = 0
        self.sessions_started = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="switchboard-demo-agent")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
            await asyncio.gather(*(self._sessions(client, index, plan)
                                   for index, plan in enumerate(self.plans)))

    async def _sessions(self, client: httpx.AsyncClient, index: int, plan: SessionPlan) -> None:
        await asyncio.sleep(index * 0.2)  # staggered, so the table fills in order
        round_ = 0
        while True:
            round_ += 1
            try:
                await self._session(client, f"ses_demo_{plan.label}{round_}", index + round_ * 7,
                                    plan)
            except asyncio.CancelledError:
                raise
            except Exception:  # the demo must never take the dashboard down
                log.exception("demo session failed")
            await asyncio.sleep(2.0)

    async def _session(self, client: httpx.AsyncClient, session_id: str, project: int,
                       plan: SessionPlan) -> None:
        self.sessions_started += 1
        url = f"{self.base_url}/v1/chat/completions"
        headers = {"x-session-id": session_id, "user-agent": "switchboard-demo-agent"}
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a coding agent in the Switchboard demo.\n"
                                          f"<env>\nWorking directory: /demo/project-{project}\n</env>"},
            {"role": "user", "content": PROMPT},
        ]
        for step in range(40):
            body = {"model": plan.model, "messages": messages, "tools": TOOLS, "stream": True,
                    "stream_options": {"include_usage": True}}
            reply = await self._ask(client, url, body, headers)
            if reply is None:
                return
            if not reply.calls:
                return  # the final answer
            assistant: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.reasoning:
                assistant["reasoning_content"] = reply.reasoning  # replayed as opencode does
            calls = [{"id": c["id"], "type": "function", "function": c["function"]}
                     for c in reply.calls]
            if not (plan.strip_calls and step % 3 == 1):  # the client bug, now and then
                assistant["tool_calls"] = calls
            elif not assistant["content"]:
                assistant["content"] = "Working on it."
            messages.append(assistant)
            await asyncio.sleep(self.think + (step % 3) * 0.25)  # "running" the tools
            for call in calls:
                function = call["function"]
                messages.append({"role": "tool", "tool_call_id": call["id"],
                                 "content": tool_result(function["name"], function["arguments"])})

    async def _ask(self, client: httpx.AsyncClient, url: str, body: dict[str, Any],
                   headers: dict[str, str]) -> Reply | None:
        """Send one request; on an error, wait and send it again, as agents do."""
        for _ in range(3):
            self.turns_sent += 1
            try:
                reply = await stream_chat(client, url, body, headers)
            except httpx.HTTPError as exc:
                log.warning("demo agent: %s", exc)
                reply = Reply(0, error=str(exc))
            if reply.status == 200 and reply.error is None:
                return reply
            await asyncio.sleep(1.0)
        return None
