"""The ASGI side of the server: what FastAPI's own pieces would get wrong for a token stream.

Plain ASGI middleware (Starlette's BaseHTTPMiddleware would buffer a stream and hide a client's
disconnect) that counts requests and checks the API key; a server-sent-events response that
notices a client leaving at once; and `merged`, the tokens of several engine streams as they come.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt2es_cli.serve.engine import Finished, Stream, TokenEvent
from gpt2es_cli.serve.metrics import Metrics
from gpt2es_cli.serve.schemas import APIError


def dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, headers=headers, media_type="application/json")


class CountRequests:
    """Count every response by endpoint and status in `metrics`; 499 for a client that left before any
    answer. `endpoints` are counted by their path, the paths under /v1/models/ as /v1/models, the rest
    as 'other' (so that a scan of random paths cannot grow the metrics without end)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: tuple[str, ...]):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        path = scope["path"]
        endpoint = path if path in self.endpoints else "/v1/models" if path.startswith("/v1/models/") else "other"
        try:
            await self.app(scope, receive, sending)
        except BaseException:
            self.metrics.request(endpoint, status[0] if status else 500)
            raise
        self.metrics.request(endpoint, status[0] if status else 499)


class RequireKey:
    """401 on the paths starting with one of `paths` unless `Authorization: Bearer <key>` carries the key
    (compared in constant time, so the time of a refusal tells nothing about how much of a guess was right)."""

    def __init__(self, app: ASGIApp, key: str, paths: tuple[str, ...]):
        self.app = app
        self.key = key.encode("utf-8")
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = given.partition(b" ")
        if not given:
            error = APIError(401, "no API key given: send it as the header Authorization: Bearer <key>",
                             code="invalid_api_key")
        elif scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.key):
            error = APIError(401, "incorrect API key", code="invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        response = json_response(error.body(), error.status, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


async def until_disconnect(receive: Receive) -> None:
    """Return when the client has gone (the server's receive says http.disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """Server-sent events from an async iterator of byte chunks. It watches the connection while it
    streams: when the client goes, the iterator is closed at once (its `finally` cancels the engine
    streams), without waiting for the next token to find the socket closed."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes]):
        # Not Response.__init__: it would declare a Content-Length (of an empty body).
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def body() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        streaming = asyncio.ensure_future(body())
        watching = asyncio.ensure_future(until_disconnect(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
            if streaming.done():
                streaming.result()  # raise what the stream raised (a send to a closed socket: gone too)
        except OSError:
            pass  # the client went away while a chunk was being written
        finally:
            for task in (streaming, watching):
                task.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)
            await self.events.aclose()  # type: ignore[attr-defined]


async def merged(streams: list[Stream]) -> AsyncIterator[list[tuple[int, TokenEvent | Finished]]]:
    """The items of several engine streams as they come, each with its stream's index, in batches of
    all that have come meanwhile (when the server falls behind, a client gets several tokens in one
    write instead of one write each); ends when every stream has ended. Closing it early cancels the
    streams that have not finished."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: Stream) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item))
        except Exception as e:  # an engine failure ends the request with a 500, not a hang
            queue.put_nowait((i, e))
        queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    open_streams = set(range(len(streams)))
    try:
        while open_streams:
            came = [await queue.get()]
            while not queue.empty():
                came.append(queue.get_nowait())
            batch = []
            for i, item in came:
                if item is None:
                    open_streams.discard(i)
                elif isinstance(item, Exception):
                    raise item
                else:
                    batch.append((i, item))
            if batch:
                yield batch
    finally:
        for i in open_streams:
            streams[i].cancel()
        for task in tasks:
            task.cancel()
