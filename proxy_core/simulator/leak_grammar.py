"""Kimi tool calls as hosts in the wild emit them: the grammar, mutated.

Reference §2 lists some of the shapes leaked Kimi tool calls take; public
reports show more (reference §6): markers dropped, respelled or spaced,
ids with their separators lost or with no function name at all, a call
that opens in ``reasoning_content`` and ends in ``content``. `wild_leak`
renders one call in a shape drawn from the whole grammar::

    SECTION_BEGIN? CALL_BEGIN? id? ARG_BEGIN? {json} CALL_END? SECTION_END?

keeping at least one of the call begin, argument-begin and call-end markers
(without one, nothing tells a call from prose). Every choice comes from the
``rng`` it is given: a seeded ``random.Random`` in the simulator, so a run
repeats byte for byte, and hypothesis's randoms in the tests, so the same
code is fuzzed and shrunk.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ID_FORMS", "WildLeak", "id_text", "spell_marker", "wild_leak"]

#: How a host may write a call's id: the forms seen in the wild, and worse.
ID_FORMS = (
    "functions.{name}:{idx}",  # Moonshot's own
    "{name}:{idx}",            # typeclaw 344
    "functions{name}{idx}",    # sglang 21377: both separators lost
    "functions.{name}{idx}",
    "{name}",
    "call{idx:05d}",           # sglang 25358: no name at all
    "uuid",                    # sglang 18178: an opaque id
    "",                        # no id
)
#: The forms whose text carries the tool's name.
NAMED_FORMS = frozenset(ID_FORMS[:5])

_WORDS = {
    "section_begin": ("tool_calls_section_begin", "tool_call_section_begin", "tool_calls_begin"),
    "section_end": ("tool_calls_section_end", "tool_call_section_end", "tool_calls_end"),
    "call_begin": ("tool_call_begin",),
    "arg_begin": ("tool_call_argument_begin", "tool_call_arguments_begin", "tool_call_args_begin"),
    "call_end": ("tool_call_end",),
}
_GAPS = ("", "", "", " ", "\n", " \n", "\n\n")


@dataclass(frozen=True)
class WildLeak:
    """One leaked call: what went to the reasoning, what to the content, and how it was made."""

    reasoning: str
    content: str
    id_form: str
    kept: frozenset[str]

    @property
    def text(self) -> str:
        return self.reasoning + self.content

    @property
    def id_names_tool(self) -> bool:
        return self.id_form in NAMED_FORMS


def spell_marker(kind: str, rng: random.Random) -> str:
    """A marker of ``kind`` as some host spells it (mostly Moonshot's way)."""
    word = _WORDS[kind][0] if rng.random() < 0.6 else rng.choice(_WORDS[kind])
    style = rng.random()
    if style < 0.15:
        word = word.replace("_", rng.choice((" ", "-", "")))
    elif style < 0.2:
        word = word.upper()
    pad = " " if rng.random() < 0.1 else ""
    bar = "\uff5c" if rng.random() < 0.05 else "|"
    return f"<{bar}{pad}{word}{pad}{bar}>"


def id_text(form: str, name: str, index: int) -> str:
    """The id of call ``index`` to tool ``name`` in ``form`` (one of `ID_FORMS`)."""
    if form == "uuid":
        return str(uuid.UUID(int=random.Random(f"{name}:{index}").getrandbits(128)))
    return form.format(name=name, idx=index)


def wild_leak(name: str, arguments: Mapping[str, object], index: int, rng: random.Random, *,
              reasoning_split: bool = True) -> WildLeak:
    """Render one call to ``name`` in a shape drawn from the mutated grammar.

    With ``reasoning_split``, about a third of the leaks start in the
    reasoning and end in the content, at any character.
    """
    kept = {part for part, p in (("section_begin", 0.6), ("call_begin", 0.6), ("arg_begin", 0.6),
                                 ("call_end", 0.6), ("section_end", 0.5)) if rng.random() < p}
    if not kept & {"call_begin", "arg_begin", "call_end"}:
        kept.add(rng.choice(("call_begin", "arg_begin", "call_end")))
    form = rng.choice(ID_FORMS)
    args = json.dumps(dict(arguments), ensure_ascii=False, indent=2 if rng.random() < 0.2 else None)
    pieces: list[str] = []

    def add(piece: str) -> None:
        if pieces:
            pieces.append(rng.choice(_GAPS))
        pieces.append(piece)

    if "section_begin" in kept:
        add(spell_marker("section_begin", rng))
    if "call_begin" in kept:
        add(spell_marker("call_begin", rng))
    ident = id_text(form, name, index)
    if ident:
        add(ident)
    if "arg_begin" in kept:
        add(spell_marker("arg_begin", rng))
    add(args)
    if "call_end" in kept:
        add(spell_marker("call_end", rng))
    if "section_end" in kept:
        add(spell_marker("section_end", rng))
    text = "".join(pieces)
    cut = 0
    if reasoning_split:
        mode = rng.random()
        cut = len(text) if mode < 0.1 else rng.randint(1, len(text) - 1) if mode < 0.35 else 0
    return WildLeak(text[:cut], text[cut:], form, frozenset(kept))
