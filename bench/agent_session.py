"""One growing opencode-shaped session, turn by turn, for the journal and memory benchmarks.

Each turn's request is what opencode sends: the body of a real opencode
request (`tests/fixtures/opencode_request.json`: its ~10 KB system prompt
and tool schemas), the user's prompt, and the history so far — assistant
tool calls with `reasoning_content`, each answered by a `tool` message (a
numbered source listing or command output). Turn `n + 1` resends turn `n`'s
messages unchanged and adds one step: the history grows at the end only,
as an agent's does. Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "opencode_request.json"
_TOOLS = ("read", "bash", "grep", "edit")


def step(i: int, size: int) -> list[dict[str, Any]]:
    """Step `i`: an assistant tool call with reasoning, and a tool result of about `size` bytes."""
    tool = _TOOLS[i % len(_TOOLS)]
    path = f"/home/dev/project/src/module_{i % 53}.py"
    args = {"read": {"filePath": path}, "bash": {"command": f"pytest -q tests/test_{i % 53}.py"},
            "grep": {"pattern": f"def handle_{i}", "path": "/home/dev/project/src"},
            "edit": {"filePath": path, "oldString": f"return {i}", "newString": f"return {i + 1}"}
            }[tool]
    call_id = f"functions.{tool}:{i}"
    lines = []
    total = n = 0
    while total < size:
        line = f"{n + 1:05d}| def handle_{i}_{n}(request): return respond(request, {n * i % 977})"
        lines.append(line)
        total += len(line) + 1
        n += 1
    return [
        {"role": "assistant", "content": "",
         "reasoning_content": f"Step {i}: the test still fails; I will look at {path} next and "
                              "compare the error path with what the test expects. " * 2,
         "tool_calls": [{"id": call_id, "type": "function",
                         "function": {"name": tool, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "\n".join(lines)},
    ]


def session(turns: int, first_kb: int, step_kb: float, model: str) -> Iterator[dict[str, Any]]:
    """`turns` request bodies: the first about `first_kb` KB, each next one `step_kb` KB longer."""
    fixture = json.loads(_FIXTURE.read_text())
    messages = [fixture["messages"][0], fixture["messages"][1]]  # system prompt, user prompt
    base = {"model": model, "max_tokens": 32000, "top_p": 0.95, "messages": messages,
            "tools": fixture["tools"], "tool_choice": "auto", "stream": True,
            "stream_options": {"include_usage": True}}
    size = len(json.dumps(base))
    i = 0
    while size < first_kb * 1024:
        for message in step(i, 4000):
            messages.append(message)
            size += len(json.dumps(message)) + 2
        i += 1
    for _ in range(turns):
        yield {**base, "messages": list(messages)}
        messages.extend(step(i, int(step_kb * 1024) - 500))
        i += 1
