"""Run the real opencode client (pinned in tests/opencode) against a base URL.

``run_opencode`` writes an ``opencode.json`` into the working folder that
points a provider at ``base_url``, gives opencode fresh data, config and
state folders (and a cache kept between runs), runs ``opencode run --format
json PROMPT`` to its end, and parses the JSON events it prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tools import require_tool, tool_path

OPENCODE_DIR = Path(__file__).parent / "opencode"
OPENCODE_BIN = OPENCODE_DIR / "node_modules" / ".bin" / "opencode"
OPENCODE_CACHE = OPENCODE_DIR / ".cache"
OPENCODE_VERSION = "1.18.33"
PROVIDER = "sb"

#: Quiet, offline-friendly switches; none changes what is sent to the model.
_QUIET_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "NO_COLOR": "1",
}


@dataclass(frozen=True)
class OpencodeResult:
    """What one ``opencode run`` did."""

    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    events: list[dict[str, object]] = field(default_factory=list)

    def _tool_parts(self) -> list[dict[str, object]]:
        parts = []
        for event in self.events:
            part = event.get("part")
            if event.get("type") == "tool_use" and isinstance(part, dict):
                parts.append(part)
        return parts

    @property
    def tool_calls(self) -> int:
        """Tool calls opencode ran (any outcome)."""
        return len(self._tool_parts())

    @property
    def completed_tool_calls(self) -> int:
        """Tool calls whose state is ``completed``."""
        return sum(1 for p in self._tool_parts() if _state(p).get("status") == "completed")

    @property
    def tools_used(self) -> list[str]:
        """The tool names, in order."""
        return [str(p.get("tool")) for p in self._tool_parts()]

    @property
    def errors(self) -> list[dict[str, object]]:
        """The ``error`` events opencode reported."""
        return [e for e in self.events if e.get("type") == "error"]

    @property
    def texts(self) -> list[str]:
        """Assistant text parts, in order."""
        out = []
        for event in self.events:
            part = event.get("part")
            if event.get("type") == "text" and isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
        return out

    def describe(self) -> str:
        """A short summary for assertion messages."""
        return (
            f"rc={self.returncode} timed_out={self.timed_out} {self.duration:.1f}s "
            f"tools={self.tools_used} errors={json.dumps(self.errors)[:600]} "
            f"stderr={self.stderr[-800:]!r}"
        )


def _state(part: dict[str, object]) -> dict[str, object]:
    state = part.get("state")
    return state if isinstance(state, dict) else {}


def ensure_opencode() -> Path:
    """The pinned opencode binary, installed with npm from tests/opencode if missing.

    Also checks the programs opencode itself runs: `node`, and `rg` for its
    glob/grep tools (from the `ripgrep` wheel in the test extra)."""
    require_tool("node", "the end-to-end tests run the real opencode client on Node 20")
    require_tool("rg", "opencode's glob/grep tools run ripgrep; `pip install -e '.[test]'` "
                       "puts it in the venv's bin")
    if OPENCODE_BIN.exists():
        return OPENCODE_BIN
    npm = require_tool("npm", f"the end-to-end tests install opencode-ai@{OPENCODE_VERSION} "
                              "with npm into tests/opencode")
    OPENCODE_CACHE.mkdir(parents=True, exist_ok=True)
    with open(OPENCODE_CACHE / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not OPENCODE_BIN.exists():
            # Not `npm ci`: npm 11 writes only this platform's optional binary
            # package into the lock, and `ci` then refuses the lock elsewhere.
            # The version is pinned exactly in package.json either way.
            command = [npm, "install", "--no-audit", "--no-fund", "--no-save"]
            done = subprocess.run(command, cwd=OPENCODE_DIR, capture_output=True, text=True,
                                  timeout=600, env={**os.environ, "PATH": tool_path()})
            if done.returncode != 0:
                pytest.fail(f"`npm install` of opencode-ai@{OPENCODE_VERSION} in {OPENCODE_DIR} "
                            f"failed ({done.returncode}):\n{done.stderr[-2000:]}", pytrace=False)
    if not OPENCODE_BIN.exists():
        pytest.fail(f"npm ran but {OPENCODE_BIN} is still missing", pytrace=False)
    return OPENCODE_BIN


def opencode_config(
    base_url: str,
    model: str,
    *,
    chunk_timeout_ms: int | None,
    request_timeout_ms: int | None,
) -> dict[str, object]:
    """The ``opencode.json`` pointing a provider at ``base_url`` (reference §5)."""
    options: dict[str, object] = {"baseURL": base_url, "apiKey": "x"}
    if request_timeout_ms is not None:
        options["timeout"] = request_timeout_ms
    if chunk_timeout_ms is not None:
        options["chunkTimeout"] = chunk_timeout_ms
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "options": options,
                "models": {model: {"tool_call": True}},
            }
        },
        "model": f"{PROVIDER}/{model}",
        "small_model": f"{PROVIDER}/{model}",
    }


def parse_events(stdout: str) -> list[dict[str, object]]:
    """The JSON events of ``--format json`` output, skipping any other line."""
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def run_opencode(
    base_url: str,
    prompt: str,
    workdir: Path,
    *,
    model: str = "kimi-k2.5",
    timeout: float = 300,
    chunk_timeout_ms: int | None = 30_000,
    request_timeout_ms: int | None = 120_000,
    extra_env: dict[str, str] | None = None,
) -> OpencodeResult:
    """Run one ``opencode run`` session in ``workdir`` against ``base_url``.

    ``timeout`` bounds the whole process (seconds); ``chunk_timeout_ms`` and
    ``request_timeout_ms`` go into the provider options so a hung stream
    fails (or is retried by opencode) in bounded time. None leaves
    opencode's default.
    """
    binary = ensure_opencode()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = opencode_config(base_url, model, chunk_timeout_ms=chunk_timeout_ms, request_timeout_ms=request_timeout_ms)
    (workdir / "opencode.json").write_text(json.dumps(config, indent=2) + "\n")
    OPENCODE_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="opencode-home-") as home:
        env = dict(os.environ)
        env.update(_QUIET_ENV)
        env.update(
            {
                "PATH": tool_path(),  # `rg` from the venv (the ripgrep wheel)
                "XDG_DATA_HOME": f"{home}/data",
                "XDG_CONFIG_HOME": f"{home}/config",
                "XDG_STATE_HOME": f"{home}/state",
                "XDG_CACHE_HOME": str(OPENCODE_CACHE.resolve()),
                "PWD": str(workdir),
            }
        )
        env.update(extra_env or {})
        command = [str(binary), "run", "--format", "json", prompt]
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        timed_out = False
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            stdout, stderr = process.communicate()
        finally:
            if process.poll() is None:
                _kill_group(process)
                process.wait()
    duration = time.monotonic() - started
    returncode = -1 if timed_out else process.returncode
    return OpencodeResult(returncode, stdout, stderr, duration, timed_out, parse_events(stdout))


def _kill_group(process: subprocess.Popen[str]) -> None:
    """Kill opencode and whatever its tools started (its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
