"""The session list: every agent session seen, with live and failed counts.

Choosing a session filters the turn table to it; "all sessions" clears that.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from ..model import SessionInfo
from .palette import Palette
from .status import plural

ALL = "__all__"


def session_prompt(info: SessionInfo, palette: Palette, width: int = 23) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    marker = ("● ", palette.primary) if info.live else ("  ", palette.muted)
    text.append(*marker)
    name = info.id if len(info.id) <= width - 2 else info.id[: width - 3] + "…"
    text.append(name, style=f"bold {palette.text}")
    text.append("\n  ")
    text.append(plural(info.turns, "turn"), style=palette.muted)
    if info.live:
        text.append(f"  ●{info.live}", style=palette.primary)
    if info.repairs:
        text.append(f" ✚{info.repairs}", style=palette.accent)
    if info.failed:
        text.append(f" ✗{info.failed}", style=palette.error)
    return text


class SessionList(OptionList):
    DEFAULT_CSS = """
    SessionList { width: 26; height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._prompts: dict[str, Text] = {}

    def sync(self, sessions: Mapping[str, SessionInfo], total: int, palette: Palette,
             *, force: bool = False) -> None:
        everything = Text(f"All ({plural(total, 'turn')})", style=f"bold {palette.text}",
                          no_wrap=True, overflow="ellipsis")
        if force:
            self._prompts.clear()
            self.clear_options()
        if ALL not in self._prompts:
            self.add_option(Option(everything, id=ALL))
        elif self._prompts[ALL] != everything:
            self.replace_option_prompt(ALL, everything)
        self._prompts[ALL] = everything
        gone = [sid for sid in self._prompts if sid != ALL and sid not in sessions]
        for sid in gone:
            self.remove_option(sid)
            del self._prompts[sid]
        for sid, info in sessions.items():
            prompt = session_prompt(info, palette)
            old = self._prompts.get(sid)
            if old is None:
                self.add_option(Option(prompt, id=sid))
            elif old != prompt:
                self.replace_option_prompt(sid, prompt)
            self._prompts[sid] = prompt
