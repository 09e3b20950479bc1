"""The session list: every agent session seen, with live and failed counts.

Subagent sessions (opencode's `x-parent-session-id`) are listed under their
parent, indented. Choosing a session filters the turn table to it; "all
sessions" clears that.
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


#: Levels of subagents shown indented (deeper ones at the last level).
MAX_DEPTH = 3


def session_order(sessions: Mapping[str, SessionInfo]) -> list[tuple[str, int]]:
    """(session id, depth): each session followed by its subagents' sessions, first seen
    first. A session whose parent is not listed (or that loops) is a top-level one."""
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for sid, info in sessions.items():
        parent = info.parent
        if parent and parent != sid and parent in sessions:
            children.setdefault(parent, []).append(sid)
        else:
            roots.append(sid)
    out: list[tuple[str, int]] = []
    seen: set[str] = set()

    def walk(sid: str, depth: int) -> None:
        if sid in seen:
            return
        seen.add(sid)
        out.append((sid, depth))
        for child in children.get(sid, ()):
            walk(child, min(depth + 1, MAX_DEPTH))

    for sid in roots:
        walk(sid, 0)
    for sid in sessions:  # only parent loops are left: list them flat
        walk(sid, 0)
    return out


def session_prompt(info: SessionInfo, palette: Palette, width: int = 23, depth: int = 0) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    indent = "  " * max(0, depth - 1) + ("└ " if depth else "")
    marker = ("● ", palette.primary) if info.live else ("  ", palette.muted)
    text.append(indent, style=palette.muted)
    text.append(*marker)
    room = max(4, width - 2 - len(indent))
    name = info.id if len(info.id) <= room else info.id[: room - 1] + "…"
    text.append(name, style=f"bold {palette.text}")
    text.append("\n  " + " " * len(indent))
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
    SessionList { width: 26; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._prompts: dict[str, Text] = {}
        #: What the last `sync` drew, and at what width: a resize draws it again to fit.
        self._last: tuple[Mapping[str, SessionInfo], int, Palette] | None = None
        self._width = 0

    def _prompt_width(self) -> int:
        return max(12, self.scrollable_content_region.width - 1) if self.size.width else 23

    def on_resize(self) -> None:
        """Session ids cut to the old width are drawn again (a resize, a breakpoint)."""
        if self._last is not None and self._prompt_width() != self._width:
            self.sync(*self._last)

    def sync(self, sessions: Mapping[str, SessionInfo], total: int, palette: Palette,
             *, force: bool = False) -> None:
        self._last = (sessions, total, palette)
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
        order = session_order(sessions)
        width = self._width = self._prompt_width()
        listed = [sid for sid in self._prompts if sid != ALL]
        if [sid for sid, _ in order[:len(listed)]] == listed:
            for sid, depth in order[len(listed):]:  # new sessions at the end: add them
                prompt = self._prompts[sid] = session_prompt(sessions[sid], palette, width, depth)
                self.add_option(Option(prompt, id=sid))
        if [sid for sid, _ in order] != [sid for sid in self._prompts if sid != ALL]:
            # New sessions, gone ones, or a subagent placed under its parent: list anew.
            highlighted = self.highlighted_option.id if self.highlighted_option else None
            self.clear_options()
            self._prompts = {ALL: everything}
            self.add_option(Option(everything, id=ALL))
            for sid, depth in order:
                prompt = self._prompts[sid] = session_prompt(sessions[sid], palette, width, depth)
                self.add_option(Option(prompt, id=sid))
            if highlighted is not None and highlighted in self._prompts:
                self.highlighted = self.get_option_index(highlighted)
            return
        for sid, depth in order:
            prompt = session_prompt(sessions[sid], palette, width, depth)
            if self._prompts.get(sid) != prompt:
                self.replace_option_prompt(sid, prompt)
            self._prompts[sid] = prompt
