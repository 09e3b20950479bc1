"""Configuration: the TOML file described in the README, validated whole.

`load_config(path)` returns a frozen `Config` or raises `ConfigError` with
one message naming the file, the key (and line, where TOML gives one) and
what is wrong. Nothing starts half-configured: unknown keys, wrong types,
routes naming unknown upstreams and missing API-key variables are all
errors.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

from .errors import ConfigError
from .pricing import Price, PriceList
from .simulator.config import FAULT_NAMES

UPSTREAM_KINDS = ("openai", "bedrock", "simulator")
REPAIR_PROFILES = ("auto", "kimi", "none")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "switchboard"


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "switchboard" / "config.toml"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 4141
    journal: Path = field(default_factory=lambda: default_data_dir() / "journal.sqlite3")
    max_body_mb: float = 64.0
    #: Request bytes handled at once (`body_budget.py`; at least `max_body_mb` in effect).
    max_inflight_mb: float = 128.0
    #: Seconds a request body may go without a byte arriving before it is refused (408).
    body_timeout: float = 30.0
    journal_max_mb: float | None = None    # prune oldest whole sessions above this size
    journal_max_days: float | None = None  # prune sessions idle for longer than this
    journal_wire_kb: int = 512             # raw upstream bytes kept per turn, for repros (0: none)
    #: Text and reasoning a turn keeps (KB of characters); the client gets all of it.
    record_text_kb: int = 4096


@dataclass(frozen=True, slots=True)
class WatchdogSettings:
    """`[watchdog]`, and the per-route overrides of its first three keys."""

    first_token_timeout: float = 45.0  # s from request sent to first model output
    idle_timeout: float = 30.0         # s of silence between outputs
    max_attempts: int = 3              # per turn, retries and reroutes together
    keepalive_interval: float = 5.0    # s between SSE comments to a waiting client (0: off)
    cooldown: float = 30.0             # s an upstream target is skipped after failing
    cooldown_after: int = 2            # consecutive failures that start a cooldown
    #: Learn each target's deadlines from its recent turns (`learned.py`); the two
    #: timeouts above become ceilings. False: the timeouts are fixed timers.
    adaptive: bool = True
    first_token_floor: float = 2.0     # s: a learned first-output deadline is never shorter
    idle_floor: float = 10.0           # s: a learned idle deadline is never shorter
    #: Hedging (off unless set): after this many seconds without output, a second
    #: attempt starts on the next target while the first keeps waiting...
    hedge_after: float | None = None
    #: ...or after this quantile of the target's learned time to first output ("p95").
    hedge_quantile: float | None = None

    @property
    def hedging(self) -> bool:
        return self.hedge_after is not None or self.hedge_quantile is not None


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One `[upstreams.NAME]` table. Fields not used by a kind stay default."""

    name: str
    kind: str
    base_url: str = ""
    api_key_env: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    connect_timeout: float = 10.0
    #: `reasoning_content` for a tool-call message whose reasoning Switchboard
    #: does not remember (some gateways reject " " or ".")
    reasoning_placeholder: str = " "
    # bedrock
    region: str = ""
    endpoint_url: str | None = None
    profile: str | None = None
    ca_bundle: str | None = None
    read_timeout: float = 120.0
    stream: bool = True
    # simulator
    faults: tuple[str, ...] = ()
    fault_rate: float = 0.7
    seed: int = 0
    steps: int = 10
    chunk_delay: float = 0.002
    hang_repeats: int = 1  # how often the same request hangs again (a retry of it)
    ttfb: float = 0.0        # the slow-but-healthy profile: s before the first chunk,
    ttfb_per_kb: float = 0.0  # plus this per 1000 bytes of request,
    ttfb_jitter: float = 0.0  # varied by up to this share either way

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True, slots=True)
class Target:
    """`upstream:model`; a target without `:model` forwards the client's model name."""

    upstream: str
    model: str | None = None

    def __str__(self) -> str:
        return f"{self.upstream}:{self.model}" if self.model else self.upstream

    def model_for(self, requested: str) -> str:
        return self.model or requested

    @classmethod
    def parse(cls, text: str) -> Target:
        upstream, sep, model = text.partition(":")
        return cls(upstream.strip(), model.strip() if sep else None)


