"""Tokens and cost: the host's usage (with cache and reasoning counts) on the turn,
priced by `[prices]`, summed per session and in total by the control API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy_core.config import parse_config
from proxy_core.errors import ConfigError
from proxy_core.record import Usage
from conftest import ProxyFactory
from proxy_core.upstreams.converse import usage_part
from support import (
    API, FakeUpstream, chat_body, finish_chunk, openai_config, settled_turn, sse,
    stream_chat, text_chunk, usage_chunk,
)

PRICES = """
[prices."primary:up-model"]
input_per_mtok = 1.0
output_per_mtok = 4.0
cached_input_per_mtok = 0.1
"""


def detailed_usage(prompt: int, completion: int, cached: int, reasoning: int) -> dict[str, Any]:
    payload = usage_chunk(prompt, completion)
    payload["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
    payload["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return payload


async def turn_with(client: httpx.AsyncClient, base_url: str, session: str) -> dict[str, Any]:
    response, payloads = await stream_chat(client, base_url, chat_body(),
                                           headers={"x-session-id": session})
    assert response.status_code == 200 and payloads[-1] == "[DONE]"
    return await settled_turn(client, base_url)


async def test_usage_details_cost_and_totals(fake_upstream: FakeUpstream,
                                             proxy_factory: ProxyFactory,
                                             client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url) + PRICES)
    reply = sse(text_chunk("hi"), finish_chunk(), detailed_usage(1_000_000, 10_000, 400_000, 2500))
    fake_upstream.script(reply, reply, sse(text_chunk("no usage"), finish_chunk()), reply)
    first = await turn_with(client, proxy.base_url, "sess-a")
    assert first["usage"] == {"prompt_tokens": 1_000_000, "completion_tokens": 10_000,
                              "total_tokens": 1_010_000, "cached_tokens": 400_000,
                              "cache_write_tokens": 0, "reasoning_tokens": 2500}
    # 600k fresh at 1.0, 400k cached at 0.1, 10k out at 4.0 (per million)
    assert first["cost"] == pytest.approx(0.6 + 0.04 + 0.04)
    await turn_with(client, proxy.base_url, "sess-a")
    unpriced = await turn_with(client, proxy.base_url, "sess-b")
    assert unpriced["cost"] is None and unpriced["usage"]["prompt_tokens"] == 0

    summary = (await client.get(proxy.base_url + API + "/usage")).json()
    assert summary["total"]["turns"] == 3
    assert summary["total"]["prompt_tokens"] == 2_000_000
    assert summary["total"]["reasoning_tokens"] == 5000
    assert summary["total"]["priced_turns"] == 2
    assert summary["total"]["cost"] == pytest.approx(2 * 0.68)
    assert summary["sessions"]["sess-b"]["cost"] is None
    only_a = (await client.get(proxy.base_url + API + "/usage",
                               params={"session": "sess-a"})).json()
    assert list(only_a["sessions"]) == ["sess-a"] and only_a["total"]["turns"] == 2

    # The client gets the details too, as OpenAI sends them.
    body = chat_body()
    body["stream_options"] = {"include_usage": True}
    _, payloads = await stream_chat(client, proxy.base_url, body)
    [usage] = [p["usage"] for p in payloads if isinstance(p, dict) and p.get("usage")]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 400_000}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2500}


def test_converse_usage_counts_the_prompt_cache_into_the_prompt() -> None:
    part = usage_part({"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 900,
                       "cacheWriteInputTokens": 50, "totalTokens": 1070})
    assert (part.prompt_tokens, part.cached_tokens, part.cache_write_tokens) == (1050, 900, 50)
    assert part.total_tokens == 1070


def test_prices_match_target_then_models_and_globs() -> None:
    config = parse_config(openai_config("http://127.0.0.1:9/v1") + """
[prices."*kimi*"]
input_per_mtok = 2
output_per_mtok = 2
[prices."up-model"]
input_per_mtok = 1
output_per_mtok = 1
cache_write_per_mtok = 3
""", "t.toml", check_env=False)
    usage = Usage(prompt_tokens=2_000_000, completion_tokens=1_000_000, cache_write_tokens=1_000_000)
    # the target matches no key; its model does: 1M fresh at 1, 1M written at 3, 1M out at 1
    assert config.prices.cost(usage, "primary:up-model", "up-model", "test-model") == 5.0
    assert config.prices.cost(usage, "x:y", "y", "kimi-k2.5") == 6.0
    assert config.prices.cost(usage, "x:y", "y", "other") is None
    assert config.prices.cost(Usage(), "primary:up-model", "up-model", "m") is None


@pytest.mark.parametrize(("table", "message"), [
    ('[prices]\n"m" = 1', 'prices."m": must be a table'),
    ('[prices."m"]\ninput_per_mtok = 1', 'prices."m".output_per_mtok: is required'),
    ('[prices."m"]\ninput_per_mtok = -1\noutput_per_mtok = 1', "must not be negative"),
    ('[prices."m"]\ninput_per_mtok = "1"\noutput_per_mtok = 1', "must be int or float"),
    ('[prices."m"]\ninput_per_mtok = 1\noutput_per_mtok = 1\nper = 1', 'prices."m".per: unknown key'),
])
def test_bad_prices_get_one_clear_error(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace('"', '"')):
        parse_config(openai_config("http://127.0.0.1:9/v1") + table, "t.toml", check_env=False)
