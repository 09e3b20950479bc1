"""Import hygiene: `proxy_core` never imports `textual` or `rich` (checked in a fresh interpreter), and no import cycles."""

from __future__ import annotations

import json
import os
import re
import signal


import subprocess
import sys
from pathlib import Path

import httpx

from import_graph import cycles, import_graph

REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import importlib, json, pkgutil, sys
extra = sys.argv[1:]
import proxy_core
imported = ["proxy_core"]
for info in pkgutil.walk_packages(proxy_core.__path__, "proxy_core."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue  # importing a __main__ would run it
    if info.name == "proxy_core.telemetry.otel":
        continue  # the SDK side of telemetry: imported only when export is on
    importlib.import_module(info.name)
    imported.append(info.name)
for name in extra:
    importlib.import_module(name)
    imported.append(name)
ui = sorted(n for n in sys.modules if n.split(".")[0] in ("textual", "rich"))
otel = sorted(n for n in sys.modules if n.split(".")[0] == "opentelemetry")
print(json.dumps({"imported": imported, "ui": ui, "otel": otel}))
"""


def run_check(*extra: str) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", CHECK, *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_proxy_core_and_every_submodule_import_without_textual_or_rich() -> None:
    result = run_check()
    imported = set(result["imported"])
    # The walk really reached the package (so an empty walk cannot pass).
    for name in ("proxy_core.app", "proxy_core.serve", "proxy_core.pipeline",
                 "proxy_core.upstreams.openai", "proxy_core.control", "proxy_core.journal"):
        assert name in imported
    assert result["ui"] == []


def test_headless_cli_imports_without_textual_or_rich() -> None:
    # `switchboard serve` and `opencode-config` must work headless too.
    assert run_check("tui.cli")["ui"] == []


def test_the_check_would_see_textual() -> None:
    # Guard against a check that can never fail: importing textual is detected.
    assert any(n.startswith("textual") for n in run_check("textual")["ui"])


# `switchboard serve` / `opencode-config` really run (not only import) without Textual:
# the process writes the UI modules it holds to a file as it exits.
RUN = r"""
import atexit, json, sys
report, preload, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
def dump():
    with open(report, "w") as out:
        json.dump(sorted(n for n in sys.modules if n.split(".")[0] in ("textual", "rich")), out)
atexit.register(dump)
for name in filter(None, preload.split(",")):
    __import__(name)
from tui.cli import main
sys.exit(main(argv))
"""


def run_cli(tmp_path: Path, *argv: str, preload: str = "") -> tuple[str, list[str]]:
    report = tmp_path / "ui-modules.json"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", RUN, str(report), preload, *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(report.read_text())


def test_opencode_config_runs_without_textual_or_rich(tmp_path: Path) -> None:
    out, ui = run_cli(tmp_path, "opencode-config")
    assert json.loads(out)["model"] == "switchboard/kimi-k2.5" and ui == []


def test_the_run_check_would_see_textual(tmp_path: Path) -> None:
    assert "textual" in run_cli(tmp_path, "opencode-config", preload="textual")[1]


def test_serve_runs_and_stops_without_textual_or_rich(tmp_path: Path) -> None:
    report = tmp_path / "ui-modules.json"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", RUN, str(report), "", "serve", "--port", "0"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "switchboard ready on http://..." (or EOF on failure)
        match = re.search(r"(http://\S+)", line)
        assert match, f"serve did not start: {line!r}"
        health = httpx.get(f"{match.group(1)}/switchboard/api/health", timeout=10)
        assert health.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert json.loads(report.read_text()) == []


def test_proxy_core_does_not_import_opentelemetry_until_export_is_on() -> None:
    # Telemetry is off by default: the SDK (an optional extra) stays out of the core,
    # also once a proxy is built from the built-in config.
    result = run_check("proxy_core.telemetry", "tui.cli")
    assert "proxy_core.telemetry" in result["imported"]
    assert result["otel"] == []
    build = ("import sys; from proxy_core.app import SwitchboardProxy; "
             "from proxy_core.config import BUILTIN_CONFIG, parse_config; "
             "p = SwitchboardProxy(parse_config(BUILTIN_CONFIG), journal=False); "
             "assert p.telemetry is None; "
             "print(sorted(n for n in sys.modules if n.startswith('opentelemetry')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_check_would_see_opentelemetry() -> None:
    assert run_check("proxy_core.telemetry.otel")["otel"]


def test_no_import_cycles_in_the_core_or_the_dashboard() -> None:
    graph = import_graph(REPO, ("proxy_core", "tui"))
    assert len(graph) > 50 and graph["proxy_core.app"] >= {"proxy_core.control", "proxy_core.server"}
    assert cycles(graph) == []


def test_the_cycle_check_would_see_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.b import B\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import A\n")
    (package / "c.py").write_text("from . import a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
