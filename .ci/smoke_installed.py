"""Smoke-test an installed `switchboard` as a user would, from a folder outside the checkout.

Run by `.ci/run` with the Python of a fresh venv that holds only the wheel
(`python -I`: nothing from the checkout or the environment leaks in):

    switchboard --version
    switchboard serve    health check, one chat completion on the simulator, clean stop
    switchboard demo     in a pseudo-terminal: the dashboard draws the demo's sessions
                         in the built-in dark theme, and `q` quits with status 0

Only the standard library and what the wheel installs (httpx) are used.
Every wait is bounded; a failure prints what went wrong and what the
program printed, and exits 1.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
SWITCHBOARD = str(BIN / "switchboard")
#: The built-in dark theme's background (themes/dark.toml, #14171C) as a 24-bit SGR colour.
DARK_BACKGROUND = b"48;2;20;23;28"


class SmokeFailure(Exception):
    pass


def user_env(home: Path) -> dict[str, str]:
    """A new user: fresh config and data folders, a 24-bit colour terminal."""
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "TERM": "xterm-256color", "COLORTERM": "truecolor", "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1"}


def check_installed_outside(checkout: Path) -> None:
    import tui.themes
    where = Path(tui.themes.__file__).resolve()
    if checkout in where.parents:
        raise SmokeFailure(f"tui is imported from the checkout ({where}), not the installed wheel")
    if not (where.parent / "builtin_themes" / "dark.toml").is_file():
        raise SmokeFailure(f"the wheel has no built-in themes beside {where}")


def check_version(env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run([SWITCHBOARD, "--version"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0 or not re.fullmatch(r"switchboard \d+\.\d+\.\d+\S*\n", done.stdout):
        raise SmokeFailure(f"--version: status {done.returncode}, printed {done.stdout!r} "
                           f"{done.stderr!r}")
    print(f"smoke: {done.stdout.strip()}")


def read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line `serve` prints, waiting at most `timeout` seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise SmokeFailure(f"serve printed no ready line within {timeout:g}s ({line!r})")
        byte = os.read(fd, 1)
        if not byte:
            raise SmokeFailure(f"serve exited before it was ready (printed {line!r})")
        line += byte
    return line.decode()


def check_serve(env: dict[str, str], cwd: Path) -> None:
    log = cwd / "serve.log"
    with log.open("wb") as errors:
        process = subprocess.Popen([SWITCHBOARD, "serve", "--port", "0"], cwd=cwd, env=env,
                                   stdout=subprocess.PIPE, stderr=errors)
    try:
        try:
            line = read_ready_line(process, timeout=30)
            match = re.search(r"(http://\S+)", line)
            if match is None:
                raise SmokeFailure(f"serve's ready line names no address: {line!r}")
            base = match.group(1)
            health = httpx.get(f"{base}/switchboard/api/health", timeout=10)
            if health.status_code != 200:
                raise SmokeFailure(f"health check: {health.status_code} {health.text[:300]}")
            body = {"model": "kimi-k2.5", "stream": False, "messages": [
                {"role": "system", "content": "You are a coding agent.\n<env>\n  Working "
                                              f"directory: {cwd}\n</env>"},
                {"role": "user", "content": "build a calculator"}]}
            answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
            data = answer.json() if answer.status_code == 200 else {}
            choices = data.get("choices") or [{}]
            if answer.status_code != 200 or not choices[0].get("finish_reason"):
                raise SmokeFailure(f"chat completion: {answer.status_code} {answer.text[:500]}")
            print(f"smoke: serve answered on {base} "
                  f"(finish_reason {choices[0]['finish_reason']})")
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=20)
            if status != 0:
                raise SmokeFailure(f"serve stopped with status {status} after SIGTERM")
        except subprocess.TimeoutExpired:
            raise SmokeFailure("serve did not stop within 20s of SIGTERM") from None
    except SmokeFailure as failure:
        raise SmokeFailure(f"{failure}\n--- serve's log ---\n{log.read_text()[-3000:]}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print("smoke: serve stopped cleanly")


def check_demo(env: dict[str, str], cwd: Path) -> None:
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 180, 0, 0))
    process = subprocess.Popen([SWITCHBOARD, "demo", "--port", "0"], cwd=cwd, env=env,
                               stdin=child, stdout=child, stderr=child, start_new_session=True)
    os.close(child)
    seen = b""

    def read_until(done: Callable[[], bool], timeout: float, what: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise SmokeFailure(f"demo: no {what} within {timeout:g}s")
            if not select.select([main], [], [], left)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every program on the terminal's other side is gone
                chunk = b""
            if chunk:
                seen += chunk
                continue
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                raise SmokeFailure(f"demo: no {what} within {timeout:g}s") from None
            if not done():
                raise SmokeFailure(f"demo exited ({process.returncode}) before {what}")

    try:
        try:
            read_until(lambda: len(set(re.findall(rb"ses_demo_\w+", seen))) >= 3, 30,
                       "three demo sessions on screen")
            if DARK_BACKGROUND not in seen:
                raise SmokeFailure("demo: the built-in dark theme's background is not drawn")
            if b"not found" in seen:
                raise SmokeFailure("demo: a theme was not found")
            os.write(main, b"q")
            read_until(lambda: process.poll() is not None, 20, "exit after `q`")
            if process.returncode != 0:
                raise SmokeFailure(f"demo exited with status {process.returncode} after `q`")
        except SmokeFailure as failure:
            text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen)[-2000:]
            raise SmokeFailure(f"{failure}\n--- what it drew (escapes removed) ---\n"
                               f"{text.decode(errors='replace')}") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(main)
    print("smoke: demo drew its sessions in the dark theme and quit cleanly")


def main() -> int:
    checkout = Path(sys.argv[1]).resolve()
    try:
        check_installed_outside(checkout)
        with tempfile.TemporaryDirectory(prefix="switchboard-user-") as home:
            cwd = Path(home) / "elsewhere"
            cwd.mkdir()
            env = user_env(Path(home))
            check_version(env, cwd)
            check_serve(env, cwd)
            check_demo(env, cwd)
    except SmokeFailure as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