@dataclass(frozen=True, slots=True)
class RouteSettings:
    model: str
    targets: tuple[Target, ...]
    repairs: str = "auto"
    #: The `[watchdog]` settings with this route's overrides applied.
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.model)

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.model for ch in "*?[")


@dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxySettings
    watchdog: WatchdogSettings
    upstreams: dict[str, UpstreamSettings]
    routes: tuple[RouteSettings, ...]
    source: str = "<built-in>"
    telemetry: TelemetrySettings = field(default_factory=lambda: TelemetrySettings())
    prices: PriceList = field(default_factory=PriceList)

    def route_for(self, model: str) -> RouteSettings | None:
        return next((r for r in self.routes if r.matches(model)), None)

    def secret_env_vars(self) -> list[str]:
        return [u.api_key_env for u in self.upstreams.values() if u.api_key_env]


BUILTIN_CONFIG = """
# The built-in configuration: one simulated Kimi host, every model routed to it.
[upstreams.sim]
kind = "simulator"

[[routes]]
model = "*"
targets = ["sim:kimi-k2.5"]
repairs = "kimi"
"""


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """`[telemetry]`: OpenTelemetry export, off unless an endpoint is set here or in
    `OTEL_EXPORTER_OTLP_ENDPOINT` (see `proxy_core.telemetry`)."""

    otlp_endpoint: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    service_name: str | None = None
    capture_content: bool = False
    max_queue_size: int = 2048
    export_timeout: float = 10.0
    schedule_delay: float = 1.0
    metric_interval: float = 30.0


def _parse_telemetry(r: _Reader, raw: Any) -> TelemetrySettings:
    t = r.table(raw, "telemetry")
    key = "telemetry"
    r.check_keys(t, key, {"otlp_endpoint", "headers", "service_name", "capture_content",
                          "max_queue_size", "export_timeout", "schedule_delay", "metric_interval"})
    endpoint = r.get(t, key, "otlp_endpoint", str, None)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise r.fail(f"{key}.otlp_endpoint", f"must start with http:// or https://, got {endpoint!r}")
    headers = r.table(t.get("headers", {}), f"{key}.headers")
    for name, value in headers.items():
        if not isinstance(value, str):
            raise r.fail(f"{key}.headers.{name}", f"must be string, got {_type_name(value)}")
    queue = r.get(t, key, "max_queue_size", int, 2048)
    if queue < 1:
        raise r.fail(f"{key}.max_queue_size", f"must be at least 1, got {queue}")
    return TelemetrySettings(
        otlp_endpoint=endpoint.rstrip("/") if endpoint else None,
        headers=tuple(headers.items()),
        service_name=r.get(t, key, "service_name", str, None),
        capture_content=r.get(t, key, "capture_content", bool, False),
        max_queue_size=queue,
        export_timeout=r.number(t, key, "export_timeout", 10.0),
        schedule_delay=r.number(t, key, "schedule_delay", 1.0),
        metric_interval=r.number(t, key, "metric_interval", 30.0),
    )


