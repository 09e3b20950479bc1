"""State colours for Rich text, taken from the current Textual theme."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.color import Color

if TYPE_CHECKING:
    from textual.app import App


def _solid(value: str, background: Color) -> str:
    """A colour Rich can use: composited over the background when it has alpha."""
    try:
        colour = Color.parse(value)
    except Exception:
        return ""
    if colour.a < 1:
        colour = background + colour
    return colour.hex6


@dataclass(frozen=True, slots=True)
class Palette:
    ok: str
    warn: str
    error: str
    accent: str
    primary: str
    secondary: str
    muted: str
    text: str

    @classmethod
    def from_app(cls, app: App[object]) -> Palette:
        v = app.get_css_variables()
        background = Color.parse(v.get("background", "#000000"))
        pick = lambda *names: next((_solid(v[n], background) for n in names if n in v), "")  # noqa: E731
        return cls(
            ok=pick("text-success", "success"),
            warn=pick("text-warning", "warning"),
            error=pick("text-error", "error"),
            accent=pick("text-accent", "accent"),
            primary=pick("text-primary", "primary"),
            secondary=pick("text-secondary", "secondary"),
            muted=pick("foreground-muted", "foreground"),
            text=pick("foreground"),
        )

    def state(self, name: str) -> str:
        """The colour for a pairing or turn state."""
        return {"paired": self.ok, "finished": self.ok, "pending": self.warn, "live": self.primary,
                "orphaned": self.error, "failed": self.error, "stalled": self.error,
                "repaired": self.accent}.get(name, self.text)
