"""Throughput benchmark for proxy_core.repairs.leak_parser.

Run: ``python bench/bench_leak_parser.py``.  Prints MB/s of stream text
parsed for several workloads and, as a ratio, the parser against baselines
measured in the same run on the same deltas: ``''.join(deltas)`` and a
Python loop appending each delta to a list (the least any per-delta
consumer costs).  Takes a few seconds.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_core.repairs.leak_parser import LeakedCall, LeakParser  # noqa: E402

WORDS = (
    "the parser holds back only a possible partial marker so that text keeps flowing to the client "
    "while leaked tool calls are recovered from the stream and sent as proper tool call deltas instead "
    "of leaking into what the user reads file function argument repair section begin end model host"
).split()
TARGET_BYTES = 3_000_000
REPEATS = 3


def prose(rng: random.Random, n: int) -> str:
    """About ``n`` characters of plain prose (no ``<``)."""
    out: list[str] = []
    size = 0
    while size < n:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + ". "
        if rng.random() < 0.15:
            sentence += "\n\n"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def code_like(rng: random.Random, n: int) -> str:
    """Prose mixed with code that has many ``<`` characters (the slow path)."""
    out: list[str] = []
    size = 0
    while size < n:
        piece = rng.choice(
            [
                prose(rng, 200),
                "if (a < b && c <= d) { return x << 2; }\n",
                "<div className='x'><span>{value}</span></div>\n",
                "List<Map<String, Integer>> m = new HashMap<>();\n",
            ]
        )
        out.append(piece)
        size += len(piece)
    return "".join(out)


def leak(rng: random.Random, idx: int) -> str:
    """One realistic leaked section with 1-2 calls."""
    calls = []
    for k in range(rng.randint(1, 2)):
        args = {"filePath": f"/repo/src/module_{idx}_{k}.py", "limit": 200, "note": "ünïcode\nline"}
        calls.append(
            f"<|tool_call_begin|> functions.read:{idx + k} <|tool_call_argument_begin|> "
            f"{json.dumps(args)} <|tool_call_end|>\n"
        )
    return "\n<|tool_calls_section_begin|>\n" + "".join(calls) + "<|tool_calls_section_end|>\n"


def prose_with_leaks(rng: random.Random, n: int) -> tuple[str, int]:
    """Prose with a leaked section about every 2 KB; returns text and call count."""
    out: list[str] = []
    size = 0
    i = 0
    while size < n:
        piece = prose(rng, 2000) + leak(rng, i)
        i += 2
        out.append(piece)
        size += len(piece)
    text = "".join(out)
    return text, text.count("<|tool_call_begin|>")


def chunk(rng: random.Random, text: str, mean: int) -> list[str]:
    """Split into deltas of ``mean/2 .. 3*mean/2`` characters."""
    out: list[str] = []
    i = 0
    while i < len(text):
        step = rng.randint(mean // 2, mean * 3 // 2)
        out.append(text[i : i + step])
        i += step
    return out


def best_time(fn: Callable[[], object]) -> float:
    """Best wall time of ``REPEATS`` runs."""
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def parse(deltas: list[str]) -> int:
    """Run the parser over the deltas; return the number of calls found."""
    p = LeakParser()
    n = 0
    feed = p.feed
    for d in deltas:
        for seg in feed(d):
            if type(seg) is LeakedCall:
                n += 1
    for seg in p.finish():
        if type(seg) is LeakedCall:
            n += 1
    return n


def loop_baseline(deltas: list[str]) -> int:
    """Python-level per-delta loop (append to a list)."""
    out: list[str] = []
    app = out.append
    for d in deltas:
        app(d)
    return len(out)


def main() -> None:
    rng = random.Random(1234)
    plain = prose(rng, TARGET_BYTES)
    leaky, expected_calls = prose_with_leaks(rng, TARGET_BYTES)
    code = code_like(rng, TARGET_BYTES)
    cases = [
        ("(a) plain prose, ~20 B deltas", chunk(rng, plain, 20), 0),
        ("(b) leaks every ~2 KB, ~20 B deltas", chunk(rng, leaky, 20), expected_calls),
        ("(c) plain prose, one big delta", [plain], 0),
        ("(c') leaks every ~2 KB, one big delta", [leaky], expected_calls),
        ("(d) code with many '<', ~20 B deltas", chunk(rng, code, 20), 0),
    ]
    t_start = time.perf_counter()
    print(f"{'workload':40} {'MB':>6} {'parser MB/s':>12} {'join MB/s':>10} {'loop MB/s':>10} {'vs join':>8} {'vs loop':>8}")
    for label, deltas, want in cases:
        got = parse(deltas)
        assert got == want, (label, got, want)
        mb = sum(map(len, deltas)) / 1e6
        t_parse = best_time(lambda d=deltas: parse(d))
        t_join = best_time(lambda d=deltas: "".join(d))
        t_loop = best_time(lambda d=deltas: loop_baseline(d))
        print(
            f"{label:40} {mb:6.2f} {mb / t_parse:12.1f} {mb / t_join:10.1f} {mb / t_loop:10.1f}"
            f" {t_join / t_parse:8.3f} {t_loop / t_parse:8.3f}"
        )
    print(f"(ratios = parser throughput / baseline throughput; total {time.perf_counter() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
