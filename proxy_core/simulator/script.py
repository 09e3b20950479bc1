"""The scripted coding task the simulated model plays.

The model is stateless: every request carries the whole dialog, and the
next step follows from how many tool calls the assistant has made since the
last user message. The task writes a small Python module and its test, runs
the test, reads, edits and re-runs, then searches the folder: ten tool
calls by default, then a final summary with ``finish_reason: "stop"``.

Each step lists the tools it could use, best first; the first one present
in the request's ``tools`` (with a schema the arguments fit) is used.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

JsonObject = dict[str, object]
ReplyKind = Literal["tool_call", "final", "side"]

MODULE = "calc.py"
TEST = "test_calc.py"

CALC_V1 = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n'
CALC_MUL = '\n\ndef mul(a, b):\n    """Return the product of a and b."""\n    return a * b\n'
CALC_V2 = CALC_V1 + CALC_MUL

TEST_HEAD_V1 = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TEST_HEAD_V2 = (
    "from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    "\n\ndef test_mul():\n    assert mul(4, 5) == 20\n"
)
TEST_MAIN = (
    '\n\nif __name__ == "__main__":\n'
    "    tests = [f for n, f in sorted(globals().items()) if n.startswith(\"test_\")]\n"
    "    for test in tests:\n"
    "        test()\n"
    '    print("ok", len(tests))\n'
)
TEST_V1 = TEST_HEAD_V1 + TEST_MAIN
TEST_V2 = TEST_HEAD_V2 + TEST_MAIN

#: What the folder holds once the default task has run to its end.
EXPECTED_FILES: Mapping[str, str] = {MODULE: CALC_V2, TEST: TEST_V2}
#: What the second test run prints.
EXPECTED_TEST_OUTPUT = "ok 2"

_WORKDIR_RE = re.compile(r"Working directory:\s*(\S[^\n<]*)")


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model makes, with a Kimi-native id."""

    id: str
    name: str
    arguments: JsonObject

    @property
    def arguments_json(self) -> str:
        """The arguments as compact JSON text, as a host streams them."""
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class Reply:
    """What the model answers to one request, before any fault is applied."""

    kind: ReplyKind
    text: str
    reasoning: str = ""
    tool_call: ToolCall | None = None
    #: Index of the step this reply plays (tool calls already made, for finals).
    step: int = 0

    @property
    def finish_reason(self) -> str:
        """``tool_calls`` when the reply calls a tool, else ``stop``."""
        return "tool_calls" if self.tool_call is not None else "stop"


@dataclass(frozen=True)
class _Option:
    """One way to play a step: a tool and its full arguments."""

    tool: str
    arguments: JsonObject


@dataclass(frozen=True)
class _Step:
    """One step of the task: what the model says, thinks and may call."""

    text: str
    reasoning: str
    options: tuple[_Option, ...] = field(default_factory=tuple)


def text_of(content: object) -> str:
    """The text of a message ``content``: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def working_directory(messages: Sequence[Mapping[str, object]]) -> str | None:
    """The agent's working folder, as opencode states it in the system prompt."""
    for message in messages:
        if message.get("role") != "system":
            continue
        match = _WORKDIR_RE.search(text_of(message.get("content")))
        if match:
            return match.group(1).strip()
    return None


def _tool_calls(message: Mapping[str, object]) -> list[object]:
    calls = message.get("tool_calls")
    return calls if isinstance(calls, list) else []


def count_tool_calls(messages: Sequence[Mapping[str, object]]) -> int:
    """All tool calls the assistant made in the dialog (Kimi's id counter)."""
    return sum(len(_tool_calls(m)) for m in messages if m.get("role") == "assistant")


def steps_done(messages: Sequence[Mapping[str, object]]) -> int:
    """Tool calls the assistant made since the last user message."""
    done = 0
    for message in messages:
        role = message.get("role")
        if role == "user":
            done = 0
        elif role == "assistant":
            done += len(_tool_calls(message))
    return done


def tool_schemas(tools: object) -> dict[str, JsonObject]:
    """Map tool name to its JSON-schema parameters from a request's ``tools``."""
    schemas: dict[str, JsonObject] = {}
    if not isinstance(tools, list):
        return schemas
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            params = function.get("parameters")
            schemas[function["name"]] = params if isinstance(params, dict) else {}
    return schemas


def fit_arguments(arguments: JsonObject, schema: JsonObject) -> JsonObject | None:
    """Keep only the arguments the schema knows; None if a required one is missing."""
    properties = schema.get("properties")
    fitted = dict(arguments)
    if isinstance(properties, dict):
        fitted = {k: v for k, v in arguments.items() if k in properties}
    required = schema.get("required")
    if isinstance(required, list) and any(key not in fitted for key in required):
        return None
    return fitted


def _bash(command: str, description: str) -> _Option:
    return _Option("bash", {"command": command, "description": description})


