"""The `switchboard` command line.

Plain `switchboard` runs the proxy and the dashboard in one process;
`demo` does the same on the built-in simulator with a scripted agent;
`attach [URL]` shows the dashboard for a proxy running elsewhere. Headless
commands (`serve`, `opencode-config`) only import `proxy_core`; Textual is
imported only when a dashboard is started.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from proxy_core.config import Config, load_config, port_problem
from proxy_core.errors import ConfigError, SwitchboardError
from proxy_core.runner import run as run_loop

EXIT_CONFIG = 2


def _add_common(parser: argparse.ArgumentParser, default: object = None) -> None:
    """--config/--host/--port, before or after the subcommand (subparsers pass SUPPRESS
    so they don't overwrite a value given before the subcommand)."""
    parser.add_argument("--config", metavar="PATH", type=Path, default=default,
                        help="config TOML (default: $XDG_CONFIG_HOME/switchboard/config.toml "
                             "if it exists, else the built-in simulator)")
    parser.add_argument("--host", default=default,
                        help="address to bind (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=default,
                        help="port to bind (default from config: 4141; 0: any free port)")


def _port(text: str) -> int:
    """A TCP port number, as `--port` takes it (checked as the config's is)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if (problem := port_problem(port)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return port


def _add_theme(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--theme", metavar="NAME", default=default,
                        help="dashboard theme: dark (default), light, high-contrast, or one of "
                             "yours in $XDG_CONFIG_HOME/switchboard/themes/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="A repairing, observable proxy between coding agents and flaky model hosts.",
        epilog="Point opencode at http://127.0.0.1:4141/v1 (see `switchboard opencode-config`).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_common(parser)  # `switchboard --config X` works without a subcommand
    _add_theme(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_common(sub.add_parser("serve", help="run the proxy headless (one log line per turn)"),
                argparse.SUPPRESS)
    oc = sub.add_parser("opencode-config",
                        help="print the opencode.json provider block for the configured routes")
    _add_common(oc, argparse.SUPPRESS)
    oc.add_argument("--provider", default="switchboard", help="provider id to use in opencode.json")
    demo = sub.add_parser("demo", help="the dashboard on the built-in simulator, with a scripted "
                                       "agent driving sessions through it (no account needed)")
    demo.add_argument("--host", default=argparse.SUPPRESS, help="address to bind (127.0.0.1)")
    demo.add_argument("--port", type=int, default=argparse.SUPPRESS,
                      help="port to bind (4141; any free port if busy)")
    _add_theme(demo, argparse.SUPPRESS)
    attach = sub.add_parser("attach", help="the dashboard for a proxy already running "
                                           "(e.g. `switchboard serve`), through its control API")
    attach.add_argument("url", nargs="?", metavar="URL",
                        help="the proxy's address (default: http://HOST:PORT from the config)")
    attach.add_argument("--config", metavar="PATH", type=Path, default=argparse.SUPPRESS,
                        help="config TOML to find the proxy's address in (when no URL is given)")
    attach.add_argument("--host", default=argparse.SUPPRESS,
                        help="the proxy's host, when no URL is given (default from config)")
    attach.add_argument("--port", type=int, default=argparse.SUPPRESS,
                        help="the proxy's port, when no URL is given (default from config)")
    _add_theme(attach, argparse.SUPPRESS)
    repro = sub.add_parser("repro", help="write a turn from the journal as a self-contained, "
                                         "redacted fixture (replay it with `switchboard replay`)")
    repro.add_argument("turn_id", metavar="TURN_ID", help="the turn's id (turn_...)")
    repro.add_argument("-o", "--output", metavar="FILE", type=Path, default=None,
                       help="where to write it (default: ./repro-TURN_ID.json)")
    repro.add_argument("--journal", metavar="PATH", type=Path, default=None,
                       help="the journal to read (default: the config's)")
    repro.add_argument("--config", metavar="PATH", type=Path, default=argparse.SUPPRESS,
                       help="config TOML (for the journal's path and the route's settings)")
    replay = sub.add_parser("replay", help="play a repro fixture through the repair pipeline, "
                                           "offline, and print what the client received")
    replay.add_argument("fixture", metavar="FILE", type=Path)
    replay.add_argument("--instant", action="store_true",
                        help="no gaps between the recorded reads (a stall still waits for "
                             "the recorded watchdog limit)")
    return parser


def _version() -> str:
    try:
        return metadata.version("agent-switchboard")
    except metadata.PackageNotFoundError:
        return "unknown"


def opencode_config(config: Config, base_url: str, provider: str) -> dict[str, object]:
    """The `opencode.json` block that points opencode at this proxy."""
    models: dict[str, object] = {}
    for route in config.routes:
        names = [route.model] if not route.is_pattern else [t.model for t in route.targets if t.model]
        for name in names:
            models.setdefault(name, {"name": f"{name} (via Switchboard)", "tool_call": True})
    first = next(iter(models), "kimi-k2.5")
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {provider: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Switchboard",
            "options": {"baseURL": f"{base_url}/v1", "apiKey": "local"},
            "models": models,
        }},
        "model": f"{provider}/{first}",
        "small_model": f"{provider}/{first}",
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return _dashboard("demo", args, None)
    if args.command == "replay":
        return _replay(args.fixture, instant=args.instant)
    try:
        config = load_config(args.config,
                             check_env=args.command not in ("opencode-config", "attach", "repro"))
    except ConfigError as exc:
        print(f"switchboard: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    host = args.host or config.proxy.host
    port = config.proxy.port if args.port is None else args.port
    if args.command == "opencode-config":
        shown = f"[{host}]" if ":" in host else host
        print(json.dumps(opencode_config(config, f"http://{shown}:{port}", args.provider), indent=2))
        return 0
    if args.command == "repro":
        return _repro(args.turn_id, args.output, args.journal or config.proxy.journal, config)
    if args.command in (None, "attach"):
        return _dashboard(args.command or "local", args, config)
    from proxy_core.serve import serve
    try:
        run_loop(serve(config, host=host, port=port))
    except SwitchboardError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"switchboard: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _repro(turn_id: str, output: Path | None, journal: Path, config: Config) -> int:
    from proxy_core.repro import ReproError, from_journal, write_fixture
    from proxy_core.secrets import Redactor
    path = output or Path(f"repro-{turn_id}.json")
    try:
        fixture = from_journal(journal.expanduser(), turn_id, config)
        write_fixture(fixture, path, Redactor(config.secret_env_vars()))
    except ReproError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    attempts = len(fixture["wire"])
    print(f"wrote {path} ({attempts} attempt(s) of raw upstream bytes"
          f"{'' if fixture['wire_recorded'] else ', none recorded'}); "
          f"play it with: switchboard replay {path}", file=sys.stderr)
    return 0


def _replay(path: Path, *, instant: bool) -> int:
    from proxy_core.replay import replay
    from proxy_core.repro import ReproError, client_view, differences, read_fixture, recorded_view
    try:
        fixture = read_fixture(path)
        result = run_loop(replay(fixture, instant=instant))
    except ReproError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result.output)
    sys.stdout.flush()
    found = differences(client_view(result.output), recorded_view(fixture.get("turn") or {}))
    print(f"switchboard: replayed {result.requests} attempt(s), HTTP {result.status}; "
          + ("the client's answer matches the live run" if not found else
             "differs from the live run: " + "; ".join(found)), file=sys.stderr)
    return 0 if not found else 3


def _dashboard(mode: str, args: argparse.Namespace, config: Config | None) -> int:
    """Proxy + dashboard (`local`), the demo, or `attach`: Textual is imported only here."""
    from .dashboard import run_attach, run_demo, run_local
    host = args.host or (config.proxy.host if config else None)
    port = args.port if args.port is not None else (config.proxy.port if config else None)
    try:
        if mode == "demo":
            return run_loop(run_demo(host=host, port=port, theme=args.theme))
        if mode == "attach":
            shown = f"[{host}]" if host and ":" in host else host
            return run_loop(run_attach(args.url or f"http://{shown}:{port}", theme=args.theme))
        assert config is not None
        return run_loop(run_local(config, host=host, port=port, theme=args.theme))
    except SwitchboardError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"switchboard: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
