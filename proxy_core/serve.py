"""`switchboard serve`: the proxy without the dashboard.

The headless front end (like mitmproxy's `dump`): start the proxy, log one
line per finished or failed turn, stop cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys

from .app import SwitchboardProxy
from .config import Config
from .events import TurnFailed, TurnFinished
from .secrets import RedactingFilter

log = logging.getLogger("switchboard")


class TurnLogger:
    """Observer: one log line per finished turn."""

    def __init__(self, proxy: SwitchboardProxy) -> None:
        self.proxy = proxy

    def on_TurnFinished(self, event: TurnFinished) -> None:
        turn = self.proxy.store.get(event.turn_id)
        if turn is None:
            return
        extra = f" repairs={len(turn.repairs)}" if turn.repairs else ""
        if event.cost is not None:
            extra += f" cost={event.cost:.6f}"
        log.info("turn %s session=%s model=%s target=%s attempts=%d finish=%s tools=%d "
                 "ttfb=%.2fs total=%.2fs tokens=%d/%d%s",
                 turn.id, turn.session_id, turn.model, turn.target, len(turn.attempts),
                 event.finish_reason, event.tool_calls, turn.ttfb or 0.0, event.duration,
                 event.prompt_tokens, event.completion_tokens, extra)

    def on_TurnFailed(self, event: TurnFailed) -> None:
        turn = self.proxy.store.get(event.turn_id)
        attempts = len(turn.attempts) if turn else 0
        log.warning("turn %s FAILED status=%d attempts=%d after %.2fs: %s",
                    event.turn_id, event.status, attempts, event.duration, event.error)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the proxy reachable from this machine only."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """The warning to show when the proxy listens beyond loopback (None when it doesn't).

    Front ends (`serve`, the dashboard) call this after binding and show it
    prominently: every request through the proxy spends the user's upstream
    keys, and the control API shows every turn.
    """
    if is_loopback(host):
        return None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return (f"Switchboard is listening on {where}, beyond this machine: anyone who can reach "
            "that address can send model requests on your upstream keys and read every turn "
            "through the control API. Use --host 127.0.0.1 unless you mean this.")


def warn_if_exposed(host: str, port: int, logger: logging.Logger | None = None) -> str | None:
    """Log `exposure_warning` as a warning, if there is one; return it."""
    warning = exposure_warning(host, port)
    if warning is not None:
        (logger or log).warning("WARNING: %s", warning)
    return warning


def setup_logging(proxy: SwitchboardProxy, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(proxy.redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    proxy = SwitchboardProxy(config, host=host, port=port)
    setup_logging(proxy)
    proxy.bus.add_observer(TurnLogger(proxy))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await proxy.start()
        warn_if_exposed(proxy.host, proxy.port)
        log.info("config %s; journal %s", config.source, config.proxy.journal)
        log.info("point opencode at %s/v1", proxy.base_url)
        print(f"switchboard ready on {proxy.base_url}", flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await proxy.stop()
