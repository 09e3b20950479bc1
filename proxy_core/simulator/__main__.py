"""Run the simulated host standalone: ``python -m proxy_core.simulator --port 8000``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .config import SimulatorConfig, SimulatorConfigError
from .server import start_simulator


def parse_args(argv: list[str] | None = None) -> tuple[SimulatorConfig, str, int]:
    """Parse the command line into a config, a host and a port."""
    parser = argparse.ArgumentParser(prog="python -m proxy_core.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    parser.add_argument("--faults", default="", help="comma-separated: leak,hang,strict,orphan,empty")
    parser.add_argument("--fault-rate", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--chunk-delay", type=float, default=0.003)
    parser.add_argument("--models", default="kimi-k2.5", help="comma-separated model names served")
    parser.add_argument("--reasoning", action="store_true", help="stream reasoning_content")
    parser.add_argument("--hang-repeats", type=int, default=1, help="sightings of one request that may hang")
    parser.add_argument("--keepalive", type=float, default=0.0, help="seconds between ': ping' while hanging")
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            faults=tuple(f.strip() for f in args.faults.split(",") if f.strip()),
            fault_rate=args.fault_rate,
            seed=args.seed,
            steps=args.steps,
            chunk_delay=args.chunk_delay,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            reasoning=args.reasoning,
            hang_repeats=args.hang_repeats,
            keepalive_interval=args.keepalive,
        )
    except SimulatorConfigError as exc:
        parser.error(str(exc))
    return config, args.host, args.port


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    simulator = await start_simulator(config, host, port)
    print(f"simulator listening on {simulator.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await simulator.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    config, host, port = parse_args(argv)
    asyncio.run(serve(config, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
