"""The HTTP API: OpenAI's /v1/completions over the batching engine, and the playground page.

`create_app(engine, tokenizer, model_name, context=...)` returns a FastAPI app:

- GET /v1/models, GET /v1/models/{id}: the one model served, with its context (`max_model_len`).
- POST /v1/completions: OpenAI's legacy completions API (prompt as text or token ids, or lists of
  them; n; stop; seed; stream as server-sent events ending in `data: [DONE]`; logprobs with
  OpenAI's tokens, token_logprobs, top_logprobs and text_offset; echo; presence and frequency
  penalties; usage, in a stream with stream_options.include_usage). Extra fields: top_k,
  repetition_penalty, ignore_eos. Each choice is one engine stream; choice i of a request belongs
  to prompt i // n, as in OpenAI's API.
- POST /v1/chat/completions: a 400 that says this is a base model (it continues text, it has no
  chat format) and to use /v1/completions.
- POST /tokenize {"prompt"} and POST /detokenize {"tokens"}: the tokenizer, for counting and
  showing tokens.
- GET /health; GET /metrics (Prometheus).
- GET /: the playground (static/).

Errors answer in OpenAI's shape with their status: 400 for a malformed body or a bad field, 401
for a missing or wrong API key (when one is set), 404 for an unknown model or path, 413 for a body
over `max_body_bytes` (refused before any of it is parsed), 429 with Retry-After when the queue is
full. A prompt longer than the context is a 400 that says how long is allowed; max_tokens past the
context is cut to what the context leaves (finish_reason "length" says so). A client that goes away
mid-request cancels its streams at once, which frees their places in the batch.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from gpt2es_cli.errors import first_line
from gpt2es_cli.model import GPT2
from gpt2es_cli.serve.asgi import CountRequests, EventStream, RequireKey, dumps, json_response, merged, until_disconnect
from gpt2es_cli.serve.engine import Engine, EngineClosed, Finished, QueueFull, SamplingParams, Stream, TokenEvent
from gpt2es_cli.serve.metrics import CONTENT_TYPE, Metrics
from gpt2es_cli.serve.schemas import (
    APIError,
    CompletionRequest,
    Prompt,
    completion_request,
    detokenize_request,
    error_body,
    tokenize_request,
)
from gpt2es_cli.serve.scoring import prompt_logprobs
from gpt2es_cli.tokenizer import StreamDecoder, Tokenizer

STATIC = Path(__file__).resolve().parent / "static"
"""The playground page and its files, served at /."""
MAX_BODY_BYTES = 1 << 20
"""The largest request body read (1 MiB: hundreds of times a prompt that fills a 1024-token context)."""
PROTECTED = ("/v1/", "/tokenize", "/detokenize")
"""The paths an API key guards; /, /health and /metrics stay open."""
ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/health",
             "/metrics", "/")
"""The paths counted by name in the metrics (every other one counts as 'other')."""
OFF_THREAD_BYTES = 16_384
"""Texts longer than this are tokenized on a worker thread, so that the server keeps answering meanwhile."""
NO_LOGPROB = -9999.0
"""What a logprob of minus infinity is written as (JSON has no infinity; OpenAI writes -9999)."""


def _finite(x: float) -> float:
    return x if math.isfinite(x) else NO_LOGPROB


# --- completions --------------------------------------------------------------------------------------


@dataclass
class _Prompt:
    """A prompt ready for the engine."""

    text: str
    """What `echo` shows: the prompt as given (or its token ids decoded)."""
    ids: list[int]
    """What the model reads (<|endoftext|> alone for an empty prompt, as a document starts in training)."""
    shown: list[int]
    """The tokens `echo` scores and shows (none for an empty prompt)."""


Piece = tuple[str, float | None, dict[str, float] | None]
"""A piece of a choice's text: the text, its token's logprob and its top alternatives (with logprobs)."""


@dataclass
class _Choice:
    """One completion being built: its text and, with logprobs, OpenAI's four parallel lists."""

    index: int
    prompt: int
    with_logprobs: bool
    parts: list[str] = field(default_factory=list)
    offset: int = 0
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    finished: Finished | None = None

    def add(self, pieces: Sequence[Piece]) -> tuple[str, dict[str, Any] | None]:
        """Append pieces; return their text and their logprobs object (None without logprobs)."""
        start = len(self.tokens)
        for text, logprob, top in pieces:
            self.parts.append(text)
            if self.with_logprobs:
                self.tokens.append(text)
                self.token_logprobs.append(None if logprob is None else _finite(logprob))
                self.top_logprobs.append(top)
                self.text_offset.append(self.offset)
            self.offset += len(text)
        text = "".join(p[0] for p in pieces)
        if not self.with_logprobs:
            return text, None
        return text, {"tokens": self.tokens[start:], "token_logprobs": self.token_logprobs[start:],
                      "top_logprobs": self.top_logprobs[start:], "text_offset": self.text_offset[start:]}

    def end(self, done: Finished) -> None:
        """The stream's end; the text it still held (e.g. a possible start of a stop string at <|endoftext|>)
        joins the last token's."""
        self.finished = done
        if done.text:
            self.parts.append(done.text)
            self.offset += len(done.text)
            if self.with_logprobs and self.tokens:
                self.tokens[-1] += done.text

    def as_json(self, reason: str | None = None) -> dict[str, Any]:
        logprobs = None
        if self.with_logprobs:
            logprobs = {"tokens": self.tokens, "token_logprobs": self.token_logprobs,
                        "top_logprobs": self.top_logprobs, "text_offset": self.text_offset}
        return {"text": "".join(self.parts), "index": self.index, "logprobs": logprobs,
                "finish_reason": reason or (self.finished.reason if self.finished else "length")}


