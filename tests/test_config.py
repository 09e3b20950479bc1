"""Configuration: good TOML parses to the right values; bad TOML fails with one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy_core.config import Target, load_config, parse_config
from proxy_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# The example from docs/design.md, whole.
DESIGN_EXAMPLE = """
[proxy]
host = "127.0.0.1"
port = 4141
journal = "~/.local/share/switchboard/journal.sqlite3"   # every turn, durable

[watchdog]
first_token_timeout = 45.0   # s from request sent to first upstream byte
idle_timeout = 30.0          # s of silence between chunks (keep-alives don't count as progress)
max_attempts = 3             # per turn, across retries and reroutes

[upstreams.mantle]
kind = "openai"              # any OpenAI-compatible endpoint
base_url = "https://bedrock-mantle.us-east-1.api.aws/v1"
api_key_env = "AWS_BEARER_TOKEN_BEDROCK"

[upstreams.converse]
kind = "bedrock"             # Bedrock Converse via boto3
region = "us-east-1"
# endpoint_url = "http://127.0.0.1:9000"   # for tests and private endpoints

[upstreams.sim]
kind = "simulator"           # built in; faults = ["leak", "hang", "strict"]

[[routes]]
model = "kimi-k2.5"          # what the client asks for; glob patterns allowed
targets = ["mantle:moonshotai.kimi-k2.5", "converse:moonshotai.kimi-k2.5"]
repairs = "kimi"             # repair profile
"""

MINIMAL = """
[upstreams.up]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[routes]]
model = "m"
targets = ["up:real"]
"""


def test_design_example_parses_into_the_right_values(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-key-value")
    path = tmp_path / "config.toml"
    path.write_text(DESIGN_EXAMPLE)
    config = load_config(path)

    assert config.source == str(path)
    assert config.proxy.host == "127.0.0.1"
    assert config.proxy.port == 4141
    assert config.proxy.journal == tmp_path / ".local/share/switchboard/journal.sqlite3"
    assert config.watchdog.first_token_timeout == 45.0
    assert config.watchdog.idle_timeout == 30.0
    assert config.watchdog.max_attempts == 3

    mantle = config.upstreams["mantle"]
    assert mantle.kind == "openai"
    assert mantle.base_url == "https://bedrock-mantle.us-east-1.api.aws/v1"
    assert mantle.api_key_env == "AWS_BEARER_TOKEN_BEDROCK"
    assert mantle.api_key() == "bedrock-key-value"
    assert config.upstreams["sim"].kind == "simulator"
    converse = config.upstreams["converse"]
    assert converse.kind == "bedrock" and converse.region == "us-east-1"
    assert converse.endpoint_url is None
    assert "AWS_BEARER_TOKEN_BEDROCK" in config.secret_env_vars()

    (route,) = config.routes
    assert route.model == "kimi-k2.5"
    assert route.targets == (Target("mantle", "moonshotai.kimi-k2.5"),
                             Target("converse", "moonshotai.kimi-k2.5"))
    assert route.repairs == "kimi"
    assert config.route_for("kimi-k2.5") is route
    assert config.route_for("gpt-4o") is None


def test_defaults_headers_and_glob_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(MINIMAL.replace('model = "m"', 'model = "kimi-*"')
                          .replace('base_url = "http://127.0.0.1:9/v1"',
                                   'base_url = "http://127.0.0.1:9/v1/"\n'
                                   'headers = { "X-Title" = "sb", "HTTP-Referer" = "https://x" }'))
    assert config.proxy.port == 4141 and config.proxy.max_body_mb == 64.0
    assert config.proxy.max_inflight_mb == 128.0 and config.proxy.body_timeout == 30.0
    assert config.watchdog.max_attempts == 3
    up = config.upstreams["up"]
    assert up.base_url == "http://127.0.0.1:9/v1"
    assert dict(up.headers) == {"X-Title": "sb", "HTTP-Referer": "https://x"}
    assert config.route_for("kimi-k2.5") is not None
    assert config.route_for("gpt") is None
    assert config.routes[0].repairs == "auto"


def test_watchdog_learns_by_default_and_hedges_only_when_asked() -> None:
    watchdog = parse_config(MINIMAL).watchdog
    assert watchdog.adaptive is True and not watchdog.hedging
    assert (watchdog.first_token_floor, watchdog.idle_floor) == (2.0, 10.0)
    watchdog = parse_config('[watchdog]\nadaptive = false\nhedge_after = "p90"\n'
                            "first_token_floor = 1\nidle_floor = 0.5\n" + MINIMAL).watchdog
    assert watchdog.adaptive is False and watchdog.hedging
    assert (watchdog.hedge_quantile, watchdog.hedge_after) == (0.9, None)
    assert (watchdog.first_token_floor, watchdog.idle_floor) == (1.0, 0.5)
    route = parse_config("[watchdog]\nhedge_after = 2.5\n" + MINIMAL).routes[0]
    assert (route.watchdog.hedge_after, route.watchdog.hedge_quantile) == (2.5, None)
    sim = parse_config('[upstreams.s]\nkind = "simulator"\nttfb = 0.5\nttfb_per_kb = 0.01\n'
                       'ttfb_jitter = 0.25\n[[routes]]\nmodel = "m"\ntargets = ["s"]\n')
    settings = sim.upstreams["s"]
    assert (settings.ttfb, settings.ttfb_per_kb, settings.ttfb_jitter) == (0.5, 0.01, 0.25)


# Each bad config: (name, toml text, fragments the message must contain).
BAD = [
    ("invalid TOML", "[proxy\nport = 1\n", ["not valid TOML", "line 1"]),
    ("invalid TOML later line", MINIMAL + "\n[watchdog]\nidle_timeout = = 3\n",
     ["not valid TOML", "line 11"]),
    ("unknown top-level key", MINIMAL + "\nlisten = 1\n", ["listen", "unknown key"]),
    ("unknown key", "[proxy]\nprot = 4141\n" + MINIMAL, ["proxy.prot", "unknown key"]),
    ("unknown upstream key", MINIMAL.replace('kind = "openai"', 'kind = "openai"\nbase-url = "x"'),
     ["upstreams.up.base-url", "unknown key"]),
    ("unknown route key", MINIMAL + 'modle = "x"\n', ["routes[0].modle", "unknown key"]),
    ("wrong type", "[proxy]\nport = \"4141\"\n" + MINIMAL, ["proxy.port", "must be int"]),
    ("boolean for number", "[watchdog]\nidle_timeout = true\n" + MINIMAL,
     ["watchdog.idle_timeout", "boolean"]),
    ("table expected", "proxy = 3\n" + MINIMAL, ["proxy", "must be a table"]),
    ("port too big", "[proxy]\nport = 70000\n" + MINIMAL, ["proxy.port", "70000"]),
    ("port negative", "[proxy]\nport = -1\n" + MINIMAL, ["proxy.port", "-1"]),
    ("zero timeout", "[watchdog]\nfirst_token_timeout = 0\n" + MINIMAL,
     ["watchdog.first_token_timeout", "greater than 0"]),
    ("zero attempts", "[watchdog]\nmax_attempts = 0\n" + MINIMAL, ["watchdog.max_attempts"]),
    ("route names unknown upstream", MINIMAL.replace('"up:real"', '"nope:real"'),
     ["routes[0].targets", "'nope'", "up"]),
    ("unknown kind", MINIMAL.replace('kind = "openai"', 'kind = "grpc"'),
     ["upstreams.up.kind", "grpc"]),
    ("missing kind", MINIMAL.replace('kind = "openai"', ""), ["upstreams.up.kind", "required"]),
    ("missing base_url", MINIMAL.replace('base_url = "http://127.0.0.1:9/v1"', ""),
     ["upstreams.up.base_url"]),
    ("authorization header", MINIMAL.replace('kind = "openai"',
                                             'kind = "openai"\nheaders = { Authorization = "k" }'),
     ["upstreams.up.headers.Authorization", "api_key_env"]),
    ("unknown repair profile", MINIMAL + 'repairs = "magic"\n', ["routes[0].repairs", "magic"]),
    ("missing api_key_env variable",
     MINIMAL.replace('kind = "openai"', 'kind = "openai"\napi_key_env = "SB_TEST_UNSET_KEY_VAR"'),
     ["upstreams.up.api_key_env", "SB_TEST_UNSET_KEY_VAR", "not set"]),
    ("empty targets", MINIMAL.replace('["up:real"]', "[]"), ["routes[0].targets"]),
    ("target not a string", MINIMAL.replace('["up:real"]', "[1]"), ["routes[0].targets"]),
    ("missing route model", MINIMAL.replace('model = "m"', ""), ["routes[0].model", "required"]),
    ("routes not an array", MINIMAL.replace("[[routes]]", "[routes]"), ["routes", "[[routes]]"]),
    ("no routes", MINIMAL.split("[[routes]]")[0], ["routes", "required"]),
    ("no upstreams", '[[routes]]\nmodel = "m"\ntargets = ["up"]\n', ["upstreams", "required"]),
    ("empty reasoning placeholder",
     MINIMAL.replace('kind = "openai"', 'kind = "openai"\nreasoning_placeholder = ""'),
     ["upstreams.up.reasoning_placeholder", "must not be empty"]),
    ("placeholder not a string",
     MINIMAL.replace('kind = "openai"', 'kind = "openai"\nreasoning_placeholder = 1'),
     ["upstreams.up.reasoning_placeholder", "must be str"]),
    ("zero journal_max_mb", "[proxy]\njournal_max_mb = 0\n" + MINIMAL,
     ["proxy.journal_max_mb", "greater than 0"]),
    ("negative journal_max_days", "[proxy]\njournal_max_days = -2\n" + MINIMAL,
     ["proxy.journal_max_days", "greater than 0", "-2"]),
    ("negative journal_wire_kb", "[proxy]\njournal_wire_kb = -1\n" + MINIMAL,
     ["proxy.journal_wire_kb", "at least 0", "-1"]),
    ("zero max_inflight_mb", "[proxy]\nmax_inflight_mb = 0\n" + MINIMAL,
     ["proxy.max_inflight_mb", "greater than 0"]),
    ("negative body_timeout", "[proxy]\nbody_timeout = -1\n" + MINIMAL,
     ["proxy.body_timeout", "greater than 0"]),
    ("zero record_text_kb", "[proxy]\nrecord_text_kb = 0\n" + MINIMAL,
     ["proxy.record_text_kb", "at least 1", "0"]),
    ("journal_max_mb as text", '[proxy]\njournal_max_mb = "50MB"\n' + MINIMAL,
     ["proxy.journal_max_mb", "must be int or float", "'50MB'"]),
    ("hedge_after not a quantile", '[watchdog]\nhedge_after = "fast"\n' + MINIMAL,
     ["watchdog.hedge_after", '"p95"', "'fast'"]),
    ("hedge_after p100", '[watchdog]\nhedge_after = "p100"\n' + MINIMAL,
     ["watchdog.hedge_after", "p1..p99"]),
    ("hedge_after zero", "[watchdog]\nhedge_after = 0\n" + MINIMAL,
     ["watchdog.hedge_after", "greater than 0"]),
    ("adaptive not a boolean", '[watchdog]\nadaptive = "yes"\n' + MINIMAL,
     ["watchdog.adaptive", "must be bool"]),
    ("negative floor", "[watchdog]\nfirst_token_floor = -1\n" + MINIMAL,
     ["watchdog.first_token_floor", "greater than 0"]),
    ("simulator jitter above 1", '[upstreams.s]\nkind = "simulator"\nttfb_jitter = 2\n'
     '[[routes]]\nmodel = "m"\ntargets = ["s"]\n', ["upstreams.s.ttfb_jitter", "between 0 and 1"]),
    ("unknown simulator fault", '[upstreams.s]\nkind = "simulator"\nfaults = ["gremlins"]\n'
     '[[routes]]\nmodel = "m"\ntargets = ["s"]\n', ["upstreams.s.faults", "gremlins"]),
]


@pytest.mark.parametrize(("text", "fragments"), [(t, f) for _, t, f in BAD],
                         ids=[name for name, _, _ in BAD])
def test_bad_config_names_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       text: str, fragments: list[str]) -> None:
    monkeypatch.delenv("SB_TEST_UNSET_KEY_VAR", raising=False)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message  # one line


def test_journal_limits_are_optional_numbers() -> None:
    assert parse_config(MINIMAL, check_env=False).proxy.journal_max_mb is None
    config = parse_config("[proxy]\njournal_max_mb = 500\njournal_max_days = 0.5\n" + MINIMAL,
                          check_env=False)
    assert (config.proxy.journal_max_mb, config.proxy.journal_max_days) == (500.0, 0.5)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_key_variable_is_allowed_when_not_checking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # `switchboard opencode-config` needs no secrets.
    monkeypatch.delenv("SB_TEST_UNSET_KEY_VAR", raising=False)
    text = MINIMAL.replace('kind = "openai"', 'kind = "openai"\napi_key_env = "SB_TEST_UNSET_KEY_VAR"')
    assert parse_config(text, check_env=False).upstreams["up"].api_key() is None


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    env = {**os.environ, **(env_extra or {})}
    env.pop("SB_TEST_UNSET_KEY_VAR", None)
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("text", "fragment"), [
    ("[proxy]\nport = 70000\n" + MINIMAL, "proxy.port"),
    (MINIMAL.replace('"up:real"', '"nope:real"'), "routes[0].targets"),
    ("[proxy\n", "line 1"),
], ids=["bad port", "unknown upstream", "invalid toml"])
def test_serve_with_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = run_cli("serve", "--config", str(path), "--port", "0")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and fragment in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_serve_with_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    done = run_cli("serve", "--config", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "not found" in lines[0]


def test_serve_with_unopenable_journal_exits_2(tmp_path: Path) -> None:
    # The journal path is a directory: nothing may start half-configured.
    journal = tmp_path / "journal-dir"
    journal.mkdir()
    path = tmp_path / "c.toml"
    path.write_text(f'[proxy]\njournal = "{journal}"\n' + MINIMAL)
    done = run_cli("serve", "--config", str(path), "--port", "0")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(journal) in lines[0], done.stderr
