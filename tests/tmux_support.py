"""Driving a program in a real terminal: tmux on a private socket, send-keys, capture-pane."""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path


class Tmux:
    """One tmux server (private socket) running one window with `command`."""

    def __init__(self, command: list[str], *, cwd: Path, env: Mapping[str, str],
                 width: int = 200, height: int = 60) -> None:
        self.socket = f"switchboard-test-{uuid.uuid4().hex[:10]}"
        self.session = "sb"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # env -i: nothing inherited (COLUMNS/LINES from a test runner would shrink the app).
        script = f"cd {shlex.quote(str(cwd))} && env -i {exports} {shlex.join(command)}; " \
                 "echo; echo \"[exited $?]\"; sleep 600"
        self._tmux("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                   "bash", "-c", script)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def capture(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session)

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def wait_for(self, predicate: Callable[[str], object], *, timeout: float,
                 what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}:\n{screen}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)
