"""The `switchboard` command line (headless parts)."""

from __future__ import annotations

import json

import pytest

from tui.cli import main


@pytest.mark.parametrize("argv", [["--port", "5001", "opencode-config"],
                                  ["opencode-config", "--port", "5001"]])
def test_options_before_or_after_the_subcommand(argv: list[str], capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no user config: built-in simulator
    assert main(argv) == 0
    block = json.loads(capsys.readouterr().out)
    provider = block["provider"]["switchboard"]
    assert provider["options"]["baseURL"] == "http://127.0.0.1:5001/v1"
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert block["model"] == "switchboard/kimi-k2.5"
    assert provider["models"]["kimi-k2.5"]["tool_call"] is True


def test_opencode_config_lists_route_models(capsys, tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[upstreams.s]\nkind = "simulator"\n'
                      '[[routes]]\nmodel = "kimi-k2.5"\ntargets = ["s:kimi-k2.5"]\n'
                      '[[routes]]\nmodel = "glm-*"\ntargets = ["s:glm-4.6"]\n')
    assert main(["opencode-config", "--config", str(config), "--provider", "sb"]) == 0
    block = json.loads(capsys.readouterr().out)
    assert set(block["provider"]["sb"]["models"]) == {"kimi-k2.5", "glm-4.6"}


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("switchboard ")


@pytest.mark.parametrize(("port", "says"), [("99999", "between 0 and 65535"), ("-1", "between"),
                                            ("abc", "not a port number")])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_port_out_of_range_is_refused_before_anything_starts(
        port: str, says: str, where: str, capsys) -> None:
    # Before, `serve --port 99999` reported itself ready on a port that cannot exist.
    argv = ["--port", port, "serve"] if where == "before" else ["serve", "--port", port]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
