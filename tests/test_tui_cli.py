"""The dashboard commands on the command line: `switchboard`, `demo`, `attach`, `--theme`.

(The terminal itself is driven in test_tui_demo.py and test_tui_tmux.py.)
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

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
