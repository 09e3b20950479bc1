"""The external programs the tests run, found on the PATH the tests hand to them.

That PATH starts with the directory of the running Python (the venv's `bin`),
so tools installed by the test extra (`rg` from the `ripgrep` wheel, the
`switchboard` entry point) are found without any system package.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def tool_path() -> str:
    """`$PATH` with the venv's `bin` first."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def require_tool(name: str, why: str) -> str:
    """The full path of `name` on `tool_path()`; fails the test with one line naming the
    tool and why it is needed when it is missing."""
    found = shutil.which(name, path=tool_path())
    if found is None:
        pytest.fail(f"`{name}` is not on PATH: {why}", pytrace=False)
    return found
