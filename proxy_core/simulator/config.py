"""Configuration of the simulated model host."""

from __future__ import annotations

from dataclasses import dataclass

#: Every fault the simulator knows how to inject.
FAULT_NAMES: frozenset[str] = frozenset(
    {"leak", "leak_wild", "hang", "strict", "orphan", "empty", "throttle", "stream_error",
     "empty_reply"})


class SimulatorConfigError(ValueError):
    """A simulator setting is out of range or names an unknown fault."""


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated Kimi-like host behaves.

    ``faults`` names the faults to inject. ``leak`` (the forms of
    reference §2, in turn), ``leak_wild`` (shapes drawn from the mutated
    grammar, see `leak_grammar`), ``hang``, ``empty_reply`` (after a tool
    result, reasoning and then nothing: no text, no call, ``stop``; Kimi
    K2.6), ``throttle`` (an HTTP 429 instead of an answer) and
    ``stream_error`` (an error in the middle of a 200 stream: an
    ``exception`` frame on the Converse face, ``data: {"error": ...}`` on
    the OpenAI face) fire on a request with probability ``fault_rate``; ``strict``, ``orphan`` and
    ``empty`` are validation rules, always enforced when listed (the
    Converse face always enforces Bedrock's own rules instead). Every random
    choice derives from ``seed`` and the request, so runs repeat.
    """

    faults: tuple[str, ...] = ()
    fault_rate: float = 0.7
    seed: int = 0
    steps: int = 10
    chunk_delay: float = 0.003
    models: tuple[str, ...] = ("kimi-k2.5",)
    #: Stream ``reasoning_content`` deltas even without ``strict``.
    reasoning: bool = False
    #: How many sightings of one identical request may hang, be throttled or
    #: fail mid-stream (each at ``fault_rate``); later retries always go through.
    hang_repeats: int = 1
    #: Seconds between ``: ping`` comments while hanging; 0 means silent.
    keepalive_interval: float = 0.0
    #: Fixed ``created`` timestamp for byte-identical output; None means now.
    fixed_created: int | None = None
    #: When set, every request must carry ``Authorization: Bearer <token>``
    #: (401 on the OpenAI face, 403 on the Converse face otherwise).
    bearer_token: str | None = None
    #: The slow-but-healthy profile: seconds before the first chunk, plus
    #: ``ttfb_per_kb`` for every 1000 bytes of the request (a host reads the whole
    #: prompt before it answers), each varied by up to ``ttfb_jitter`` (a share,
    #: 0..1) either way. All 0: answer at once.
    ttfb: float = 0.0
    ttfb_per_kb: float = 0.0
    ttfb_jitter: float = 0.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - FAULT_NAMES)
        if unknown:
            known = ", ".join(sorted(FAULT_NAMES))
            raise SimulatorConfigError(f"unknown fault(s) {', '.join(unknown)}; known: {known}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise SimulatorConfigError(f"fault_rate must be within 0..1, got {self.fault_rate}")
        if self.steps < 0:
            raise SimulatorConfigError(f"steps must be >= 0, got {self.steps}")
        if self.hang_repeats < 0:
            raise SimulatorConfigError(f"hang_repeats must be >= 0, got {self.hang_repeats}")
        if self.chunk_delay < 0 or self.keepalive_interval < 0:
            raise SimulatorConfigError("chunk_delay and keepalive_interval must be >= 0")
        if self.ttfb < 0 or self.ttfb_per_kb < 0 or not 0.0 <= self.ttfb_jitter <= 1.0:
            raise SimulatorConfigError("ttfb and ttfb_per_kb must be >= 0, ttfb_jitter within 0..1")
        if not self.models:
            raise SimulatorConfigError("models must name at least one model")

    def has(self, fault: str) -> bool:
        """Whether ``fault`` is enabled."""
        return fault in self.faults

    def first_chunk_delay(self, request_bytes: int, draw: float) -> float:
        """Seconds the host thinks before its first chunk; `draw` is uniform in 0..1."""
        delay = self.ttfb + self.ttfb_per_kb * request_bytes / 1000
        return delay * (1 + self.ttfb_jitter * (2 * draw - 1))

    @property
    def streams_reasoning(self) -> bool:
        """Whether replies carry ``reasoning_content`` (always under ``strict``)."""
        return self.reasoning or self.has("strict")
