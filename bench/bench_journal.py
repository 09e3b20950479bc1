"""How big is the journal after a long agent session?

100 turns of one opencode-shaped session of about 500 KB (450 KB at the
first turn, one tool step more on each: 560 KB at the last, ~50 MB sent in
all; see `agent_session.py`) go through a real `SwitchboardProxy` (journal
on, as a user runs it) to a fake upstream in this process. Then the proxy
stops and the journal's files are measured, next to the bytes sent and the
unique bytes among them (each distinct message and tool schema once, plus
each turn's other fields): what a journal that stores each message once
must keep at least.

    .venv/bin/python bench/bench_journal.py                  # 100 turns
    .venv/bin/python bench/bench_journal.py --turns 30 --first-kb 100
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(extra))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from agent_session import session  # noqa: E402
from proxy_core.app import SwitchboardProxy  # noqa: E402
from proxy_core.config import parse_config  # noqa: E402
from proxy_core.contents import encode, split  # noqa: E402

TARGET_MB = 5.0

_REPLY = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
     "choices": [{"index": 0, "delta": {"content": "I will read the next file."},
                  "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]) + b"data: [DONE]\n\n"


async def fake_upstream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_REPLY)
    return response


def unique_bytes(requests: list[dict]) -> int:
    parts: set[bytes] = set()
    total = 0
    for request in requests:
        skeleton, fields = split(request)
        total += len(encode(skeleton))
        parts.update(encode(item) for items in fields.values() for item in items)
    return total + sum(len(p) for p in parts)


async def run(turns: int, first_kb: int, step_kb: float) -> int:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", fake_upstream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal.sqlite3"
        config = parse_config(f"""
[proxy]
port = 0
[upstreams.fake]
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
[[routes]]
model = "kimi-k2.5"
targets = ["fake:up"]
""", "bench_journal")
        config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy,
                                                                       journal=journal))
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0)
        await proxy.start()
        requests = list(session(turns, first_kb, step_kb, "kimi-k2.5"))
        started = time.perf_counter()
        async with aiohttp.ClientSession() as client:
            for body in requests:
                async with client.post(proxy.base_url + "/v1/chat/completions", json=body,
                                       headers={"x-session-id": "ses_bench"}) as response:
                    assert response.status == 200, await response.text()
                    await response.read()
        elapsed = time.perf_counter() - started
        await proxy.stop()
        size = sum(p.stat().st_size for p in journal.parent.glob("journal.sqlite3*"))
    await runner.cleanup()

    mb = 1024 * 1024
    sent = sum(len(json.dumps(r, separators=(",", ":")).encode()) for r in requests)
    unique = unique_bytes(requests)
    print(f"{turns} turns, requests {len(json.dumps(requests[0])) // 1024}-"
          f"{len(json.dumps(requests[-1])) // 1024} KB, {elapsed / turns * 1000:.1f} ms per turn")
    print(f"  sent            {sent / mb:8.2f} MB   (a journal storing each request whole:"
          " at least this)")
    print(f"  unique          {unique / mb:8.2f} MB   (each distinct message and schema once)")
    print(f"  journal         {size / mb:8.2f} MB   = {size / unique:.2f}x unique,"
          f" {sent / size:.0f}x less than sent")
    met = size / mb < TARGET_MB
    print(f"  target: under {TARGET_MB:g} MB for 100 turns of a 500 KB session:"
          f" {'met' if met else 'MISSED'}")
    return 0 if met or turns != 100 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--first-kb", type=int, default=450)
    parser.add_argument("--step-kb", type=float, default=1.1)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.turns, args.first_kb, args.step_kb)))


if __name__ == "__main__":
    main()
