"""Repro fixtures: one turn as a self-contained, redacted JSON file.

A fixture holds what a maintainer (of a host, of opencode, of Switchboard)
needs to see and re-run the exchange: the client's request, the request as
sent upstream, the raw upstream bytes of every attempt with their timing
(`capture.py`), the repairs, the route and its watchdog settings, and the
turn as Switchboard recorded it. `switchboard replay FILE` (`replay.py`)
plays it through the same repair pipeline, offline.

Fixtures are built from the journal (the CLI, the control API) and pass
through the `Redactor` like everything else the journal holds; request
headers, and so API keys, are never part of them. `normalized` turns what a
client received into a form two runs can be compared in: chunk ids,
timestamps and minted tool-call ids differ on every run, keep-alives with
the timing.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from .config import Config, RouteSettings, Target
from .errors import SwitchboardError
from .journal import Journal
from .repairs.profiles import looks_like_kimi
from .secrets import Redactor
from .store import TurnStore

#: The version of the fixture layout, in its `switchboard_repro` key.
FIXTURE_FORMAT = 1


class ReproError(SwitchboardError):
    """A fixture could not be written or read (no such turn, not a fixture ...)."""


def upstream_body(client_request: dict[str, Any], model: str,
                  messages: list[Any] | None = None) -> dict[str, Any]:
    """The body an attempt sent: the client's, re-modelled, always streamed with usage
    (as `pipeline._upstream_body`), with the repaired `messages` when history repairs ran."""
    body = copy.copy(client_request)
    body["model"] = model
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    if messages is not None:
        body["messages"] = messages
    return body


def effective_repairs(route: RouteSettings, config: Config) -> str:
    """The profile the live run used, named so a replay against a plain OpenAI-compatible
    host uses the same (`auto` looks at the upstream kind, which a replay changes)."""
    if route.repairs != "auto" or not route.targets:
        return route.repairs
    first = route.targets[0]
    upstream = config.upstreams.get(first.upstream)
    kind = upstream.kind if upstream is not None else "openai"
    return "kimi" if looks_like_kimi(first.model_for(route.model), kind) else "auto"


def build_fixture(turn: dict[str, Any], wire: dict[str, Any] | None,
                  config: Config) -> dict[str, Any]:
    """The fixture for a turn (`Turn.to_dict` with its request) and its raw answer."""
    if turn.get("state") == "live":
        raise ReproError(f"turn {turn.get('id')} is still live: write its repro when it ends")
    request = dict(turn.get("request") or {})
    record = {k: v for k, v in turn.items() if k != "request"}
    route = config.route_for(str(turn.get("model") or ""))
    attempts: list[dict[str, Any]] = list((wire or {}).get("attempts") or [])
    first = attempts[0] if attempts else None
    first_target = (first or {}).get("target") or ((turn.get("attempts") or [{}])[0]
                                                     .get("target") or "")
    model = Target.parse(first_target).model_for(str(turn.get("model") or "")) \
        if first_target else str(turn.get("model") or "")
    return {
        "switchboard_repro": FIXTURE_FORMAT,
        "written_at": time.time(),
        "note": ("Written by `switchboard repro`; play it with `switchboard replay FILE`. "
                 "Secrets are redacted; the request headers are not included."),
        "turn": record,
        "client_request": request,
        "upstream_request": upstream_body(request, model, (first or {}).get("messages")),
        "route": None if route is None else {
            "model": route.model, "targets": [str(t) for t in route.targets],
            "repairs": route.repairs, "replay_repairs": effective_repairs(route, config),
            "upstream_kinds": {t.upstream: config.upstreams[t.upstream].kind
                               for t in route.targets if t.upstream in config.upstreams},
        },
        "watchdog": None if route is None else dataclasses.asdict(route.watchdog),
        "wire": attempts,
        "wire_recorded": wire is not None,
    }


def write_fixture(fixture: dict[str, Any], path: Path, redactor: Redactor) -> None:
    text = redactor(json.dumps(fixture, ensure_ascii=False, indent=1, default=str))
    try:
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ReproError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_fixture(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReproError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReproError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or "switchboard_repro" not in data:
        raise ReproError(f"{path}: not a Switchboard repro fixture (no switchboard_repro key)")
    version = data["switchboard_repro"]
    if not isinstance(version, int) or version > FIXTURE_FORMAT:
        raise ReproError(f"{path}: fixture format {version!r} is newer than this build's "
                         f"({FIXTURE_FORMAT}): upgrade Switchboard to replay it")
    if not data.get("route") or not isinstance(data.get("client_request"), dict):
        raise ReproError(f"{path}: the fixture has no route or no client request to replay")
    return data


def from_journal(path: Path, turn_id: str, config: Config) -> dict[str, Any]:
    """The fixture of `turn_id` read from the journal at `path`, opened read-only
    (a proxy may be running on it; nothing is migrated or marked)."""
    if not path.exists():
        raise ReproError(f"no journal at {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReproError(f"cannot open the journal {path}: {exc}") from None
    try:
        journal = Journal(conn, path, Redactor(), TurnStore())
        turn = journal.turn(turn_id)
        if turn is None:
            raise ReproError(f"no turn {turn_id!r} in the journal {path}")
        return build_fixture(turn, journal.wire(turn_id), config)
    finally:
        conn.close()


def normalized(output: bytes) -> list[Any]:
    """What a client received, comparable across runs: the SSE `data:` payloads (or the
    one JSON body), without ids, timestamps and comments; tool-call ids numbered in
    order of appearance."""
    text = output.decode("utf-8", "replace")
    ids: dict[str, str] = {}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key in ("created", "system_fingerprint") or (key == "id" and isinstance(
                        item, str) and item.startswith("chatcmpl-")):
                    continue
                if key == "id" and isinstance(item, str):
                    item = ids.setdefault(item, f"call#{len(ids) + 1}")
                out[key] = clean(item)
            return out
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    if not text.lstrip().startswith(("data:", ":")):
        try:
            return [clean(json.loads(text))]
        except ValueError:
            return [text]
    events: list[Any] = []
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        try:
            events.append(clean(json.loads(payload)))
        except ValueError:
            events.append(payload)
    return events


@dataclass(frozen=True, slots=True)
class ClientView:
    """What a client made of an answer: text, tool calls, finish reason, error."""

    text: str
    tool_calls: tuple[tuple[str, str], ...]  # (name, arguments)
    finish_reason: str | None
    error: str | None


def client_view(output: bytes) -> ClientView:
    """Assemble an answer (streamed or whole) as an agent would."""
    text: list[str] = []
    calls: list[tuple[str, str]] = []
    finish: str | None = None
    error: str | None = None
    for event in normalized(output):
        if not isinstance(event, dict):
            continue
        if isinstance(event.get("error"), dict):
            error = str(event["error"].get("message") or "error")
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or choice.get("message") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                calls.append((str(function.get("name") or ""), str(function.get("arguments") or "")))
            finish = choice.get("finish_reason") or finish
    return ClientView("".join(text), tuple(calls), finish, error)


def recorded_view(turn: dict[str, Any]) -> ClientView:
    """The same, from the turn Switchboard recorded in the live run."""
    calls = tuple((str(c.get("name")), str(c.get("arguments"))) for c in turn.get("tool_calls") or [])
    failed = turn.get("state") == "failed"
    return ClientView(str(turn.get("text") or ""), calls,
                      None if failed else turn.get("finish_reason"),
                      str(turn.get("error")) if failed else None)


def differences(replayed: ClientView, recorded: ClientView) -> list[str]:
    """How a replay's answer differs from the live run's (empty: the same)."""
    found = []
    if replayed.text != recorded.text:
        found.append(f"text: {replayed.text[:80]!r} != {recorded.text[:80]!r}")
    if replayed.tool_calls != recorded.tool_calls:
        found.append(f"tool calls: {replayed.tool_calls!r} != {recorded.tool_calls!r}")
    if replayed.finish_reason != recorded.finish_reason:
        found.append(f"finish reason: {replayed.finish_reason} != {recorded.finish_reason}")
    if (replayed.error is None) != (recorded.error is None):
        found.append(f"error: {replayed.error} != {recorded.error}")
    return found
