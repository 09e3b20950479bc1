"""An opencode-shaped chat request of a chosen size, for the relay benchmark.

What opencode sends on every turn of a long session (tests/fixtures/README.md
describes a real one): its ~10 KB system prompt, 14 tool schemas, the user's
prompt, then the history so far — assistant messages with `reasoning_content`
and one tool call each (`functions.NAME:IDX` ids, arguments as a JSON
string), each answered by a `tool` message holding what the tool printed
(source files with line numbers, command output). The history grows until
the body is `kb` KB; `kb=0` is a one-line prompt with no system prompt or
tools (the smallest request a client sends).

Deterministic: the same `kb` gives the same bytes, so every target in a run
receives the same request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "opencode_request.json"

#: Four more tools opencode offers in other configurations, so the request has 14.
_EXTRA_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "list", "description": "Lists files and directories in a given path.",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "The absolute path to list"},
            "ignore": {"type": "array", "items": {"type": "string"},
                       "description": "Glob patterns to ignore"}},
            "required": [], "$schema": "https://json-schema.org/draft/2020-12/schema"}}},
    {"type": "function", "function": {
        "name": "patch", "description": "Apply a unified diff to files in the working directory.",
        "parameters": {"type": "object", "properties": {
            "patchText": {"type": "string", "description": "The full patch text"}},
            "required": ["patchText"], "$schema": "https://json-schema.org/draft/2020-12/schema"}}},
    {"type": "function", "function": {
        "name": "todoread", "description": "Read the current todo list of the session.",
        "parameters": {"type": "object", "properties": {}, "required": [],
                       "$schema": "https://json-schema.org/draft/2020-12/schema"}}},
    {"type": "function", "function": {
        "name": "question", "description": "Ask the user a question and wait for the answer.",
        "parameters": {"type": "object", "properties": {
            "question": {"type": "string", "description": "What to ask"},
            "options": {"type": "array", "items": {"type": "string"}}},
            "required": ["question"], "$schema": "https://json-schema.org/draft/2020-12/schema"}}},
]

_CODE = [
    'def handle(request: Request) -> Response:',
    '    """Serve one request; errors become JSON bodies."""',
    '    payload = json.loads(request.body or "{}")',
    '    if not isinstance(payload, dict):',
    '        return error(400, "expected an object")',
    '    name = payload.get("name", "world").strip()',
    '    for key, value in sorted(payload.items()):',
    '        log.debug("field %s=%r", key, value)',
    '    return Response(200, {"greeting": f"hello, {name}"})',
    '',
    'class Cache:',
    '    def __init__(self, size: int = 128) -> None:',
    '        self._items: dict[str, bytes] = {}',
    '        self._size = size',
]

_REASONING = ("The user wants the failing test fixed. I read the handler and the test; the test "
              "expects a 400 with an error body when the payload is not an object, but the "
              "handler returns the wrong shape. Next I should look at {path} to see how errors "
              "are built, then edit the call site and run the tests again with bash. ")


def _tool_output(step: int, size: int) -> str:
    lines: list[str] = []
    n = 0
    total = 0
    while total < size:
        line = f"{n + 1:05d}| {_CODE[(n + step) % len(_CODE)]}"
        lines.append(line)
        total += len(line) + 1
        n += 1
    return "<file>\n" + "\n".join(lines) + "\n</file>"


def _step(i: int) -> list[dict[str, Any]]:
    """One agent step: an assistant tool call with reasoning, and the tool's result."""
    tool = ("read", "bash", "grep", "edit")[i % 4]
    path = f"/home/dev/project/src/module_{i % 37}.py"
    args = {"read": {"filePath": path},
            "bash": {"command": f"pytest -q tests/test_module_{i % 37}.py", "timeout": 120000},
            "grep": {"pattern": "def handle", "path": "/home/dev/project/src"},
            "edit": {"filePath": path, "oldString": "return error(400, \"bad\")",
                     "newString": "return error(400, \"expected an object\")"}}[tool]
    call_id = f"functions.{tool}:{i}"
    return [
        {"role": "assistant", "content": "",
         "reasoning_content": _REASONING.format(path=path),
         "tool_calls": [{"id": call_id, "type": "function",
                         "function": {"name": tool, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": call_id,
         "content": _tool_output(i, 1500 + (i * 797) % 5000)},
    ]


def agent_request(kb: int, model: str) -> dict[str, Any]:
    """A streamed request body of about `kb` KB (see the module docstring)."""
    if kb <= 0:
        return {"model": model, "stream": True,
                "messages": [{"role": "user", "content": "write a long story"}]}
    fixture = json.loads(_FIXTURE.read_text())
    messages = [fixture["messages"][0], fixture["messages"][1]]  # system prompt, user prompt
    body = {"model": model, "max_tokens": 32000, "top_p": 0.95, "messages": messages,
            "tools": fixture["tools"] + _EXTRA_TOOLS, "tool_choice": "auto", "stream": True,
            "stream_options": {"include_usage": True}}
    target = kb * 1024
    size = len(json.dumps(body))
    i = 0
    while size < target:
        for message in _step(i):
            messages.append(message)
            size += len(json.dumps(message)) + 1
        i += 1
    return body


def _as_sent(body: dict[str, Any]) -> bytes:
    """As `JSON.stringify` writes it: compact, and UTF-8 rather than `\\u` escapes (the
    system prompt has a few non-ASCII characters; a body of pure escapes would parse
    faster in the fake upstream than what an agent or Switchboard sends)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def agent_request_bytes(kb: int, model: str) -> bytes:
    return _as_sent(agent_request(kb, model))


def agent_session_bytes(kb: int, model: str, turns: int = 10) -> list[bytes]:
    """`turns` consecutive requests of one session, the middle one about `kb` KB.

    Each is the one before plus one agent step (a tool call and its
    result), as an agent sends them turn after turn. `kb=0` gives the
    one-line prompt alone.
    """
    if kb <= 0:
        return [agent_request_bytes(0, model)]
    body = agent_request(kb, model)
    messages = body["messages"]
    steps = (len(messages) - 2) // 2
    first = max(0, steps - turns // 2)
    history = messages + [m for i in range(steps, first + turns) for m in _step(i)]
    return [_as_sent({**body, "messages": history[:2 + 2 * (first + k)]})
            for k in range(turns)]


if __name__ == "__main__":
    for kb in (0, 100, 500, 1000):
        raw = agent_request_bytes(kb, "m")
        body = json.loads(raw)
        print(kb, len(raw) // 1024, "KB", len(body["messages"]), "messages",
              len(body.get("tools", [])), "tools")
