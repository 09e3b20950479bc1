"""Driving a program in a real terminal from Python: a pseudo-terminal (pexpect) whose
output feeds a terminal emulator (pyte), so tests read the screen a user would see.

    terminal = Terminal([switchboard, "demo"], cwd=tmp_path, env=env, width=180, height=50)
    screen = terminal.wait_for(lambda s: "● live" in s, timeout=10, what="live sessions")
    terminal.send("q")
    assert terminal.wait_exit(timeout=15) == 0

A thread reads the program's output as it arrives, always (a terminal
nobody reads would block the program's writes), and feeds it to the
emulator; waits are woken by each chunk and check the predicate against the
new screen, between frames. Textual draws each frame inside a synchronized update
(`ESC[?2026h` ... `ESC[?2026l`) once the terminal says it supports one, so
the emulator answers that query as tmux or a modern terminal does, and a
predicate never sees half a frame. Nothing outside Python is needed (no tmux).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pexpect
import pyte

from tools import tool_path

#: The `switchboard` command of the Python running the tests.
SWITCHBOARD = Path(sys.executable).parent / "switchboard"


def app_env(home: Path) -> dict[str, str]:
    """A new user's environment under `home`: fresh config and data folders, a 24-bit
    colour terminal, and the PATH of the tests (the venv's bin first)."""
    return {"XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
            "HOME": str(home), "PATH": tool_path(), "TERM": "xterm-256color",
            "COLORTERM": "truecolor", "LANG": "C.UTF-8"}


_SYNC_QUERY = b"\x1b[?2026$p"   # DECRQM: is synchronized output supported?
_SYNC_REPLY = b"\x1b[?2026;2$y"  # DECRPM: supported, currently reset
_SYNC_START = b"\x1b[?2026h"
_SYNC_END = b"\x1b[?2026l"
_LONGEST = max(len(_SYNC_QUERY), len(_SYNC_START), len(_SYNC_END))


class Terminal:
    """One program in a `width` x `height` pseudo-terminal, with an emulated screen."""

    def __init__(self, command: list[str], *, cwd: Path, env: Mapping[str, str],
                 width: int = 200, height: int = 60) -> None:
        self.screen = pyte.Screen(width, height)
        self._stream = pyte.ByteStream(self.screen)
        self.exit_status: int | None = None
        self._ended = False
        self._in_frame = False  # inside a synchronized update
        self._tail = b""  # the end of the last chunk, for sequences split across reads
        self._changed = threading.Condition(threading.RLock())  # predicates may read cells
        # `env` is the whole environment: nothing is inherited (COLUMNS/LINES from a
        # test runner would shrink the app).
        self._child = pexpect.spawn(command[0], command[1:], cwd=str(cwd), env=dict(env),
                                    dimensions=(height, width), echo=False)
        self._reader = threading.Thread(target=self._read_all, name="terminal-reader",
                                        daemon=True)
        self._reader.start()

    def text(self) -> str:
        """The screen as lines of text."""
        with self._changed:
            return self._text()

    def _text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def background(self, x: int, y: int) -> str:
        """The background colour of one cell as pyte reports it (`"14171c"` for #14171C)."""
        with self._changed:
            return str(self.screen.buffer[y][x].bg)

    def _read_all(self) -> None:
        while True:
            try:
                data = self._child.read_nonblocking(65536, timeout=None)
            except (pexpect.EOF, OSError):
                break
            with self._changed:
                self._stream.feed(data)
                self._scan(data)
                self._changed.notify_all()
        try:
            self._child.wait()  # reaps it: the exit status is known from here on
        except pexpect.ExceptionPexpect:
            pass  # already reaped (by terminate in close)
        self._child.close()
        with self._changed:
            status = self._child.exitstatus
            self.exit_status = status if status is not None else -(self._child.signalstatus or 0)
            self._ended = True
            self._changed.notify_all()

    def _scan(self, data: bytes) -> None:
        seen = self._tail + data
        if seen.find(_SYNC_QUERY, max(len(self._tail) - len(_SYNC_QUERY) + 1, 0)) >= 0:
            self._child.send(_SYNC_REPLY)
        start, end = seen.rfind(_SYNC_START), seen.rfind(_SYNC_END)
        if start != end:  # both -1 means no marker here: the state holds
            self._in_frame = start > end
        self._tail = seen[-(_LONGEST - 1):]

    def send(self, keys: str) -> None:
        self._child.send(keys)

    def kill(self, sig: signal.Signals) -> None:
        """Send `sig` to the program itself."""
        self._child.kill(sig)

    def wait_for(self, predicate: Callable[[str], object], *, timeout: float,
                 what: str) -> str:
        """The screen text once `predicate` holds; AssertionError (with the screen) if it
        does not within `timeout` seconds or the program ends first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                screen = self._text()
                if not self._in_frame and predicate(screen):
                    return screen
                if self._ended:
                    raise AssertionError(f"the program ended (status {self.exit_status}) "
                                         f"before {what}:\n{screen}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}:"
                                         f"\n{screen}")
                self._changed.wait(left)

    def wait_exit(self, *, timeout: float) -> int:
        """The exit status once the program has ended (signals as negative numbers)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ended, timeout):
                raise AssertionError(f"the program did not exit within {timeout:g}s:\n"
                                     f"{self._text()}")
            assert self.exit_status is not None
            return self.exit_status

    def close(self) -> None:
        """End the program if it still runs."""
        if not self._ended:
            self._child.terminate(force=True)
        self._reader.join(timeout=30)
