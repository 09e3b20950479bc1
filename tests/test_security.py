"""Security: loopback by default (and a loud warning otherwise), no driving from web pages,
secrets redacted everywhere they could surface, and no upstream chosen by the client.

Secrets are planted — in the upstream key, the client's credentials, the
upstream's URL, the conversation and the model's answers — and then looked
for in every place Switchboard writes or shows: the journal file, its log,
the control API and the live event stream.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fault_support import ServeProcess
from fuzz_support import BackgroundProxy, openai_error, upstream_key_env
from proxy_core.config import BUILTIN_CONFIG, ProxySettings, parse_config
from proxy_core.secrets import REDACTED, Redactor
from proxy_core.serve import exposure_warning, is_loopback
from support import (
    API, CHAT_PATH, UPSTREAM_KEY_ENV, FakeUpstream, api_turns, chat_body, content_of,
    finish_chunk, openai_config, reasoning_chunk, sse, stream_chat, text_chunk, tool_call_chunk,
    wait_until,
)

# -- where it listens --------------------------------------------------------------------


def test_loopback_is_the_default_everywhere() -> None:
    assert ProxySettings().host == "127.0.0.1"
    assert parse_config(BUILTIN_CONFIG).proxy.host == "127.0.0.1"
    minimal = '[upstreams.s]\nkind = "simulator"\n[[routes]]\nmodel = "*"\ntargets = ["s"]\n'
    assert parse_config(minimal).proxy.host == "127.0.0.1"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False),
    ("10.0.0.1", False), ("example.com", False), ("my-laptop", False),
])
def test_which_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    warning = exposure_warning(host, 4141)
    assert (warning is None) is loopback
    if warning:
        assert host.strip("[]") in warning and "4141" in warning and "127.0.0.1" in warning


def minimal_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[proxy]\njournal = "{tmp_path / "j.sqlite3"}"\n'
                    '[upstreams.s]\nkind = "simulator"\n[[routes]]\nmodel = "*"\ntargets = ["s"]\n')
    return path


@pytest.mark.parametrize(("args", "warned"), [((), False), (("--host", "0.0.0.0"), True)],
                         ids=["default", "all-interfaces"])
async def test_serve_warns_loudly_when_told_to_listen_beyond_loopback(
        tmp_path: Path, args: tuple[str, ...], warned: bool) -> None:
    served = await ServeProcess.start(minimal_config(tmp_path), extra_args=args)
    try:
        expected_host = "0.0.0.0" if warned else "127.0.0.1"
        assert served.base_url.startswith(f"http://{expected_host}:")
        assert await served.terminate() == 0
    finally:
        await served.kill()
    assert ("WARNING: Switchboard is listening on 0.0.0.0" in served.log) is warned, served.log


# -- requests a web page could make ------------------------------------------------------

@pytest.fixture(scope="module")
def bg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundProxy]:
    with upstream_key_env():
        proxy = BackgroundProxy(openai_config, tmp_path_factory.mktemp("sec") / "j.sqlite3")
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.stop()


HOSTNAME = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}",
                         fullmatch=True)
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=HOSTNAME | st.sampled_from(["127.0.0.1", "localhost", "127.0.0.1.nip.io",
                                        "localhost.evil.example", "0.0.0.0"]),
       port=st.sampled_from(["", ":4141", ":80"]),
       path=st.sampled_from([API + "/turns", API + "/health", API + "/events", CHAT_PATH,
                             "/v1/models"]))
def test_a_host_header_that_is_not_loopback_is_refused(bg: BackgroundProxy, host: str,
                                                       port: str, path: str) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1."""
    before = bg.upstream_requests()
    with httpx.Client(timeout=5) as client:
        method = "POST" if path == CHAT_PATH else "GET"
        with client.stream(method, bg.base_url + path, headers={"Host": host + port},
                           json=chat_body() if method == "POST" else None) as response:
            status = response.status_code
            if status == 403:
                response.read()
                assert openai_error(response)["code"] == "forbidden"
    assert (status == 403) is (host not in LOOPBACK_NAMES), (host, status)
    if status == 403:
        assert bg.upstream_requests() == before


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=st.sampled_from(["http", "https", "chrome-extension", "file"]),
       host=HOSTNAME | st.sampled_from(["127.0.0.1", "localhost", "127.0.0.1.evil.example"]),
       port=st.sampled_from(["", ":3000", ":4141"]))
