"""Running the dashboard: the proxy and the Textual app in one event loop.

`switchboard` → `run_local`; `switchboard demo` → `run_demo`;
`switchboard attach URL` → `run_attach`. The proxy starts before the app
takes the terminal, so "cannot listen" is a plain error message; it stops
after the app exits. Logs go to a file next to the journal (the screen
belongs to the dashboard).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proxy_core.app import SwitchboardProxy
from proxy_core.config import Config
from proxy_core.secrets import RedactingFilter
from proxy_core.serve import exposure_warning

from .app import SwitchboardApp
from .demo import DemoAgent, demo_config
from .source import LocalSource, RemoteSource


@contextmanager
def log_to_file(proxy: SwitchboardProxy, path: Path) -> Iterator[Path]:
    """Send logs to `path` while the dashboard owns the screen; restore logging after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(proxy.redactor))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        handler.close()


async def run_local(config: Config, *, host: str | None, port: int | None, theme: str | None,
                    banner: str = "", demo: bool = False) -> int:
    proxy = SwitchboardProxy(config, host=host, port=port)
    try:
        await proxy.start()
    except OSError:
        await proxy.stop()
        if not demo or port == 0:
            raise
        proxy = SwitchboardProxy(config, host=host, port=0)  # the demo takes any free port
        await proxy.start()
        banner += f" (port {port} was busy)"
    warning = exposure_warning(proxy.host, proxy.port)
    if warning is not None:  # on screen, where the user looks: the log is in a file
        banner = f"⚠ {warning} {banner}".strip()
    source = LocalSource(proxy)
    agent = DemoAgent(proxy.base_url) if demo else None
    app = SwitchboardApp(source, theme=theme, banner=banner)
    loop = asyncio.get_running_loop()
    with log_to_file(proxy, config.proxy.journal.parent / "switchboard.log"):
        try:
            if agent is not None:
                agent.start()
            # SIGTERM (a service manager, `kill`) quits like `q`: the proxy stops cleanly.
            loop.add_signal_handler(signal.SIGTERM, app.exit)
            result = await app.run_async()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if agent is not None:
                await agent.stop()
            await source.stop()
            await proxy.stop()
    return result or 0


async def run_demo(*, host: str | None, port: int | None, theme: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="switchboard-demo-") as tmp:
        config = demo_config(Path(tmp) / "journal.sqlite3")
        return await run_local(config, host=host, port=port, theme=theme, demo=True,
                               banner="demo: a scripted agent drives 4 sessions; "
                                      "flaky leaks and hangs, mantle is down")


async def run_attach(url: str, *, theme: str | None) -> int:
    source = RemoteSource(url)
    app = SwitchboardApp(source, theme=theme, banner="attached")
    try:
        result = await app.run_async()
    finally:
        await source.stop()
    return result or 0
