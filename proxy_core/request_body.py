"""A request's body as the handler reads it: within the size limit, its content coding undone.

A client may compress what it sends (`Content-Encoding: gzip`). aiohttp's
server can undo that itself, but what it cannot undo it answers before any
handler runs: a plain-text 400 for a corrupt stream, and for `br` or `zstd`
(optional packages aiohttp would need) a 400 that asks the person to install
them into Switchboard, each logged with a traceback. And a few hundred bytes
of gzip inflate to the body limit (`[proxy] max_body_mb`) before the limit is
checked.

So Switchboard's server leaves bodies as sent (`auto_decompress=False`,
`app.py`) and they are decoded here, with zlib: `gzip` (`x-gzip`, several
members too) and `deflate` (zlib-wrapped, or raw as some clients send it),
in the reverse of the order they were applied. Inflating stops one byte past
the limit, so a small compressed body never takes more memory than a plain
one may. What cannot be decoded is a 400 and an unknown or unsupported
coding a 415, both in OpenAI's error shape; `identity` is no coding.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from .body_budget import Share
from .errors import ClientRequestError

#: zlib's `wbits` for gzip's framing (the only one with several members), zlib's, none.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS
#: The framings tried for each coding, in order: `deflate` as many clients send it,
#: without zlib's header, too.
_CODINGS = {"gzip": (_GZIP_WBITS,), "x-gzip": (_GZIP_WBITS,),
            "deflate": (_ZLIB_WBITS, _RAW_WBITS)}


def body_too_large(limit: int) -> ClientRequestError:
    return ClientRequestError(
        f"request body too large (limit {limit} bytes; raise [proxy] max_body_mb)",
        status=413, code="request_too_large")


#: The request's share of the body budget, set by the front door (`app.py`).
BODY_SHARE = web.RequestKey("body_share", Share)
#: Seconds a body may go without a byte arriving (`[proxy] body_timeout`), set on the app.
BODY_TIMEOUT = web.AppKey("body_timeout", float)
DEFAULT_BODY_TIMEOUT = 30.0


def expected_size(request: web.Request) -> int:
    """The bytes `request`'s body will hold once read and decoded, as far as the headers
    tell: its `Content-Length` if it is sent plainly, else the body limit (a compressed
    or chunked body's size is known only once read); 0 for no body, or for one that
    `read_body` refuses unread."""
    if not request.body_exists:
        return 0
    limit = request.client_max_size
    length = request.content_length
    if length is not None and length > limit:
        return 0
    if length is not None and request.headers.get("Content-Encoding") is None:
        return length
    return limit


async def read_body(request: web.Request) -> bytes:
    """The body of `request`, decoded; `ClientRequestError` (413, 415, 400) if it can't be.

    A `Content-Length` over the limit is refused before anything is read. The
    request's share of the body budget (`BODY_SHARE`) shrinks to the body read.
    """
    limit = request.client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise body_too_large(limit)
    raw = await _read_while_arriving(request, request.config_dict.get(BODY_TIMEOUT,
                                                                      DEFAULT_BODY_TIMEOUT))
    coding = request.headers.get("Content-Encoding")
    body = raw if coding is None else decode(raw, coding, limit)  # None: nearly every request
    share = request.get(BODY_SHARE)
    if share is not None:
        share.shrink(len(body))
    return body


async def _read_while_arriving(request: web.Request, stall: float) -> bytes:
    """The body as sent (`_read_all`), given up with a 408 once `stall` seconds (and at
    most half as long again) pass without a byte.

    A client that stops sending its body half way (hung, or never meaning to
    finish) would otherwise keep its handler, and its share of the body budget,
    for as long as it keeps the connection open. A body that keeps arriving,
    however slowly, is read to its end. Two timers per body read: a check of the
    bytes received every half `stall` that moves the deadline on, beside the
    deadline's own; none when the whole body has arrived already (most small
    requests come in one piece with their headers), as nothing can stall then.
    """
    content = request.content
    if content.is_eof():
        return await _read_all(request)
    loop = asyncio.get_running_loop()
    seen = content.total_bytes
    check: asyncio.TimerHandle | None = None
    try:
        async with asyncio.timeout(stall) as deadline:
            def arriving() -> None:
                nonlocal seen, check
                if content.total_bytes != seen:
                    seen = content.total_bytes
                    deadline.reschedule(loop.time() + stall)
                check = loop.call_later(stall / 2, arriving)

            check = loop.call_later(stall / 2, arriving)
            return await _read_all(request)
    except TimeoutError:
        raise ClientRequestError(
            f"no byte of the request body arrived for {stall:g} s; send the whole body "
            f"(raise [proxy] body_timeout for a slow link)", status=408,
            code="request_timeout") from None
    finally:
        if check is not None:
            check.cancel()


async def _read_all(request: web.Request) -> bytes:
    """The body's pieces as they arrive, joined once; `body_too_large` past the limit.

    Not `request.read()`: that grows a bytearray piece by piece and copies it
    into bytes at the end, two or three copies of the body where this makes
    one. At agent sizes that measured 0.17 -> 0.10 ms at 500 KB and 0.44 ->
    0.36 ms at 1 MB from the handler's start to the body in hand
    (`bench/bench_first_byte.py`, "read the body"). The stream's buffer
    limit is raised to the body limit as `request.read()` raises it, so
    aiohttp does not pause the socket while a large body is read.
    """
    content, limit = request.content, request.client_max_size
    content.set_read_chunk_size(limit)  # no pausing the socket below the limit
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)  # a body that came in one piece is that piece, uncopied


def decode(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """`raw` with the codings named in a `Content-Encoding` header undone, last applied first.

    Never returns (or builds) more than `limit` bytes.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    for coding in reversed(codings):
        if coding in ("", "identity"):
            continue
        framings = _CODINGS.get(coding)
        if framings is None:
            raise ClientRequestError(
                f"Content-Encoding {coding!r} is not supported: send the body uncompressed, "
                f"or as gzip or deflate", status=415, code="unsupported_content_encoding")
        for wbits in framings:
            try:
                raw = _inflate(raw, wbits, limit)
                break
            except zlib.error as exc:
                error = exc
        else:
            raise ClientRequestError(f"the request body is not valid {coding}: {error}",
                                     code="invalid_content_encoding")
    return raw


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """Inflate every member of `data` (gzip allows several), at most `limit` bytes."""
    out: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        piece = inflater.decompress(data, limit + 1 - size)
        size += len(piece)
        if size > limit or inflater.unconsumed_tail:
            raise body_too_large(limit)
        out.append(piece)
        if not inflater.eof:
            raise zlib.error("the compressed body ends early")
        data = inflater.unused_data
        if not data:
            return b"".join(out)
        if wbits != _GZIP_WBITS:
            raise zlib.error("data after the end of the compressed body")
