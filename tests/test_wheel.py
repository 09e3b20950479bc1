"""The wheel a user installs: it holds everything the app reads, and the installed
dashboard finds its built-in themes.

The wheel is built from this checkout (`pip wheel`, as `.ci/run` does) and
installed with its dependencies into a fresh venv in a temporary folder;
`switchboard demo` then runs from another folder in a pseudo-terminal, with
nothing from the checkout on its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from terminal_support import Terminal, app_env
from tui.themes import load_themes

REPO = Path(__file__).resolve().parents[1]
THEMES = load_themes(REPO / "themes").themes


def run(command: list[str], *, cwd: Path, timeout: float) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        cwd=dist, timeout=600)
    (built,) = dist.glob("agent_switchboard-*.whl")
    return built


def test_the_wheel_holds_every_module_the_built_in_themes_and_the_licence(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO)) for package in ("proxy_core", "tui")
               for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert len(sources) > 40 and sources <= names, sorted(sources - names)
    themes = {f"tui/builtin_themes/{p.name}" for p in (REPO / "themes").glob("*.toml")}
    assert themes == {n for n in names if n.startswith("tui/builtin_themes/")}
    assert len(themes) == 3
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert zipfile.ZipFile(wheel).read(licence) == (REPO / "LICENSE").read_bytes()
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode()


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv holding the wheel. Its dependencies (pinned, identical) are borrowed from
    the venv running the tests through a `.pth` line, which adds that folder to the path
    but runs none of its `.pth` files: the checkout's editable install stays out. (`.ci/run`
    installs the wheel with its dependencies from the registry.)"""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent, timeout=300)
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--no-deps", str(wheel)], cwd=venv.parent, timeout=300)
    (site,) = venv.glob("lib/python3*/site-packages")
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "borrowed-dependencies.pth").write_text("\n".join(borrowed) + "\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                           "import tui.themes; print(tui.themes.BUILTIN_THEMES_DIR)"],
                          cwd=venv.parent, capture_output=True, text=True, timeout=60)
    assert Path(done.stdout.strip()) == site / "tui" / "builtin_themes", done.stderr
    return venv


def palette(name: str) -> set[str]:
    """The theme's background colours as pyte names them (`#14171C` -> `14171c`)."""
    theme = THEMES[name]
    return {str(c).lstrip("#").lower() for c in (theme.background, theme.surface, theme.panel)
            if c}


def main_background(terminal: Terminal) -> str:
    """The background colour of most cells on the screen."""
    counts = Counter(terminal.background(x, y) for y in range(terminal.screen.lines)
                     for x in range(terminal.screen.columns))
    return counts.most_common(1)[0][0]


def test_the_installed_demo_shows_the_dark_theme_and_t_cycles_the_built_ins(
        wheel: Path, tmp_path: Path) -> None:
    venv = install(wheel, tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**app_env(tmp_path),
           "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")])}
    terminal = Terminal([str(venv / "bin" / "switchboard"), "demo", "--port", "0"],
                        cwd=elsewhere, env=env, width=180, height=50)
    try:
        screen = terminal.wait_for(lambda s: "ses_demo_" in s and "● live" in s, timeout=30,
                                   what="the demo's sessions")
        assert "not found" not in screen and "theme ignored" not in screen
        assert main_background(terminal) in palette("dark")
        terminal.send("?")
        terminal.wait_for(lambda s: "Themes: dark, light, high-contrast;" in s, timeout=30,
                          what="the help screen naming the built-in themes")
        terminal.send("\x1b")
        terminal.wait_for(lambda s: "Themes:" not in s, timeout=30, what="the help screen closed")
        # Each theme read off the screen's colours (its "theme: NAME" notice lasts only 2 s:
        # on a loaded machine the screen may not be drawn while it shows).
        for name in ("light", "high-contrast", "dark"):
            terminal.send("t")
            colours = palette(name)
            terminal.wait_for(lambda _s, colours=colours: main_background(terminal) in colours,
                              timeout=30, what=f"{name}'s background ({colours})")
        terminal.send("q")
        assert terminal.wait_exit(timeout=20) == 0
    finally:
        terminal.close()
