"""Themes as TOML files, validated into `textual.theme.Theme`.

Built-in themes live in the repository's `themes/` folder (`dark`, `light`,
`high-contrast`), which the wheel ships as `tui/builtin_themes/` (see
`pyproject.toml`); user themes in `$XDG_CONFIG_HOME/switchboard/themes/*.toml`
(a user theme with a built-in's name replaces it). A file that does not
validate is skipped and reported: the dashboard shows a notice and falls
back to the default theme; it never fails to start over a theme.

A theme file::

    name = "dusk"            # optional: the file name without .toml
    dark = true
    primary = "#4C9AFF"      # required; the rest are optional CSS colours
    secondary = "#7A8BA6"
    accent = "#C792EA"
    warning = "#E5B454"
    error = "#F0707A"
    success = "#6CC58A"
    foreground = "#D8DEE9"
    background = "#14171C"
    surface = "#1B1F26"
    panel = "#232A35"
    [variables]              # optional Textual design variables
    "footer-key-foreground" = "#4C9AFF"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

from proxy_core.config import default_config_path



def _builtin_themes_dir() -> Path:
    """Installed from a wheel: `tui/builtin_themes/`; in a checkout (also `pip install -e`),
    the `themes/` folder beside `tui/`."""
    here = Path(__file__).resolve().parent
    packaged = here / "builtin_themes"
    return packaged if packaged.is_dir() else here.parent / "themes"


BUILTIN_THEMES_DIR = _builtin_themes_dir()
DEFAULT_THEME = "dark"

_COLOURS = ("primary", "secondary", "accent", "warning", "error", "success", "foreground",
            "background", "surface", "panel", "boost")
_NUMBERS = ("luminosity_spread", "text_alpha")
_KEYS = {"name", "dark", "variables", *_COLOURS, *_NUMBERS}


class ThemeError(Exception):
    """A theme file is unreadable or invalid; the message names the file and the key."""


def user_config_dir() -> Path:
    return default_config_path().parent


def user_themes_dir() -> Path:
    return user_config_dir() / "themes"


def _colour(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ThemeError(f"{path}: {key}: must be a colour string, got {type(value).__name__}")
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeError(f"{path}: {key}: {value!r} is not a colour") from None
    return value


def parse_theme(text: str, path: Path) -> Theme:
    """Validate one theme file's text. Raises `ThemeError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ThemeError(f"{path}: {unknown[0]}: unknown key (expected: {', '.join(sorted(_KEYS))})")
    if "primary" not in data:
        raise ThemeError(f"{path}: primary: is required")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ThemeError(f"{path}: name: must be a non-empty string")
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeError(f"{path}: dark: must be true or false")
    kwargs: dict[str, Any] = {k: _colour(path, k, data[k]) for k in _COLOURS if k in data}
    for key in _NUMBERS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ThemeError(f"{path}: {key}: must be a number between 0 and 1")
            kwargs[key] = float(value)
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()):
        raise ThemeError(f"{path}: variables: must be a table of strings")
    theme = Theme(name=name.strip(), dark=dark, variables=dict(variables), **kwargs)
    try:
        theme.to_color_system().generate()
    except Exception as exc:  # a variable Textual cannot use
        raise ThemeError(f"{path}: cannot build the theme: {exc}") from None
    return theme


def load_theme_file(path: Path) -> Theme:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ThemeError(f"{path}: cannot read: {exc}") from None
    return parse_theme(text, path)


@dataclass
class ThemeSet:
    """The themes found, in order (built-ins first), and the files that were refused."""

    themes: dict[str, Theme] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


#: The order `t` cycles through the built-ins: dark, then light, then high contrast.
BUILTIN_ORDER = ("dark", "light", "high-contrast")


def _cycle_position(path: Path) -> tuple[int, str]:
    stem = path.stem
    return (BUILTIN_ORDER.index(stem) if stem in BUILTIN_ORDER else len(BUILTIN_ORDER), stem)


def load_themes(*folders: Path | None) -> ThemeSet:
    """Every `*.toml` theme in `folders` (missing folders are fine); later ones win by name.

    Within a folder the built-in names come first in `BUILTIN_ORDER`, the rest by name.
    """
    found = ThemeSet()
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml"), key=_cycle_position):
            try:
                theme = load_theme_file(path)
            except ThemeError as exc:
                found.problems.append(str(exc))
                continue
            found.themes[theme.name] = theme
    return found
