"""Modal screens: help, and a picker used for reroute targets and filters."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option


class PickerScreen(ModalScreen[str | None]):
    """Choose one of `choices` ((id, label) pairs); dismisses with the id, or None."""

    DEFAULT_CSS = """
    PickerScreen { align: center middle; }
    PickerScreen > Vertical {
        width: 64; height: auto; max-height: 80%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    PickerScreen Label { width: 1fr; padding: 0 0 1 0; }
    PickerScreen OptionList { height: auto; max-height: 20; border: none; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="picker.cancel")]

    def __init__(self, title: str, choices: Sequence[tuple[str, str]], *,
                 highlight: str | None = None, picker_id: str = "picker") -> None:
        super().__init__(id=picker_id)
        self.title_text = title
        self.choices = list(choices)
        self.highlight = highlight

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield OptionList(*[Option(label, id=choice) for choice, label in self.choices],
                             id="choices")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        ids = [c for c, _ in self.choices]
        if self.highlight in ids:
            options.highlighted = ids.index(self.highlight)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


LEGEND = [
    ("✓ paired", "success", "a tool call and its result"),
    ("… pending", "warning", "a call whose result has not come back yet"),
    ("✗ orphaned", "error", "a tool result that answers no call"),
    ("✚ repaired", "accent", "Switchboard fixed it (leaked call recovered, call restored, "
                             "placeholder result)"),
    ("◌ STALLED", "error", "a live stream silent for longer than the stall threshold"),
]


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 100; height: 90%; border: round $primary; background: $surface; padding: 0 1;
    }
    HelpScreen VerticalScroll { height: 1fr; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def __init__(self, keys: Sequence[tuple[str, str, str]], notes: Sequence[str],
                 colours: dict[str, str]) -> None:
        super().__init__(id="help")
        self.keys = list(keys)
        self.notes = list(notes)
        self.colours = colours

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("Switchboard dashboard — keys\n\n", style="bold")
        for key, binding_id, description in self.keys:
            text.append(f"  {key:<12}", style=f"bold {self.colours.get('primary', '')}")
            text.append(f"{description:<62}  ")  # a long description still leaves a gap
            text.append(f"id: {binding_id}\n", style=self.colours.get("muted", ""))
        text.append("\nTool calls in the conversation\n\n", style="bold")
        for label, colour, meaning in LEGEND:
            text.append(f"  {label:<12}", style=f"bold {self.colours.get(colour, '')}")
            text.append(f"{meaning}\n")
        text.append("\n")
        for note in self.notes:
            text.append(f"{note}\n", style=self.colours.get("muted", ""))
        with Vertical():
            with VerticalScroll():
                yield Static(text, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
