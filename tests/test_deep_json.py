"""JSON nested as deep as the parser reads (1,024 levels) is encoded and shown wherever it
goes: to the upstream and the journal (`contents.encode`), in the dashboard's views
(`contents.readable`), even in a process whose recursion limit is still Python's default
(a dashboard showing a turn read back from the journal), and wherever else a front end
writes request values with `json` (`runner.run` allows it when the loop starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy_core.contents import MAX_DEPTH, encode, readable
from tui.pairing import content_text
from tui.widgets.detail import raw_text
from tui.widgets.palette import Palette


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.fixture
def default_recursion_limit() -> Iterator[None]:
    kept = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(max(kept, sys.getrecursionlimit()))


def test_the_deepest_value_read_encodes_for_the_upstream_and_the_journal(
        default_recursion_limit: None) -> None:
    deep = _nested(MAX_DEPTH)
    assert json.loads(encode(deep)) == deep


def test_the_dashboard_shows_and_exports_the_deepest_value_read(
        default_recursion_limit: None) -> None:
    deep = _nested(MAX_DEPTH)
    assert json.loads(readable(deep)) == deep
    shown = raw_text({"messages": [deep]}, Palette(*(["#ffffff"] * 8))).plain
    assert shown.startswith('{\n  "messages": [\n    [\n      {\n        "k": [')
    assert "press e to export the turn" in shown  # 4.7 MB indented: the view is cut
    deep_object = _nested(MAX_DEPTH - 1)  # content that is neither text nor a list of parts
    assert json.loads(content_text(deep_object)) == deep_object


#: In a fresh process, a session's fingerprint (a hash of its first messages, written with
#: `json`) of a system prompt nested 1,000 deep, under the loop every front end starts.
_FINGERPRINT = """
import sys
from proxy_core.runner import run
from proxy_core.sessions import session_id_for
deep = "leaf"
for _ in range(1000):
    deep = {"k": deep}
async def main():
    return session_id_for({}, [{"role": "system", "content": deep}, {"role": "user", "content": "go"}])
print(run(main()))
"""


def test_every_front_ends_loop_writes_the_deepest_value_read_wherever_json_does() -> None:
    done = subprocess.run([sys.executable, "-c", _FINGERPRINT], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("fp_"), done.stdout
