"""The real opencode client, through `switchboard serve`, to a `kind = "bedrock"` upstream.

The Bedrock acceptance runs: `switchboard serve` talks Converse through the
real boto3 client (bearer token from `AWS_BEARER_TOKEN_BEDROCK`, over TLS)
to a standalone simulator's Converse face, which speaks Bedrock's binary
event stream and checks the token. One `opencode run` finishes the whole
10-tool-call task — on clean streams, and on streams where most steps leak
Kimi's tool-call tokens into the Converse text and stop with `end_turn`
(seed 000) — and the turns API and the journal account for every model call.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from opencode_runner import run_opencode
from serve_runner import REPO, Served, check_session, start_serve

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."
MODEL = "moonshotai.kimi-k2.5"
TOKEN = "ABSKopencode-e2e-bedrock-key-0123456789"
TLS = Path(__file__).parent / "fixtures" / "tls"
MARKERS = ("<|tool_call", "<|tool_calls_section", "<function=")


@dataclass
class ConverseHost:
    """A `python -m proxy_core.simulator` process serving the Converse face over HTTPS."""

    process: subprocess.Popen[str]
    origin: str

    def stats(self) -> dict[str, object]:
        trust = ssl.create_default_context(cafile=TLS / "localhost-cert.pem")
        return httpx.get(f"{self.origin}/simulator/stats", verify=trust, timeout=5).json()


@pytest.fixture
def bedrock_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The AWS environment `switchboard serve` and the simulator inherit: a bearer token only."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", TOKEN)


@pytest.fixture
def converse_host(bedrock_env: None) -> Iterator[Callable[..., ConverseHost]]:
    started: list[ConverseHost] = []

    def start(*args: str) -> ConverseHost:
        command = [sys.executable, "-m", "proxy_core.simulator", "--port", "0", "--models", MODEL,
                   "--tls-cert", str(TLS / "localhost-cert.pem"), "--tls-key", str(TLS / "localhost-key.pem"),
                   "--bearer-token-env", "AWS_BEARER_TOKEN_BEDROCK", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(https://\S+)/v1", line)
        assert match, f"simulator did not start: {line!r}"
        started.append(ConverseHost(process, match.group(1)))
        return started[-1]

    yield start
    for host in started:
        host.process.send_signal(signal.SIGTERM)
        host.process.wait(timeout=10)


@pytest.fixture
def serve_bedrock(tmp_path: Path) -> Iterator[Callable[[ConverseHost], Served]]:
    started: list[Served] = []

    def start(host: ConverseHost) -> Served:
        started.append(start_serve(f"""
[proxy]
journal = "{{journal}}"
[upstreams.converse]
kind = "bedrock"
region = "us-east-1"
endpoint_url = "{host.origin}"
ca_bundle = "{TLS / 'localhost-cert.pem'}"
[[routes]]
model = "kimi-k2.5"
targets = ["converse:{MODEL}"]
repairs = "auto"
""", tmp_path))
        return started[-1]

    yield start
    for served in started:
        assert served.stop() == 0, "serve stops cleanly on SIGTERM"


def test_clean_converse_streams_whole_task_in_one_run(converse_host, serve_bedrock,
                                                      tmp_path: Path) -> None:
    host = converse_host("--seed", "1", "--reasoning")
    served = serve_bedrock(host)
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    assert all([a["target"] for a in t["attempts"]] == [f"converse:{MODEL}"] for t in turns)
    assert all(c["upstream_id"].startswith("functions.") for t in turns for c in t["tool_calls"])
    stats = host.stats()
    assert stats["tool_calls_emitted"] == 10 and stats["finals"] == 1, json.dumps(stats)[:600]
    assert "finish=tool_calls" in served.log.read_text()


def test_leaky_converse_streams_whole_task_in_one_run(converse_host, serve_bedrock,
                                                      tmp_path: Path) -> None:
    """Seed 000 on Converse at rate 0.9 (opencode alone stops after 0-3 calls)."""
    host = converse_host("--faults", "leak", "--fault-rate", "0.9", "--seed", "3")
    served = serve_bedrock(host)
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    repaired = [r for t in turns for r in t["repairs"] if r["kind"] == "leaked_tool_call"]
    leaks = host.stats()["fault_counts"].get("leak", 0)
    assert len(repaired) == leaks >= 5, "most steps leaked, and every leak was repaired"
    assert not any(m in t["text"] + t["reasoning"] for t in turns for m in MARKERS)
