"""`LocalSource`: the proxy in this process and event loop."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from proxy_core.errors import ClientRequestError
from proxy_core.record import Turn
from proxy_core.repro import ReproError, build_fixture

from ..model import StallRule
from .base import SourceError, TurnSource, config_targets

if TYPE_CHECKING:
    from proxy_core.app import SwitchboardProxy


class LocalSource(TurnSource):
    """A `SwitchboardProxy` in this event loop."""

    kind = "local"

    def __init__(self, proxy: SwitchboardProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def base_url(self) -> str:
        return self.proxy.base_url

    @property
    def stall_after(self) -> StallRule:
        watchdog = self.proxy.config.watchdog
        return StallRule.from_watchdog(watchdog.first_token_timeout, watchdog.idle_timeout)

    @property
    def owns_proxy(self) -> bool:
        return True

    def describe(self) -> str:
        return f"config {self.proxy.config.source}"

    def health(self) -> dict[str, Any]:
        journal, telemetry = self.proxy.journal, self.proxy.telemetry
        return {"journal": journal.status(settle=False) if journal is not None else None,
                "telemetry": telemetry.status() if telemetry is not None else None,
                "request_bytes": self.proxy.budget.status()}

    def redact(self, text: str) -> str:
        return self.proxy.redactor(text)

    async def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.proxy.bus.subscribe(self._push)

    async def stop(self) -> None:
        await super().stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def turn(self, turn_id: str) -> Turn | None:
        return self.proxy.store.get(turn_id)

    def recent(self, limit: int) -> list[Turn]:
        return self.proxy.store.recent(limit)

    async def load_turn(self, turn_id: str) -> Turn | None:
        return self.proxy.store.get(turn_id) or await self.proxy.journaled_turn(turn_id)

    async def repro(self, turn_id: str) -> dict[str, Any]:
        turn = await self.load_turn(turn_id)
        journal = self.proxy.journal
        if turn is None:
            raise SourceError(f"no turn {turn_id!r}")
        wire = await journal.fetch(partial(journal.wire, turn_id)) if journal else None
        try:
            return build_fixture(turn.to_dict(), wire, self.proxy.config)
        except ReproError as exc:
            raise SourceError(str(exc)) from None

    async def older(self, known: set[str], limit: int, session: str | None = None) -> list[Turn]:
        found = {t.id: t for t in reversed(self.proxy.store.recent(0))
                 if t.id not in known and (not session or t.session_id == session)}
        journal = self.proxy.journal
        if journal is not None and len(found) < limit:
            kept = await journal.fetch(partial(journal.turns, limit + len(known), session))
            for data in reversed(kept):
                if data["id"] not in known and data["id"] not in found:
                    found[data["id"]] = Turn.from_dict(data)
        turns = sorted(found.values(), key=lambda t: t.started_at, reverse=True)
        return turns[:limit]

    async def retry(self, turn_id: str) -> str:
        method = getattr(self.proxy.pipeline, "retry", None)
        if method is None:
            raise SourceError("this proxy core cannot retry turns yet (no Pipeline.retry)")
        try:
            return await method(turn_id)
        except ClientRequestError as exc:
            raise SourceError(exc.message) from None

    async def reroute(self, turn_id: str, target: str) -> str:
        method = getattr(self.proxy.pipeline, "reroute", None)
        if method is None:
            raise SourceError("this proxy core cannot reroute turns yet (no Pipeline.reroute)")
        try:
            return await method(turn_id, target)
        except ClientRequestError as exc:
            raise SourceError(exc.message) from None

    async def targets_for(self, turn_id: str) -> list[str]:
        method = getattr(self.proxy.pipeline, "targets_for", None)
        if method is not None:
            try:
                return list(await method(turn_id))
            except ClientRequestError as exc:
                raise SourceError(exc.message) from None
        turn = await self.load_turn(turn_id)
        if turn is None:
            raise SourceError(f"no turn {turn_id!r}")
        routes = [(r.model, [str(t) for t in r.targets]) for r in self.proxy.config.routes]
        return config_targets(routes, turn.route)