class _Reader:
    """Walks the parsed TOML, checking types and rejecting unknown keys."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def table(self, data: Any, key: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(key, f"must be a table, got {_type_name(data)}")
        return data

    def check_keys(self, data: dict[str, Any], key: str, allowed: set[str]) -> None:
        for name in data:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def get(self, data: dict[str, Any], key: str, name: str, types: type | tuple[type, ...],
            default: Any) -> Any:
        if name not in data:
            return default
        value = data[name]
        types_t = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types_t:
            ok = False
        else:
            ok = isinstance(value, types_t)
        if not ok:
            expected = " or ".join(t.__name__ for t in types_t)
            raise self.fail(f"{key}.{name}", f"must be {expected}, got {_type_name(value)} {value!r}")
        return value

    @overload
    def number(self, data: dict[str, Any], key: str, name: str, default: float,
               minimum: float = 0.0) -> float: ...

    @overload
    def number(self, data: dict[str, Any], key: str, name: str, default: None,
               minimum: float = 0.0) -> float | None: ...

    def number(self, data: dict[str, Any], key: str, name: str, default: float | None,
               minimum: float = 0.0) -> float | None:
        """A number above `minimum`; `default` when absent (None: an optional setting)."""
        if name not in data and default is None:
            return None
        value = float(self.get(data, key, name, (int, float), default))
        if value <= minimum:
            raise self.fail(f"{key}.{name}", f"must be greater than {minimum:g}, got {value:g}")
        return value


def _type_name(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean",
            int: "integer", float: "float"}.get(type(value), type(value).__name__)


def port_problem(port: int) -> str | None:
    """What is wrong with `port` as a TCP port to listen on (`[proxy] port`, `--port`)."""
    return None if 0 <= port <= 65535 else f"must be between 0 and 65535, got {port}"


def parse_config(text: str, source: str = "<built-in>", *, check_env: bool = True) -> Config:
    """Parse and validate TOML text. Raises `ConfigError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    r = _Reader(source)
    r.check_keys(data, "", {"proxy", "watchdog", "upstreams", "routes", "telemetry", "prices"})

    p = r.table(data.get("proxy", {}), "proxy")
    r.check_keys(p, "proxy", {"host", "port", "journal", "max_body_mb", "max_inflight_mb",
                              "body_timeout", "journal_max_mb",
                              "journal_max_days", "journal_wire_kb", "record_text_kb"})
    port = r.get(p, "proxy", "port", int, 4141)
    if (problem := port_problem(port)) is not None:
        raise r.fail("proxy.port", problem)
    journal = r.get(p, "proxy", "journal", str, None)
    proxy = ProxySettings(
        host=r.get(p, "proxy", "host", str, "127.0.0.1"),
        port=port,
        journal=Path(journal).expanduser() if journal else default_data_dir() / "journal.sqlite3",
        max_body_mb=r.number(p, "proxy", "max_body_mb", 64.0),
        max_inflight_mb=r.number(p, "proxy", "max_inflight_mb", 128.0),
        body_timeout=r.number(p, "proxy", "body_timeout", 30.0),
        journal_max_mb=r.number(p, "proxy", "journal_max_mb", None),
        journal_max_days=r.number(p, "proxy", "journal_max_days", None),
        journal_wire_kb=_at_least(r, p, "proxy", "journal_wire_kb", 0, 512),
        record_text_kb=_at_least(r, p, "proxy", "record_text_kb", 1, 4096),
    )

    w = r.table(data.get("watchdog", {}), "watchdog")
    r.check_keys(w, "watchdog", {"first_token_timeout", "idle_timeout", "max_attempts",
                                 "keepalive_interval", "cooldown", "cooldown_after", "adaptive",
                                 "first_token_floor", "idle_floor", "hedge_after"})
    watchdog = _parse_timers(r, w, "watchdog", WatchdogSettings())
    keepalive = float(r.get(w, "watchdog", "keepalive_interval", (int, float), 5.0))
    if keepalive < 0:
        raise r.fail("watchdog.keepalive_interval", f"must not be negative (0 turns it off), got {keepalive:g}")
    cooldown = float(r.get(w, "watchdog", "cooldown", (int, float), 30.0))
    if cooldown < 0:
        raise r.fail("watchdog.cooldown", f"must not be negative (0 turns it off), got {cooldown:g}")
    cooldown_after = r.get(w, "watchdog", "cooldown_after", int, 2)
    if cooldown_after < 1:
        raise r.fail("watchdog.cooldown_after", f"must be at least 1, got {cooldown_after}")
    watchdog = replace(watchdog, keepalive_interval=keepalive, cooldown=cooldown,
                                   cooldown_after=cooldown_after)
    watchdog = _parse_adaptive(r, w, watchdog)

    upstreams: dict[str, UpstreamSettings] = {}
    for name, raw in r.table(data.get("upstreams", {}), "upstreams").items():
        upstreams[name] = _parse_upstream(r, name, raw, check_env)
    if not upstreams:
        raise r.fail("upstreams", "at least one [upstreams.NAME] table is required")

    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list):
        raise r.fail("routes", "must be an array of tables: write [[routes]]")
    routes = tuple(_parse_route(r, i, raw, upstreams, watchdog) for i, raw in enumerate(raw_routes))
    if not routes:
        raise r.fail("routes", "at least one [[routes]] entry is required")
    return Config(proxy, watchdog, upstreams, routes, source,
                  telemetry=_parse_telemetry(r, data.get("telemetry", {})),
                  prices=_parse_prices(r, data.get("prices", {})))


_PRICE_KEYS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok",
               "cache_write_per_mtok")


def _parse_prices(r: _Reader, raw: Any) -> PriceList:
    """`[prices."KEY"]` tables: money per million tokens (see `pricing.py`)."""
    prices: list[tuple[str, Price]] = []
    for name, table in r.table(raw, "prices").items():
        key = f'prices."{name}"'
        if not isinstance(table, dict):
            raise r.fail(key, f"must be a table such as [{key}] with input_per_mtok and "
                              f"output_per_mtok, got {_type_name(table)}")
        r.check_keys(table, key, set(_PRICE_KEYS))
        values: dict[str, float | None] = {}
        for field_name in _PRICE_KEYS:
            value = r.get(table, key, field_name, (int, float), None)
            if value is None and field_name in ("input_per_mtok", "output_per_mtok"):
                raise r.fail(f"{key}.{field_name}", "is required (money per million tokens)")
            if value is not None and value < 0:
                raise r.fail(f"{key}.{field_name}", f"must not be negative, got {value:g}")
            values[field_name] = None if value is None else float(value)
        prices.append((name, Price(input_per_mtok=values["input_per_mtok"] or 0.0,
                                   output_per_mtok=values["output_per_mtok"] or 0.0,
                                   cached_input_per_mtok=values["cached_input_per_mtok"],
                                   cache_write_per_mtok=values["cache_write_per_mtok"])))
    return PriceList(tuple(prices))


def _parse_upstream(r: _Reader, name: str, raw: Any, check_env: bool) -> UpstreamSettings:
    """One upstream table: the keys every kind has, then the kind's own."""
    key = f"upstreams.{name}"
    t = dict(r.table(raw, key))
    placeholder = r.get(t, key, "reasoning_placeholder", str, " ")
    if placeholder == "":
        raise r.fail(f"{key}.reasoning_placeholder",
                     'must not be empty (Moonshot rejects ""; the default is " ")')
    t.pop("reasoning_placeholder", None)
    return replace(_parse_upstream_kind(r, name, key, t, check_env),
                   reasoning_placeholder=placeholder)


def _parse_upstream_kind(r: _Reader, name: str, key: str, t: dict[str, Any],
                         check_env: bool) -> UpstreamSettings:
    kind = r.get(t, key, "kind", str, None)
    if kind is None:
        raise r.fail(f"{key}.kind", f"is required (one of: {', '.join(UPSTREAM_KINDS)})")
    if kind not in UPSTREAM_KINDS:
        raise r.fail(f"{key}.kind", f"unknown kind {kind!r} (one of: {', '.join(UPSTREAM_KINDS)})")
    if kind == "openai":
        r.check_keys(t, key, {"kind", "base_url", "api_key_env", "headers", "connect_timeout",
                              "ca_bundle"})
        base_url = r.get(t, key, "base_url", str, "")
        if not base_url.startswith(("http://", "https://")):
            raise r.fail(f"{key}.base_url", "is required and must start with http:// or https://")
        api_key_env = r.get(t, key, "api_key_env", str, None)
        if api_key_env and check_env and not os.environ.get(api_key_env):
            raise r.fail(f"{key}.api_key_env", f"environment variable {api_key_env} is not set")
        headers = r.table(t.get("headers", {}), f"{key}.headers")
        for h, v in headers.items():
            if not isinstance(v, str):
                raise r.fail(f"{key}.headers.{h}", f"must be string, got {_type_name(v)}")
            if h.lower() == "authorization":
                raise r.fail(f"{key}.headers.{h}", "put the key in an environment variable and name it in api_key_env")
            if any(c in h + v for c in "\r\n") or not h.strip():
                raise r.fail(f"{key}.headers.{h}", "header names and values cannot be empty or contain line breaks")
        return UpstreamSettings(
            name=name, kind=kind, base_url=base_url.rstrip("/"), api_key_env=api_key_env,
            headers=tuple(headers.items()),
            connect_timeout=r.number(t, key, "connect_timeout", 10.0),
            ca_bundle=_ca_bundle(r, t, key, check_env),
        )
    if kind == "bedrock":
        return _parse_bedrock(r, name, key, t, check_env)
    r.check_keys(t, key, {"kind", "faults", "fault_rate", "seed", "steps", "chunk_delay",
                          "hang_repeats", "ttfb", "ttfb_per_kb", "ttfb_jitter"})
    faults = r.get(t, key, "faults", list, [])
    for fault in faults:
        if fault not in FAULT_NAMES:
            raise r.fail(f"{key}.faults", f"unknown fault {fault!r} (known: {', '.join(sorted(FAULT_NAMES))})")
    rate = float(r.get(t, key, "fault_rate", (int, float), 0.7))
    if not 0.0 <= rate <= 1.0:
        raise r.fail(f"{key}.fault_rate", f"must be between 0 and 1, got {rate:g}")
    steps = r.get(t, key, "steps", int, 10)
    if steps < 1:
        raise r.fail(f"{key}.steps", f"must be at least 1, got {steps}")
    delay = float(r.get(t, key, "chunk_delay", (int, float), 0.002))
    if delay < 0:
        raise r.fail(f"{key}.chunk_delay", f"must not be negative, got {delay:g}")
    return UpstreamSettings(name=name, kind=kind, faults=tuple(faults), fault_rate=rate,
                            seed=r.get(t, key, "seed", int, 0), steps=steps, chunk_delay=delay,
                            hang_repeats=_at_least(r, t, key, "hang_repeats", 0, 1),
                            ttfb=_seconds(r, t, key, "ttfb"),
                            ttfb_per_kb=_seconds(r, t, key, "ttfb_per_kb"),
                            ttfb_jitter=_seconds(r, t, key, "ttfb_jitter", upto=1.0))


def _seconds(r: _Reader, t: dict[str, Any], key: str, name: str, upto: float | None = None
             ) -> float:
    """A number that may be 0 (default) but not negative, nor above `upto` if given."""
    value = float(r.get(t, key, name, (int, float), 0.0))
    if value < 0 or (upto is not None and value > upto):
        raise r.fail(f"{key}.{name}", f"must be between 0 and {upto:g}, got {value:g}"
                     if upto is not None else f"must not be negative, got {value:g}")
    return value


def _ca_bundle(r: _Reader, t: dict[str, Any], key: str, check_env: bool) -> str | None:
    """`ca_bundle`: a PEM file of CAs to trust for this upstream's TLS (corporate CAs, local hosts)."""
    ca_bundle: str | None = r.get(t, key, "ca_bundle", str, None)
    if ca_bundle is not None:
        ca_bundle = str(Path(ca_bundle).expanduser())
        if check_env and not Path(ca_bundle).is_file():
            raise r.fail(f"{key}.ca_bundle", f"no such file: {ca_bundle}")
    return ca_bundle


def _parse_bedrock(r: _Reader, name: str, key: str, t: dict[str, Any],
                   check_env: bool) -> UpstreamSettings:
    """`kind = "bedrock"`: region (else $AWS_REGION / $AWS_DEFAULT_REGION), endpoint, profile."""
    r.check_keys(t, key, {"kind", "region", "endpoint_url", "profile", "ca_bundle",
                          "connect_timeout", "read_timeout", "stream"})
    region = r.get(t, key, "region", str, None) or os.environ.get("AWS_REGION") \
        or os.environ.get("AWS_DEFAULT_REGION") or ""
    if not region and check_env:
        raise r.fail(f"{key}.region", "is required (or set AWS_REGION), e.g. \"us-east-1\"")
    endpoint_url = r.get(t, key, "endpoint_url", str, None)
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise r.fail(f"{key}.endpoint_url", "must start with http:// or https://")
    profile = r.get(t, key, "profile", str, None)
    if profile is not None and not profile.strip():
        raise r.fail(f"{key}.profile", "must not be empty (leave it out for the default chain)")
    ca_bundle = _ca_bundle(r, t, key, check_env)
    return UpstreamSettings(
        name=name, kind="bedrock", region=region,
        endpoint_url=endpoint_url.rstrip("/") if endpoint_url else None,
        profile=profile, ca_bundle=ca_bundle,
        connect_timeout=r.number(t, key, "connect_timeout", 10.0),
        read_timeout=r.number(t, key, "read_timeout", 120.0),
        stream=r.get(t, key, "stream", bool, True),
    )


def _parse_timers(r: _Reader, t: dict[str, Any], key: str,
                  base: WatchdogSettings) -> WatchdogSettings:
    """The three watchdog keys a route may override, over `base`."""
    attempts = r.get(t, key, "max_attempts", int, base.max_attempts)
    if attempts < 1:
        raise r.fail(f"{key}.max_attempts", f"must be at least 1, got {attempts}")
    return replace(
        base,
        first_token_timeout=r.number(t, key, "first_token_timeout", base.first_token_timeout),
        idle_timeout=r.number(t, key, "idle_timeout", base.idle_timeout),
        max_attempts=attempts,
    )


def _parse_adaptive(r: _Reader, w: dict[str, Any], base: WatchdogSettings) -> WatchdogSettings:
    """`adaptive`, its floors, and `hedge_after` ("pNN" or seconds)."""
    hedge_after: float | None = None
    hedge_quantile: float | None = None
    raw = r.get(w, "watchdog", "hedge_after", (str, int, float), None)
    if isinstance(raw, str):
        match = re.fullmatch(r"p(\d{1,2})", raw.strip())
        if match is None or not 1 <= int(match.group(1)) <= 99:
            raise r.fail("watchdog.hedge_after",
                         f'must be a quantile such as "p95" (p1..p99) or seconds, got {raw!r}')
        hedge_quantile = int(match.group(1)) / 100
    elif raw is not None:
        hedge_after = r.number(w, "watchdog", "hedge_after", 0.0)
    return replace(
        base,
        adaptive=r.get(w, "watchdog", "adaptive", bool, True),
        first_token_floor=r.number(w, "watchdog", "first_token_floor", base.first_token_floor),
        idle_floor=r.number(w, "watchdog", "idle_floor", base.idle_floor),
        hedge_after=hedge_after,
        hedge_quantile=hedge_quantile,
    )


def _at_least(r: _Reader, t: dict[str, Any], key: str, name: str, minimum: int,
              default: int) -> int:
    value: int = r.get(t, key, name, int, default)
    if value < minimum:
        raise r.fail(f"{key}.{name}", f"must be at least {minimum}, got {value}")
    return value


def _parse_route(r: _Reader, index: int, raw: Any, upstreams: dict[str, UpstreamSettings],
                 watchdog: WatchdogSettings) -> RouteSettings:
    key = f"routes[{index}]"
    t = r.table(raw, key)
    r.check_keys(t, key, {"model", "targets", "repairs", "first_token_timeout", "idle_timeout",
                          "max_attempts"})
    model = r.get(t, key, "model", str, None)
    if not model:
        raise r.fail(f"{key}.model", "is required (a model name or glob such as \"kimi-*\")")
    raw_targets = r.get(t, key, "targets", list, None)
    if not raw_targets:
        raise r.fail(f"{key}.targets", "is required: a non-empty array of \"upstream:model\" strings")
    targets = []
    for text in raw_targets:
        if not isinstance(text, str):
            raise r.fail(f"{key}.targets", f"entries must be strings, got {_type_name(text)}")
        target = Target.parse(text)
        if target.upstream not in upstreams:
            known = ", ".join(sorted(upstreams))
            raise r.fail(f"{key}.targets", f"{text!r} names unknown upstream {target.upstream!r} (defined: {known})")
        targets.append(target)
    repairs = r.get(t, key, "repairs", str, "auto")
    if repairs not in REPAIR_PROFILES:
        raise r.fail(f"{key}.repairs", f"unknown profile {repairs!r} (one of: {', '.join(REPAIR_PROFILES)})")
    return RouteSettings(model=model, targets=tuple(targets), repairs=repairs,
                         watchdog=_parse_timers(r, t, key, watchdog))


def load_config(path: str | os.PathLike[str] | None = None, *, check_env: bool = True) -> Config:
    """Load `path`, or the user's config if it exists, else the built-in simulator config."""
    if path is None:
        candidate = default_config_path()
        if not candidate.exists():
            return parse_config(BUILTIN_CONFIG)
        path = candidate
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse_config(text, str(p), check_env=check_env)
