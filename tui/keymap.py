"""A user keymap: binding ids to keys, from `$XDG_CONFIG_HOME/switchboard/keymap.toml`.

    # keymap.toml: every binding has an id (see `?` in the dashboard)
    retry = "ctrl+r"
    reroute = "ctrl+o,R"     # several keys, comma-separated
    quit = "ctrl+q"

Applied with `App.set_keymap`. Unknown ids or non-string keys are reported
(a notice in the dashboard), and the rest of the file still applies.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .themes import user_config_dir


def default_keymap_path() -> Path:
    return user_config_dir() / "keymap.toml"


def load_keymap(path: Path, known_ids: set[str]) -> tuple[dict[str, str], list[str]]:
    """The keymap in `path` (empty if missing) and the problems found in it."""
    if not path.exists():
        return {}, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, [f"{path}: cannot read keymap: {exc}"]
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, keys in data.items():
        if binding_id not in known_ids:
            problems.append(f"{path}: {binding_id}: no binding with this id "
                            f"(known: {', '.join(sorted(known_ids))})")
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f"{path}: {binding_id}: keys must be a string such as \"ctrl+r\"")
        else:
            keymap[binding_id] = keys.replace(" ", "")
    return keymap, problems