def test_an_origin_that_is_not_loopback_is_refused(bg: BackgroundProxy, scheme: str, host: str,
                                                   port: str) -> None:
    """A page's script (fetch, a form post) always sends its Origin."""
    before = bg.upstream_requests()
    with httpx.Client(timeout=5) as client:
        response = client.post(bg.base_url + CHAT_PATH, json=chat_body(),
                               headers={"Origin": f"{scheme}://{host}{port}"})
    refused = host not in LOOPBACK_NAMES
    assert (response.status_code == 403) is refused, (host, response.status_code)
    if refused:
        assert openai_error(response)["code"] == "forbidden"
        assert bg.upstream_requests() == before


@pytest.mark.parametrize("origin", ["null", "http://[::1]:3000"], ids=["null", "ipv6-loopback"])
def test_special_origins(bg: BackgroundProxy, origin: str) -> None:
    with httpx.Client(timeout=5) as client:
        response = client.get(bg.base_url + API + "/health", headers={"Origin": origin})
    assert response.status_code == (403 if origin == "null" else 200)


# -- no upstream chosen by the client ------------------------------------------------------

async def test_the_client_cannot_choose_the_upstream(
        make_fake_upstream: Any, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    real = await make_fake_upstream()
    decoy = await make_fake_upstream()
    proxy = await proxy_factory(openai_config(real.base_url))
    wildcard = await proxy_factory(openai_config(real.base_url, model="*"))  # forwards any name
    tries = [
        (proxy, chat_body(api_base=decoy.base_url, base_url=decoy.base_url, url=decoy.base_url,
                          extra_body={"base_url": decoy.base_url}), {}),
        (proxy, chat_body(), {"X-Forwarded-Host": f"127.0.0.1:{decoy.port}",
                              "X-Upstream-Url": decoy.base_url, "Forwarded": f"host=127.0.0.1:{decoy.port}"}),
        (wildcard, chat_body(model=decoy.base_url), {}),
        (wildcard, chat_body(model=f"decoy@127.0.0.1:{decoy.port}"), {}),
        (wildcard, chat_body(model=f"../../127.0.0.1:{decoy.port}/v1"), {}),
    ]
    for target, body, headers in tries:
        response, payloads = await stream_chat(client, target.base_url, body, headers=headers)
        assert response.status_code == 200 and content_of(payloads) == "Hello world"
    assert len(real.chat_requests) == len(tries)
    assert decoy.requests == []
    for seen in real.chat_requests:  # and always on the configured path
        assert seen.path == "/v1/chat/completions"
    # A model name that is not routed gets a 404, not a guess.
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(model=decoy.base_url))
    assert response.status_code == 404


# -- secrets ------------------------------------------------------------------------------

UPSTREAM_SECRET = "upstream-PLANTED-key-4242424242"  # no known shape: only its value gives it away
CLIENT_BEARER = "client-PLANTED-bearer-1234567890"
CLIENT_X_API_KEY = "xkey-PLANTED-5555555555"
URL_PASSWORD = "urlpass-PLANTED-77777"
PASTED = "sk-PLANTEDpastedintochat0000000000"
PLANTED = (UPSTREAM_SECRET, CLIENT_BEARER, CLIENT_X_API_KEY, URL_PASSWORD, PASTED, "PLANTED")