class _Service:
    """What the routes do; one per app."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, model_name: str, context: int,
                 model: GPT2 | None, max_body_bytes: int, metrics: Metrics):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.context = context
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.created = int(time.time())
        # A token stands for at most this many characters (so at most 4x as many UTF-8 bytes): a text with
        # more bytes than context x 4 x this cannot fit, and is refused without being tokenized.
        self.longest_token = max(len(t) for t in tokenizer.backend.get_vocab())
        self._pieces: dict[int, str] = {}

    # --- helpers ---
    def piece(self, token_id: int) -> str:
        """How a token reads on its own, as the keys of top_logprobs (part of a character: its bytes, <0xC3>)."""
        text = self._pieces.get(token_id)
        if text is None:
            text = self._pieces[token_id] = self.tokenizer.token_strings([token_id])[0]
        return text

    def card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "gpt2es",
                "max_model_len": self.context}

    async def read_json(self, request: Request) -> Any:
        """The body as JSON; 413 past max_body_bytes (before any of it is parsed), 400 when it is not JSON."""
        too_big = APIError(413, f"the request body is larger than {self.max_body_bytes} bytes: send a shorter "
                                f"prompt ({self.model_name} reads at most {self.context} tokens)",
                           code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise too_big
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise APIError(400, f"the request body is not valid JSON: {first_line(e)}", code="invalid_json") from None

    async def encode(self, text: str) -> list[int]:
        if len(text) > OFF_THREAD_BYTES:
            return await asyncio.to_thread(self.tokenizer.encode, text)
        return self.tokenizer.encode(text)

    async def prepare(self, prompt: Prompt, new_tokens: int) -> _Prompt:
        """Tokenize a prompt, checking that it leaves room for a new token (for none with max_tokens 0)."""
        room = self.context - (1 if new_tokens > 0 else 0)
        if prompt.text is not None:
            if len(prompt.text.encode("utf-8")) > room * self.longest_token * 4:
                raise self._too_long(None, room)
            text, ids = prompt.text, await self.encode(prompt.text)
        else:
            ids = prompt.ids or []
            text = self.tokenizer.decode(ids)
        if len(ids) > room:
            raise self._too_long(len(ids), room)
        if not ids:
            return _Prompt(text, [self.tokenizer.eos_id], [])
        return _Prompt(text, ids, ids)

    def _too_long(self, tokens: int | None, room: int) -> APIError:
        size = f"{tokens} tokens" if tokens is not None else "far longer than that"
        return APIError(400, f"the prompt is {size}; {self.model_name} reads at most {self.context} tokens, prompt "
                             f"and completion together: shorten the prompt to {room} tokens at most",
                        param="prompt", code="context_length_exceeded")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {self.model_name!r} "
                                "(see /v1/models)", param="model", code="model_not_found")

    async def echo(self, prompt: _Prompt, req: CompletionRequest) -> list[Piece]:
        """What `echo` puts before a completion: the prompt's text, or with logprobs each of its tokens
        scored (the first has no logprob: nothing comes before it)."""
        if req.logprobs is None:
            return [(prompt.text, None, None)] if prompt.text else []
        if not prompt.shown:
            return []
        if self.model is None:
            raise APIError(400, "echo with logprobs is not available on this server", param="echo")
        chosen, alternatives = await asyncio.to_thread(prompt_logprobs, self.model, prompt.shown, req.logprobs)
        decoder = StreamDecoder(self.tokenizer)
        texts = [decoder.push(t) for t in prompt.shown]
        texts[-1] += decoder.flush()
        return [(text, logprob, None if logprob is None else {self.piece(t): lp for t, lp in top})
                for text, logprob, top in zip(texts, chosen, alternatives)]

    def event_piece(self, event: TokenEvent) -> Piece:
        top = None if event.top_logprobs is None else {text: _finite(lp) for text, lp in event.top_logprobs}
        return event.text, event.logprob, top

    def submit(self, req: CompletionRequest, prompts: list[_Prompt], choices: list[_Choice]) -> list[Stream]:
        """One engine stream per choice; 429 (nothing left submitted) when the queue is full."""
        streams: list[Stream] = []
        try:
            for c in choices:
                p = prompts[c.prompt]
                seed = None if req.seed is None else (req.seed + c.index) % 2**63  # choice i: seed + i
                params = SamplingParams(
                    max_tokens=min(req.max_tokens, self.context - len(p.ids)), temperature=req.temperature,
                    top_p=req.top_p, top_k=req.top_k, repetition_penalty=req.repetition_penalty,
                    presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty, stop=req.stop,
                    seed=seed, logprobs=req.logprobs, stop_at_eos=not req.ignore_eos)
                streams.append(self.engine.submit(p.ids, params))
        except (QueueFull, EngineClosed, ValueError) as e:
            for s in streams:
                s.cancel()
            if isinstance(e, QueueFull):
                raise APIError(429, "the server is busy: every place in its queue is taken; retry in a moment",
                               type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
            if isinstance(e, EngineClosed):
                raise APIError(503, f"the server is not generating: {first_line(e)}", type="server_error",
                               code="engine_closed") from None
            raise APIError(400, first_line(e)) from None
        return streams

    def finished(self, choice: _Choice, done: Finished) -> None:
        choice.end(done)
        self.metrics.finished(done.reason, done.first_token_seconds, done.seconds)

    @staticmethod
    def failure(choices: list[_Choice]) -> APIError | None:
        """The error to answer when a stream ended without finishing: the server stopping, or a fault."""
        for c in choices:
            done = c.finished
            if done is not None and done.reason == "cancelled":
                return APIError(503, "the server is shutting down: the request was cancelled", type="server_error",
                                code="shutting_down")
            if done is not None and done.reason == "error":
                return APIError(500, f"generation failed: {done.error}", type="server_error", code="engine_error")
        return None

    def usage(self, prompts: list[_Prompt], choices: list[_Choice]) -> dict[str, int]:
        """OpenAI's usage: each prompt's tokens once (whatever n), every choice's new tokens."""
        prompt_tokens = sum(len(p.ids) for p in prompts)
        completion_tokens = sum(c.finished.completion_tokens for c in choices if c.finished is not None)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def head(self) -> dict[str, Any]:
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name}

    # --- routes ---
    async def completions(self, request: Request) -> Response:
        req = completion_request(await self.read_json(request), self.tokenizer.vocab_size)
        self.check_model(req.model)
        prompts = [await self.prepare(p, req.max_tokens) for p in req.prompts]
        echoes = [await self.echo(p, req) if req.echo else [] for p in prompts]
        choices = [_Choice(i, i // req.n, req.logprobs is not None) for i in range(len(prompts) * req.n)]
        if req.max_tokens == 0:  # nothing to generate: the prompt alone (scored, with echo and logprobs)
            self.metrics.prompt_tokens.inc(sum(len(p.ids) for p in prompts))
            for c in choices:
                c.add(echoes[c.prompt])
            return json_response({**self.head(), "choices": [c.as_json("length") for c in choices],
                                  "usage": self.usage(prompts, choices)})
        streams = self.submit(req, prompts, choices)
        self.metrics.prompt_tokens.inc(sum(len(p.ids) for p in prompts))
        if req.stream:
            return EventStream(self.sse(req, prompts, choices, echoes, streams))
        for c in choices:
            c.add(echoes[c.prompt])
        work = asyncio.ensure_future(self.collect(choices, streams))
        gone = asyncio.ensure_future(until_disconnect(request.receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                task.cancel()
            await asyncio.gather(work, gone, return_exceptions=True)
            for s in streams:
                s.cancel()  # nothing for those that finished; frees the places of the others at once
        if work.cancelled():
            return Response(status_code=499)  # the client has gone: nobody reads this
        work.result()
        failed = self.failure(choices)
        if failed is not None:
            raise failed
        return json_response({**self.head(), "choices": [c.as_json() for c in choices],
                              "usage": self.usage(prompts, choices)})

    async def collect(self, choices: list[_Choice], streams: list[Stream]) -> None:
        events = merged(streams)
        try:
            async for batch in events:
                for i, item in batch:
                    if isinstance(item, Finished):
                        self.finished(choices[i], item)
                    else:
                        choices[i].add([self.event_piece(item)])
        finally:
            await events.aclose()
            self.left(choices)

    def left(self, choices: list[_Choice]) -> None:
        """Count the choices whose client went away before they ended (their streams are cancelled)."""
        for c in choices:
            if c.finished is None:
                self.metrics.completions.labels("cancelled").inc()

    async def sse(self, req: CompletionRequest, prompts: list[_Prompt], choices: list[_Choice],
                  echoes: list[list[Piece]], streams: list[Stream]) -> AsyncIterator[bytes]:
        """The stream of a completion: OpenAI's chunks (one choice each) as server-sent events, then
        the usage (with stream_options.include_usage), then [DONE]."""
        head = self.head()
        # Every chunk is the same object around its one choice: that object's JSON is written once, in two halves.
        before, _, after = dumps({**head, "choices": [0], **({"usage": None} if req.include_usage else {})}
                                 ).partition(b'"choices":[0]')  # no string can hold it: its quotes would be escaped

        def chunk(choice: dict[str, Any]) -> bytes:
            return b"data: " + before + b'"choices":[' + dumps(choice) + b"]" + after + b"\n\n"

        events = merged(streams)
        try:
            for c in choices:
                if echoes[c.prompt]:
                    text, logprobs = c.add(echoes[c.prompt])
                    yield chunk({"text": text, "index": c.index, "logprobs": logprobs, "finish_reason": None})
            async for batch in events:
                out = []
                for i, item in batch:
                    c = choices[i]
                    if isinstance(item, Finished):
                        self.finished(c, item)
                        failed = self.failure([c])
                        if failed is not None:  # the openai package raises an APIError for this event
                            yield b"".join(out) + b"data: " + dumps(failed.body()) + b"\n\n"
                            return
                        out.append(chunk({"text": item.text, "index": c.index, "logprobs": None,
                                          "finish_reason": item.reason}))
                    elif item.text or c.with_logprobs:
                        text, logprobs = c.add([self.event_piece(item)])
                        out.append(chunk({"text": text, "index": c.index, "logprobs": logprobs, "finish_reason": None}))
                if out:
                    yield b"".join(out)
            if req.include_usage:
                yield b"data: " + dumps({**head, "choices": [], "usage": self.usage(prompts, choices)}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except Exception as e:  # the status line has gone out: the error can only be an event
            message = f"internal error: {type(e).__name__}: {first_line(e)}"
            yield b"data: " + dumps(error_body(message, "server_error")) + b"\n\n"
        finally:
            await events.aclose()
            self.left(choices)

    async def models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [self.card()]})

    async def one_model(self, request: Request) -> Response:
        self.check_model(request.path_params["name"])
        return json_response(self.card())

    async def chat(self, request: Request) -> Response:
        raise APIError(400, f"{self.model_name} is a base model: it continues text and has no chat format. Send "
                            "the text to continue as the prompt of /v1/completions", code="unsupported_endpoint")

    async def tokenize(self, request: Request) -> Response:
        ids = await self.encode(tokenize_request(await self.read_json(request)))
        return json_response({"tokens": ids, "count": len(ids), "max_model_len": self.context,
                              "token_strs": self.tokenizer.token_strings(ids)})

    async def detokenize(self, request: Request) -> Response:
        ids = detokenize_request(await self.read_json(request), self.tokenizer.vocab_size)
        return json_response({"prompt": self.tokenizer.decode(ids)})

    async def health(self, request: Request) -> Response:
        stats = self.engine.stats()
        if stats.closed or stats.error:
            reason = f"the engine has stopped: {stats.error}" if stats.error else "the engine is closed"
            return json_response({"status": "error", "reason": reason}, 503)
        return json_response({"status": "ok", "running": stats.running, "waiting": stats.waiting})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


# --- the app ------------------------------------------------------------------------------------------


def create_app(engine: Engine, tokenizer: Tokenizer, model_name: str, *, context: int, api_key: str | None = None,
               cors_origins: Sequence[str] = (), model: GPT2 | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The API of `engine` (started and closed by the caller) as a FastAPI app.

    `context` is the most tokens a request may hold, prompt and completion together; `model` is the
    engine's model, for scoring prompts (echo with logprobs; without it such requests get a 400);
    `api_key` guards /v1/*, /tokenize and /detokenize; `cors_origins` are the web origins whose pages
    may call the API from a browser ("*": any).
    """
    metrics = Metrics(engine.stats)
    service = _Service(engine, tokenizer, model_name, context, model, max_body_bytes, metrics)
    app = FastAPI(title="gpt2es", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/v1/models", service.models, methods=["GET"])
    app.add_api_route("/v1/models/{name:path}", service.one_model, methods=["GET"])
    app.add_api_route("/v1/completions", service.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", service.chat, methods=["POST"])
    app.add_api_route("/tokenize", service.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", service.detokenize, methods=["POST"])
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route("/metrics", service.metrics_text, methods=["GET"])
    if STATIC.is_dir():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="playground")

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return json_response(error.body(), error.status, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        path, status, headers = request.url.path, error.status_code, dict(error.headers or {})
        allowed = sorted({m for r in app.routes if isinstance(r, APIRoute) and r.path_regex.match(path)
                          for m in r.methods or ()})
        if status == 404 and allowed:  # the playground's files, served at /, answered for an API path
            status, headers = 405, {**headers, "Allow": ", ".join(allowed)}
        if status == 404:
            message, code = f"no such path: {path} (the API is under /v1)", "not_found"
        elif status == 405:
            message, code = f"{request.method} is not allowed on {path}", "method_not_allowed"
        else:
            message, code = str(error.detail), None
        return json_response(error_body(message, code=code), status, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return json_response(error_body(f"invalid request: {first_line(error)}", code="invalid_value"), 400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> Response:
        return json_response(error_body(f"internal error: {type(error).__name__}: {first_line(error)}",
                                        "server_error"), 500)

    if api_key:
        app.add_middleware(RequireKey, key=api_key, paths=PROTECTED)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(CountRequests, metrics=metrics, endpoints=ENDPOINTS)
    return app
