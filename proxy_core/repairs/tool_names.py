"""Which offered tool a call means: names resolved against the request's tools.

Hosts mangle the ids of Kimi's tool calls (``functionsexec5``, ``call00003``,
a UUID, ``channel_reply:0`` ...) and clients reject a call to a tool they did
not offer (opencode: ``Model tried to call unavailable tool``). The rule,
applied to leaked calls and to native ``tool_calls`` alike:

1. **The id names an offered tool.** Exactly; or once a ``functions``
   prefix (with or without its dot) and a trailing index (``:N``, or digits
   glued to the name) are taken off; compared without case and without
   ``-``, ``_`` and ``.``; or once leading dotted parts are dropped
   (``Done.channel_reply:0``). The first of these that matches exactly one
   offered tool wins; an offered name that is itself all of the id always
   wins over a shortened form (a tool may be called ``exec5``).
2. **Otherwise the arguments decide.** A tool fits when its ``required``
   keys are all there and its ``properties`` hold every key. Of the tools
   that fit, the tightest (fewest properties left unused) wins if it is the
   only one that tight. ``{"pattern": "*.py"}`` fits ``glob`` (pattern,
   path) more tightly than ``grep`` (pattern, path, include).
3. **Otherwise no tool fits** and the call must not reach the client as a
   call (see `stream_repair`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["OfferedTool", "Resolution", "ToolCatalog", "tool_key"]

_NOT_KEY: Final = re.compile(r"[^0-9a-z]+")
_INDEX: Final = re.compile(r"(?::\d+|\d+)\Z")


def tool_key(name: str) -> str:
    """A name folded for comparison: lower case, letters and digits only."""
    return _NOT_KEY.sub("", name.casefold())


@dataclass(frozen=True, slots=True)
class OfferedTool:
    """One tool of the request: its name and the shape of its arguments."""

    name: str
    properties: frozenset[str]
    required: frozenset[str]
    schema: Mapping[str, Any]

    def fits(self, keys: frozenset[str]) -> bool:
        return self.required <= keys and keys <= self.properties


@dataclass(frozen=True, slots=True)
class Resolution:
    """The offered tool a call means, and how that was decided.

    ``how`` is ``"name"`` (the call named it as offered), ``"id"`` (the id
    named it once mangling was undone) or ``"arguments"`` (inferred).
    """

    name: str
    how: str


#: id(tools list) -> (that list, its catalog), oldest first (`ToolCatalog.for_tools`).
_CATALOGS: dict[int, tuple[object, ToolCatalog]] = {}


class ToolCatalog:
    """The tools a request offered, ready to resolve calls against."""

    __slots__ = ("_tools", "_by_key")

    def __init__(self, tools: Iterable[OfferedTool] = ()) -> None:
        self._tools: dict[str, OfferedTool] = {t.name: t for t in tools}
        by_key: dict[str, str | None] = {}
        for name in self._tools:
            key = tool_key(name)
            by_key[key] = None if key in by_key else name  # None: two tools fold alike
        self._by_key = by_key

    @classmethod
    def for_tools(cls, tools: object) -> ToolCatalog:
        """`from_openai(tools)`, made once per tools list object: an agent's turns share one
        (`RequestParser`), and a catalog is never changed once made."""
        kept = _CATALOGS.get(id(tools))
        if kept is not None and kept[0] is tools:
            return kept[1]
        catalog = cls.from_openai(tools)
        _CATALOGS[id(tools)] = (tools, catalog)  # held, so its id names it while kept
        while len(_CATALOGS) > 16:
            _CATALOGS.pop(next(iter(_CATALOGS)))
        return catalog

    @classmethod
    def from_openai(cls, tools: object) -> ToolCatalog:
        """The catalog of an OpenAI ``tools`` list (malformed entries are skipped)."""
        offered: list[OfferedTool] = []
        for tool in tools if isinstance(tools, list) else ():
            fn = tool.get("function") if isinstance(tool, Mapping) else None
            if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
                continue
            schema = fn.get("parameters")
            schema = schema if isinstance(schema, Mapping) else {}
            props = schema.get("properties")
            required = schema.get("required")
            offered.append(OfferedTool(
                fn["name"],
                frozenset(props) if isinstance(props, Mapping) else frozenset(),
                frozenset(r for r in required if isinstance(r, str)) if isinstance(required, list)
                else frozenset(),
                schema))
        return cls(offered)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def schemas(self) -> dict[str, Mapping[str, Any]]:
        """Tool name -> parameters schema (what the leak parser types XML values with)."""
        return {name: tool.schema for name, tool in self._tools.items()}

    def resolve(self, ids: Iterable[str | None], arguments: str | Mapping[str, Any]) -> Resolution | None:
        """The offered tool meant by a call with these ids (best first) and arguments."""
        for raw in ids:
            if not raw:
                continue
            raw = raw.strip()
            if raw in self._tools:
                return Resolution(raw, "name")
            name = self._from_id(raw)
            if name is not None:
                return Resolution(name, "id")
        name = self._from_arguments(arguments)
        return Resolution(name, "arguments") if name is not None else None

    def _from_id(self, raw: str) -> str | None:
        for form in _id_forms(raw):
            name = self._by_key.get(form)
            if name is not None:
                return name
        return None

    def _from_arguments(self, arguments: str | Mapping[str, Any]) -> str | None:
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return None
        if not isinstance(arguments, Mapping):
            return None
        keys = frozenset(arguments)
        fitting = [t for t in self._tools.values() if t.properties and t.fits(keys)]
        if not keys:
            fitting = [t for t in self._tools.values() if not t.required]
        if not fitting:
            return None
        slack = [len(t.properties - keys) for t in fitting]
        best = min(slack)
        winners = [t for t, s in zip(fitting, slack, strict=True) if s == best]
        return winners[0].name if len(winners) == 1 else None


def _id_forms(raw: str) -> Iterable[str]:
    """The folded forms of an id, most literal first."""
    seen: set[str] = set()
    parts = raw.split(".")
    # The whole id, then with leading dotted parts dropped (functions.x, Done.x).
    for i in range(len(parts)):
        tail = ".".join(parts[i:])
        for form in _undecorated(tail):
            if form and form not in seen:
                seen.add(form)
                yield form


def _undecorated(text: str) -> Iterable[str]:
    key = tool_key(text)
    no_index = tool_key(_INDEX.sub("", text))
    yield key
    yield no_index
    for k in (key, no_index):
        if k.startswith("functions"):
            yield k[len("functions"):]
    if key.startswith("functions"):
        yield tool_key(_INDEX.sub("", key[len("functions"):]))
