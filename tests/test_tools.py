"""A missing external program fails a test with one line naming it, not a bare assertion."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import opencode_runner
from tools import require_tool


def test_a_missing_tool_is_named_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there; the venv's bin has no node
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool("node", "opencode runs on Node 20")
    assert str(failed.value) == "`node` is not on PATH: opencode runs on Node 20"


def test_a_tool_in_the_venv_is_found_without_any_path(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    # `rg` comes from the ripgrep wheel of the test extra, in the venv's bin.
    assert Path(require_tool("rg", "opencode's grep tool")).parent == Path(sys.executable).parent

def test_opencode_without_node_fails_naming_node(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failed:
        opencode_runner.ensure_opencode()
    assert str(failed.value).startswith("`node` is not on PATH: ")
