"""What a turn costs: `[prices]` from the config, applied to the usage a host reported.

Switchboard ships no prices: hosts change them and charge differently, so
a person writes the ones they pay, per million tokens, keyed by what they
apply to. A key is looked up, in this order, as the attempt's target
(`"mantle:moonshotai.kimi-k2.5"`), the model the target was asked for
(`"moonshotai.kimi-k2.5"`) and the model the client asked for
(`"kimi-k2.5"`); keys may be glob patterns (`"*kimi*"`), and the first key
in the file that matches wins at each step. A turn without a matching price,
or whose host reported no usage, has no cost (None), never a guessed one.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .record import Usage

PER = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """One `[prices."KEY"]` table, in money per million tokens.

    Cached input (read from the prompt cache) and cache writes cost the
    input price unless they have their own.
    """

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        fresh = usage.prompt_tokens - cached - written
        cached_price = (self.cached_input_per_mtok if self.cached_input_per_mtok is not None
                        else self.input_per_mtok)
        write_price = (self.cache_write_per_mtok if self.cache_write_per_mtok is not None
                       else self.input_per_mtok)
        return (fresh * self.input_per_mtok + cached * cached_price + written * write_price
                + usage.completion_tokens * self.output_per_mtok) / PER


@dataclass(frozen=True, slots=True)
class PriceList:
    """The `[prices]` table, in file order."""

    prices: tuple[tuple[str, Price], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.prices)

    def find(self, *names: str) -> Price | None:
        """The price for the first of `names` that a key matches (see the module docstring)."""
        for name in names:
            if not name:
                continue
            for key, price in self.prices:
                if key == name or fnmatch.fnmatchcase(name, key):
                    return price
        return None

    def cost(self, usage: Usage, target: str, upstream_model: str, model: str) -> float | None:
        if not self.prices or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
            return None
        price = self.find(target, upstream_model, model)
        return None if price is None else price.cost(usage)
