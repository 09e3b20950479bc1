"""Run the simulated host standalone: ``python -m proxy_core.simulator --port 8000``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys

from ..runner import run as run_loop
from .config import SimulatorConfig, SimulatorConfigError
from .host import start_simulator


def parse_args(argv: list[str] | None = None) -> tuple[SimulatorConfig, str, int, ssl.SSLContext | None]:
    """Parse the command line into a config, a host, a port and a TLS context (or None)."""
    parser = argparse.ArgumentParser(prog="python -m proxy_core.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    parser.add_argument("--faults", default="",
                        help="comma-separated: leak,leak_wild,hang,empty_reply,strict,orphan,empty,"
                             "throttle,stream_error")
    parser.add_argument("--fault-rate", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--chunk-delay", type=float, default=0.003)
    parser.add_argument("--models", default="kimi-k2.5", help="comma-separated model names served")
    parser.add_argument("--reasoning", action="store_true", help="stream reasoning_content")
    parser.add_argument("--hang-repeats", type=int, default=1, help="sightings of one request that may hang")
    parser.add_argument("--keepalive", type=float, default=0.0, help="seconds between ': ping' while hanging")
    parser.add_argument("--ttfb", type=float, default=0.0,
                        help="seconds before the first chunk (the slow-but-healthy profile)")
    parser.add_argument("--ttfb-per-kb", type=float, default=0.0,
                        help="more seconds before the first chunk per 1000 bytes of request")
    parser.add_argument("--ttfb-jitter", type=float, default=0.0,
                        help="vary the wait by up to this share either way (0..1)")
    parser.add_argument("--bearer-token-env", metavar="VAR",
                        help="require 'Authorization: Bearer $VAR' on every request")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    token = None
    if args.bearer_token_env:
        token = os.environ.get(args.bearer_token_env)
        if not token:
            parser.error(f"--bearer-token-env: {args.bearer_token_env} is not set")
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
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
            bearer_token=token,
            ttfb=args.ttfb,
            ttfb_per_kb=args.ttfb_per_kb,
            ttfb_jitter=args.ttfb_jitter,
        )
    except SimulatorConfigError as exc:
        parser.error(str(exc))
    return config, args.host, args.port, context


async def serve(config: SimulatorConfig, host: str, port: int,
                ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    simulator = await start_simulator(config, host, port, ssl_context)
    print(f"simulator listening on {simulator.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await simulator.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    config, host, port, context = parse_args(argv)
    run_loop(serve(config, host, port, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
