"""What the simulator has seen and done, for tests and demos to observe."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault: its kind, its detail (variant or error), the step."""

    kind: str
    detail: str
    step: int


@dataclass
class SimulatorStats:
    """Counters the simulator keeps; read them, never write them."""

    requests: int = 0
    side_requests: int = 0
    tool_calls_emitted: int = 0
    #: Most ``role: "tool"`` messages seen in any one request.
    tool_results_seen: int = 0
    finals: int = 0
    hangs_active: int = 0
    disconnects: int = 0
    faults: list[FaultRecord] = field(default_factory=list)

    def played(self, step: int, *, fault: str | None = None, detail: str = "",
               tool_call: bool = False, final: bool = False) -> None:
        """Count one reply the host sent: its fault, or the call or final it delivered."""
        if fault is not None:
            self.faults.append(FaultRecord(fault, detail, step))
        elif tool_call:
            self.tool_calls_emitted += 1
        elif final:
            self.finals += 1

    def fault_counts(self) -> dict[str, int]:
        """How many times each fault kind fired."""
        return dict(Counter(record.kind for record in self.faults))

    def to_json(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        data = asdict(self)
        data["fault_counts"] = self.fault_counts()
        return data


class SimulatorState:
    """Mutable per-app state: stats, fingerprint sightings, shutdown signal."""

    def __init__(self) -> None:
        self.stats = SimulatorStats()
        self.seen: Counter[str] = Counter()
        self.shutdown = asyncio.Event()
        self._changed = asyncio.Condition()

    def sighting(self, fp: str) -> int:
        """How many times ``fp`` was seen before; counts this sighting."""
        seen = self.seen[fp]
        self.seen[fp] += 1
        return seen

    async def notify(self) -> None:
        """Wake everyone waiting in :meth:`wait_for`."""
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[SimulatorStats], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate(stats)`` holds; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.stats))