def _heredoc(path: str, content: str) -> str:
    return f"cat > '{path}' <<'SWITCHBOARD_EOF'\n{content}SWITCHBOARD_EOF"


def _task(root: str) -> list[_Step]:
    """The ten steps of the default task, with paths under ``root``."""
    calc, test = posixpath.join(root, MODULE), posixpath.join(root, TEST)
    run = _bash(f"python3 {TEST}", "Run the calculator tests")
    return [
        _Step(
            "I'll start by creating the calculator module.",
            "The user wants a small tested module. First write calc.py with an add function.",
            (_Option("write", {"filePath": calc, "content": CALC_V1}), _bash(_heredoc(calc, CALC_V1), "Write calc.py")),
        ),
        _Step(
            "Now a test for it.",
            "A plain-assert test file runs without pytest; give it a main block.",
            (_Option("write", {"filePath": test, "content": TEST_V1}), _bash(_heredoc(test, TEST_V1), "Write test_calc.py")),
        ),
        _Step("Let me run the test.", "Run the test file with python3 to check add works.", (run,)),
        _Step(
            "The test passes. Let me look at the module before extending it.",
            "Next feature is multiplication; read calc.py first so the edit is exact.",
            (_Option("read", {"filePath": calc}), _bash(f"cat '{calc}'", "Show calc.py")),
        ),
        _Step(
            "Adding a mul function.",
            "Append mul after add, keeping the same docstring style.",
            (
                _Option("edit", {"filePath": calc, "oldString": CALC_V1, "newString": CALC_V2}),
                _bash(_heredoc(calc, CALC_V2), "Rewrite calc.py with mul"),
            ),
        ),
        _Step(
            "Now the test file.",
            "Read test_calc.py before editing it to add a test for mul.",
            (_Option("read", {"filePath": test}), _bash(f"cat '{test}'", "Show test_calc.py")),
        ),
        _Step(
            "Adding a test for mul.",
            "Import mul and add test_mul next to test_add.",
            (
                _Option("edit", {"filePath": test, "oldString": TEST_HEAD_V1, "newString": TEST_HEAD_V2}),
                _bash(_heredoc(test, TEST_V2), "Rewrite test_calc.py with test_mul"),
            ),
        ),
        _Step("Re-running the tests.", "Both tests should pass now; expect 'ok 2'.", (run,)),
        _Step(
            "Let me list the Python files in the project.",
            "Check which files exist now.",
            (_Option("glob", {"pattern": "*.py"}), _bash("ls *.py", "List Python files")),
        ),
        _Step(
            "Finally, confirm where mul is defined.",
            "Search for the definition to be sure the edit landed.",
            (_Option("grep", {"pattern": "def mul", "include": "*.py"}), _bash("grep -n 'def mul' *.py", "Find mul")),
        ),
    ]


def _extra_steps(root: str) -> Iterator[_Step]:
    """Harmless further steps, repeated, for tasks longer than ten."""
    calc = posixpath.join(root, MODULE)
    extras = [
        _Step("Checking the module once more.", "Re-read calc.py.", (_Option("read", {"filePath": calc}),)),
        _Step("Listing files again.", "Glob the Python files.", (_Option("glob", {"pattern": "*.py"}), _bash("ls *.py", "List Python files"))),
        _Step("Running the tests again.", "Run the tests.", (_bash(f"python3 {TEST}", "Run the calculator tests"),)),
    ]
    while True:
        yield from extras


def plan_step(index: int, root: str) -> _Step:
    """The step at ``index`` of the task (0-based)."""
    task = _task(root)
    if index < len(task):
        return task[index]
    extras = _extra_steps(root)
    for _ in range(index - len(task)):
        next(extras)
    return next(extras)


def _final(done: int) -> Reply:
    text = (
        f"Done. I made {done} tool calls: calc.py now has add and mul, "
        "test_calc.py tests both, and the tests pass (ok 2)."
    )
    return Reply("final", text, "All steps are done; summarise for the user.", None, done)


def next_reply(messages: Sequence[Mapping[str, object]], tools: object, steps: int) -> Reply:
    """Decide the model's next reply from the dialog so far.

    Requests without tools (opencode's title generation and other side
    requests) get a short plain answer, never a tool call.
    """
    schemas = tool_schemas(tools)
    if not schemas:
        return Reply("side", "Scripted calculator task", "A short title is enough.")
    done = steps_done(messages)
    if done >= steps:
        return _final(done)
    root = working_directory(messages) or "."
    step = plan_step(done, root)
    for option in step.options:
        schema = schemas.get(option.tool)
        arguments = fit_arguments(option.arguments, schema) if schema is not None else None
        if arguments is not None:
            call_id = f"functions.{option.tool}:{count_tool_calls(messages)}"
            return Reply("tool_call", step.text, step.reasoning, ToolCall(call_id, option.tool, arguments), done)
    return Reply("final", f"I cannot continue: no usable tool for step {done + 1}.", "No tool fits.", None, done)
