"""The dashboard commands on the command line: `switchboard`, `demo`, `attach`, `--theme`.

(The terminal itself is driven in test_tui_demo.py and test_tui_terminal.py.)
"""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import pytest

from terminal_support import SWITCHBOARD, Terminal, app_env
from tui.cli import build_parser, main


@pytest.mark.parametrize(("argv", "command", "theme"), [
    (["--theme", "light"], None, "light"),
    (["demo", "--theme", "high-contrast"], "demo", "high-contrast"),
    (["--theme", "light", "demo"], "demo", "light"),
    (["attach", "http://10.0.0.2:4141", "--theme", "dark"], "attach", "dark"),
])
def test_dashboard_commands_parse(argv: list[str], command: str | None, theme: str) -> None:
    args = build_parser().parse_args(argv)
    assert args.command == command and args.theme == theme


def test_attach_url_is_optional() -> None:
    assert build_parser().parse_args(["attach"]).url is None
    assert build_parser().parse_args(["attach", "http://h:1"]).url == "http://h:1"


def test_plain_switchboard_reports_a_busy_port_before_taking_the_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[proxy]\njournal = "{tmp_path / "j.sqlite3"}"\n'
                      '[upstreams.s]\nkind = "simulator"\n'
                      '[[routes]]\nmodel = "*"\ntargets = ["s:kimi-k2.5"]\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--config", str(config), "--port", str(port), "--theme", "light"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_plain_switchboard_with_a_bad_config_exits_2(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[proxy]\nport = 'x'\n")
    assert main(["--config", str(config)]) == 2
    assert "config error" in capsys.readouterr().err


def test_sigterm_stops_the_dashboard_and_proxy_cleanly(tmp_path: Path) -> None:
    """`kill` (SIGTERM) quits like `q`: exit status 0, the proxy stopped, the port free."""
    terminal = Terminal([str(SWITCHBOARD), "--port", "0"], cwd=tmp_path, env=app_env(tmp_path),
                        width=160, height=40)
    try:
        screen = terminal.wait_for(lambda s: re.search(r"http://127\.0\.0\.1:\d+/v1", s),
                                   timeout=15, what="the dashboard")
        port = re.search(r"http://127\.0\.0\.1:(\d+)/v1", screen).group(1)
        terminal.kill(signal.SIGTERM)
        assert terminal.wait_exit(timeout=15) == 0  # a clean exit
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", int(port)))  # free again: the proxy really stopped
    finally:
        terminal.close()