def assert_clean(where: str, blob: bytes | str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for secret in PLANTED:
        assert secret not in text, f"{secret!r} leaked into {where}: ...{text[text.find(secret) - 200:text.find(secret) + 60]}"


def echo_everything() -> Any:
    """A careless host: it streams back the key it got, as text, reasoning and tool arguments,
    then fails quoting it."""

    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        got = request.headers.get("Authorization", "").partition(" ")[2]  # without "Bearer"
        return await sse(
            reasoning_chunk(f"the key is {got}"),
            text_chunk(f"I was called with {got} and you said {PASTED}"),
            tool_call_chunk(0, id="call_1", name="bash",
                            arguments=json.dumps({"cmd": f"echo {got} {PASTED}"})),
            finish_chunk("tool_calls"))(request, fake)

    return reply


def echo_error() -> Any:
    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        got = request.headers.get("Authorization", "").partition(" ")[2]
        return web.json_response({"error": {"message": f"bad key {got} at {request.url}"}},
                                 status=401)

    return reply


async def test_planted_secrets_surface_nowhere(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    journal = tmp_path / "journal.sqlite3"
    url_with_password = fake_upstream.base_url.replace("http://", f"http://switchboard:{URL_PASSWORD}@")
    config = tmp_path / "config.toml"
    config.write_text(openai_config(url_with_password, max_attempts=1).replace(
        "port = 0", f"port = 0\njournal = {json.dumps(str(journal))}", 1))
    served = await ServeProcess.start(config, {UPSTREAM_KEY_ENV: UPSTREAM_SECRET})
    events = bytearray()
    client_headers = {"Authorization": f"Bearer {CLIENT_BEARER}", "X-Api-Key": CLIENT_X_API_KEY}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            async def watch() -> None:
                try:
                    async with client.stream("GET", served.base_url + API + "/events") as r:
                        async for piece in r.aiter_bytes():
                            events.extend(piece)
                except httpx.HTTPError:
                    pass

            watcher = asyncio.create_task(watch())
            await wait_until(lambda: events, what="the event stream")
            fake_upstream.script(echo_everything(), echo_error())
            body = chat_body(f"my key is {PASTED}, keep it safe")
            response, payloads = await stream_chat(client, served.base_url, body,
                                                   headers=client_headers)
            assert response.status_code == 200
            response = await client.post(served.base_url + CHAT_PATH, json=chat_body(),
                                         headers=client_headers)
            assert response.status_code == 401
            assert_clean("the error the client got", response.text)
            # The planting worked: the upstream got the key (through a URL with a password).
            assert fake_upstream.chat_requests[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
            turns = await api_turns(client, served.base_url)
            assert [t["state"] for t in turns] == ["finished", "failed"]
            api_text = (await client.get(served.base_url + API + "/turns")).text
            details = [(await client.get(f"{served.base_url}{API}/turns/{t['id']}")).text
                       for t in turns]
            health = (await client.get(served.base_url + API + "/health")).text
            await wait_until(lambda: b"TurnFailed" in events, what="the events")
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert await served.terminate() == 0
    finally:
        await served.kill()
    files = b"".join(p.read_bytes() for p in tmp_path.glob("journal.sqlite3*"))
    assert REDACTED.encode() in files and b"keep it safe" in files  # the check can see
    assert b"\"call_id\": \"call_1\"" in events and REDACTED.encode() in events
    assert_clean("the journal files", files)
    assert_clean("the serve log", served.log)
    assert_clean("GET /turns", api_text)
    assert_clean("GET /health", health)
    for detail in details:
        assert_clean("GET /turns/{id}", detail)
    assert_clean("the event stream", bytes(events))


SECRET = st.text(string.ascii_letters + string.digits + "-_.+/=", min_size=6, max_size=40)


@settings(max_examples=400, deadline=None)
@given(secrets=st.lists(SECRET, min_size=1, max_size=3), before=st.text(max_size=40),
       after=st.text(max_size=40), twice=st.booleans())
def test_the_redactor_removes_every_known_secret(secrets: list[str], before: str, after: str,
                                                 twice: bool) -> None:
    for secret in secrets:  # a secret inside the marker itself cannot be told apart
        assume(secret not in REDACTED)
    redactor = Redactor()
    for secret in secrets:
        redactor.add(secret)
    text = before + " ".join(secrets * (2 if twice else 1)) + after
    cleaned = redactor(text)
    for secret in secrets:
        assert secret not in cleaned
    assert redactor(cleaned) == cleaned  # nothing left to find


@settings(max_examples=200, deadline=None)
@given(token=st.text(string.ascii_letters + string.digits + "._~+/=-", min_size=8, max_size=60),
       prefix=st.sampled_from(["Bearer ", "bearer  ", "Authorization: Bearer "]))
def test_bearer_tokens_are_redacted_whole(token: str, prefix: str) -> None:
    cleaned = Redactor()(f'{{"h": "{prefix}{token}"}} trailing')
    assert token not in cleaned and cleaned.endswith(" trailing")
    json.loads(cleaned.rsplit(" trailing", 1)[0])  # still valid JSON where it was JSON


@pytest.mark.parametrize("text", [
    "https://user:hunter2secret@example.com/v1",
    "GET /v1?api_key=hunter2secret&x=1",
    "wss://example.com/socket?token=hunter2secret",
    "sk-or-v1-hunter2secretaaaaaaaaaaaa",
    "AKIAIOSFODNN7EXAMPLE hunter2secret",
])
def test_secret_shapes_are_redacted_without_being_known(text: str) -> None:
    cleaned = Redactor()(text.replace(" hunter2secret", ""))
    assert "hunter2secret" not in cleaned and REDACTED in cleaned
