"""Continuous batching: many requests decoded together, each joining and leaving when it likes.

One thread owns the model. Between decode steps it admits waiting requests into free places of
the batch: a new request's prompt is encoded alone (a forward pass into its place of the shared
KV cache), its first token is picked from that pass, and from the next step on it is one row of
the batch. A step decodes one token for every running request at once (`GPT2.decode_step`, each
row at its own position), picks each row's next token with its own settings
(`sampling.SamplingBatch`) and hands it to the request's `Stream`; a request that ends (a stop
string, <|endoftext|>, max_tokens, cancelled) leaves the batch at once, and its place is free for
the next one.

The KV cache is allocated once, for `max_batch` sequences of the whole context. The running
requests always sit in its first rows: when one leaves, the last row moves into its place (one
copy of that row's filled part), so a step reads a view of the first rows and of the positions
the longest request has reached, never the whole storage.

Streams deliver to threads (`for event in stream`, blocking) and to asyncio (`async for event in
stream`, woken from the engine's thread through the consumer's loop: no thread waits per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import torch

from gpt2es_cli.errors import TokenizerError, first_line
from gpt2es_cli.model import GPT2
from gpt2es_cli.serve.sampling import SamplingBatch, SamplingParams, logprobs, uniforms
from gpt2es_cli.tokenizer import StreamDecoder, Tokenizer

__all__ = ["Engine", "EngineClosed", "EngineStats", "Finished", "QueueFull", "SamplingParams", "Stream", "TokenEvent"]

SPAN_STEP = 32
"""A step attends to the positions the longest running request has reached, rounded up to this."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token.

    The logprobs are the model's own: its log-softmax at temperature 1 over the logits as they
    came out of it, before temperature, penalties, top-k or top-p (as OpenAI reports them).
    """

    token_id: int
    text: str
    """The text it adds: '' while a character is incomplete (UTF-8) or while the text may be the
    start of a stop string; the held-back text comes out with a later token once resolved."""
    logprob: float | None
    """Of this token (None unless the request asked for logprobs)."""
    top_logprobs: tuple[tuple[str, float], ...] | None
    """The k most likely tokens as (token text, logprob), most likely first (None without logprobs)."""
    token: str = ""
    """How this token reads on its own (Tokenizer.token_strings: part of a character shows as its bytes, <0xC3>)."""


@dataclass(frozen=True)
class Finished:
    """The last item of every stream."""

    reason: str
    """"stop" (<|endoftext|> or a stop string), "length" (max_tokens), "cancelled", or "error"."""
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated (TokenEvents sent; a final <|endoftext|> is not one)."""
    first_token_seconds: float | None
    """From submit to the first token picked (None when none was)."""
    seconds: float
    """From submit to the end."""
    text: str = ""
    """Text no token carried: what was held back (a possible start of a stop string, or an
    incomplete character) when the stream ended at <|endoftext|>. Usually ''."""
    error: str | None = None
    """What went wrong, with reason "error"."""


@dataclass(frozen=True)
class EngineStats:
    running: int
    """Requests in the batch now."""
    waiting: int
    """Requests waiting for a place."""
    max_batch: int
    max_queue: int
    tokens_generated: int
    """New tokens, all requests together, since the engine started."""
    steps: int
    """Decode steps run (each decodes a token for every running request)."""
    prefills: int
    """Prompts encoded (one per admitted request)."""
    finished: int
    """Requests ended, for any reason."""
    closed: bool
    error: str | None
    """Why the engine's thread stopped, when it failed."""


class QueueFull(Exception):
    """`submit` while max_queue requests already wait for a place."""


class EngineClosed(RuntimeError):
    """`submit` after `close` (or after the engine's thread failed)."""


class Stream:
    """The tokens of one request as they come: TokenEvents, then one Finished.

    Iterate it from a thread (`for item in stream`, blocking) or from asyncio (`async for item in
    stream`). Leaving either iteration early (break, an exception, a cancelled task) cancels the
    request, as does `cancel()`.
    """

    def __init__(self, wake: Callable[[], None]):
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: deque[TokenEvent | Finished] = deque()
        self._end: Finished | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._wake = wake
        self.cancelled = False
        """Set by `cancel`: the engine ends the request at its next step."""

    def cancel(self) -> None:
        """End the request (a client went away): its place in the batch is freed at the next step."""
        self.cancelled = True
        self._wake()

    @property
    def finished(self) -> Finished | None:
        """The Finished, once the engine has sent it (even if not read yet)."""
        return self._end

    def _put(self, item: TokenEvent | Finished) -> None:
        """From the engine's thread: queue an item and wake whoever waits. Nothing after a Finished."""
        with self._lock:
            if self._end is not None:
                return
            if isinstance(item, Finished):
                self._end = item
            self._items.append(item)
            self._ready.notify()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, event = waiter
            with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody listens
                loop.call_soon_threadsafe(event.set)

    def get(self, timeout: float | None = None) -> TokenEvent | Finished:
        """The next item, waiting at most `timeout` seconds (TimeoutError past it). After the
        Finished has been read, it is returned again."""
        with self._lock:
            if not self._items and self._end is not None:
                return self._end
            if not self._ready.wait_for(lambda: self._items, timeout):
                raise TimeoutError(f"no token within {timeout} s")
            return self._items.popleft()

    def __iter__(self) -> Iterator[TokenEvent | Finished]:
        done = False
        try:
            while not done:
                item = self.get()
                done = isinstance(item, Finished)
                yield item
        finally:
            if not done:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[TokenEvent | Finished]:
        return self._async_items()

    async def _async_items(self) -> AsyncIterator[TokenEvent | Finished]:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        done = False
        try:
            while not done:
                with self._lock:
                    item = self._items.popleft() if self._items else None
                    if item is None:
                        event.clear()
                        self._waiter = (loop, event)  # _put sets the event through the loop
                if item is None:
                    await event.wait()
                    continue
                done = isinstance(item, Finished)
                yield item
        finally:
            if not done:
                self.cancel()


class _StopStrings:
    """Holds back text that may be the start of a stop string, and cuts the text before one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.held = ""

    def feed(self, text: str, final: bool) -> tuple[str, bool]:
        """Add new text; return what may go out now, and whether a stop string was reached."""
        if not self.stops:
            return text, False
        buf = self.held + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return buf[: min(found)], True
        keep = 0
        if not final:  # the longest tail that a stop string starts with waits for the next token
            keep = next((k for k in range(min(len(buf), self.longest - 1), 0, -1)
                         if any(s.startswith(buf[-k:]) for s in self.stops)), 0)
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False


class _Request:
    """A request's state while it waits or runs (owned by the engine's thread once admitted)."""

    def __init__(self, stream: Stream, prompt: list[int], prompt_tokens: int, params: SamplingParams,
                 tokenizer: Tokenizer):
        self.stream = stream
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.decoder = StreamDecoder(tokenizer)
        self.stops = _StopStrings(params.stop)
        self.submitted = time.perf_counter()
        self.first_token: float | None = None
        self.length = 0
        """Positions of the KV cache it has filled."""
        self.generated = 0
        self.rest = ""
        self.done = False


class Engine:
    """Decodes the requests given to `submit` in one batch, on one thread (`start`), to `close`.

    `max_batch` requests run at once, `max_queue` more may wait for a place. Each request has
    the whole context (the model's `n_positions`, or `context` positions for sinusoidal and rope
    models): its prompt and max_tokens must fit in it. `autocast` (a context manager) wraps every
    forward pass, for a float32 model; a model cast or quantized by `quantize.prepare_for_inference`
    needs none. The model is used for inference only (eval mode), on `device` (moved there when
    it is elsewhere; default: where it is).
    """

    def __init__(self, model: GPT2, tokenizer: Tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 device: torch.device | None = None, autocast: contextlib.AbstractContextManager | None = None,
                 context: int | None = None):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, not {max_batch} and {max_queue}")
        if device is not None and model.wte.weight.device != torch.device(device):
            model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.wte.weight.device
        self.max_batch, self.max_queue = max_batch, max_queue
        self.vocab_size = model.config.vocab_size
        self.eos_id = tokenizer.eos_id
        self._autocast = autocast or contextlib.nullcontext()
        self._cache = model.new_cache(max_batch, context)  # (max_batch, nh, context, hs) per layer
        self.context = self._cache.capacity
        """Positions each request has: its prompt and max_tokens must fit."""
        with torch.inference_mode(), self._autocast:  # the dtype the keys come in
            block = model.h[0]
            like = block.attn.c_attn(block.ln_1(model.wte(torch.zeros(1, 1, dtype=torch.long, device=self.device))))
        self._cache.allocate(like)
        # Each row's state; rows 0..running-1 are the running requests, in self._rows' order.
        self._inputs = torch.zeros(max_batch, 1, dtype=torch.long, device=self.device)  # the token each row feeds next
        self._positions = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # where it goes
        self._drawn = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # tokens drawn so far
        # Each row's uniform numbers, one per token it may draw (float64; MPS has no float64).
        draw_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._uniforms = torch.zeros(max_batch, self.context, dtype=draw_dtype, device=self.device)
        self._seen: torch.Tensor | None = None  # (max_batch, V) bool, once a request has a repetition penalty
        self._counts: torch.Tensor | None = None  # (max_batch, V) float32, once one has presence/frequency
        self._rows: list[_Request] = []
        self._batch: SamplingBatch | None = None  # the rows' settings, rebuilt when the batch changes
        self._token_texts: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[_Request] = deque()
        self._live: set[_Request] = set()
        self._closing = False
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self.tokens_generated = self.steps = self.prefills = self.finished = 0

    # --- the public side (any thread) -------------------------------------------------------------
    def start(self) -> None:
        """Start the decoding thread (once)."""
        with self._lock:
            if self._closing:
                raise EngineClosed("the engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gpt2es-engine", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request (running or waiting: each stream ends with Finished("cancelled"))
        and stop the thread, waiting for it at most `timeout` seconds. Nothing is left hanging."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._end_all("cancelled")  # what the thread did not end: never started, or still in a step

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Stream:
        """Queue a request; its tokens come through the returned Stream. An empty prompt starts
        from <|endoftext|> (as a document does). Raises ValueError for bad settings or a prompt
        that does not fit, QueueFull when max_queue requests wait already, EngineClosed after close."""
        prompt = [int(t) for t in prompt_ids]
        found = params.problems()
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            found.append(f"token ids must be in 0..{self.vocab_size - 1}: {bad[:5]} are not")
        if not found and len(prompt) + params.max_tokens > self.context:
            found.append(f"the prompt ({len(prompt)} tokens) and max_tokens ({params.max_tokens}) exceed the "
                         f"context of {self.context} tokens: at most {self.context - len(prompt)} new tokens fit")
        if found:
            raise ValueError("; ".join(found))
        stream = Stream(self._wake)
        request = _Request(stream, prompt or [self.eos_id], len(prompt), params, self.tokenizer)
        with self._wakeup:
            if self._closing:
                raise EngineClosed(f"the engine stopped: {self._failed}" if self._failed else "the engine is closed")
            free = self.max_batch - len(self._rows)
            if len(self._waiting) - free >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests wait already (at most {self.max_queue}): "
                                "try again later")
            self._waiting.append(request)
            self._live.add(request)
            self._wakeup.notify()
        return stream

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting)
        running = sum(not r.done for r in list(self._rows))  # an ended one may not have left its row yet
        return EngineStats(running=running, waiting=waiting, max_batch=self.max_batch,
                           max_queue=self.max_queue, tokens_generated=self.tokens_generated, steps=self.steps,
                           prefills=self.prefills, finished=self.finished, closed=self._closing, error=self._failed)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    # --- the decoding thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._round():
                    pass
        except BaseException as e:  # a fault of the loop itself: fail every stream, hang none
            self._failed = f"{type(e).__name__}: {first_line(e)}"
            with self._lock:
                self._closing = True
            self._end_all("error", self._failed)
        finally:
            self._end_all("cancelled")

    def _round(self) -> bool:
        """Admit what fits, drop what was cancelled, run one step; False once closing."""
        with self._wakeup:
            while not self._closing and not self._rows and not self._waiting:
                self._wakeup.wait()
            if self._closing:
                return False
            cancelled = [r for r in self._waiting if r.stream.cancelled]
            for r in cancelled:
                self._waiting.remove(r)
            free = min(len(self._waiting), self.max_batch - len(self._rows))
            admitted = [self._waiting.popleft() for _ in range(free)]
        for request in cancelled:
            self._finish(request, "cancelled")
        for request in admitted:
            if request.stream.cancelled:
                self._finish(request, "cancelled")
            else:
                self._admit(request)
        gone = [i for i, r in enumerate(self._rows) if r.stream.cancelled]
        for i in gone:
            self._finish(self._rows[i], "cancelled")
        self._retire(gone)
        if self._rows:
            self._step()
        return True

    def _admit(self, request: _Request) -> None:
        """Encode a new request's prompt into the next free row, pick its first token; it joins the batch."""
        row = len(self._rows)
        try:
            with self._autocast:
                idx = torch.tensor([request.prompt], dtype=torch.long, device=self.device)  # (1, P)
                logits = self.model(idx, self._cache.rows(row, row + 1), last_only=True)[:, -1, :]  # (1, V)
            self.prefills += 1
            request.length = len(request.prompt)
            self._positions[row] = request.length
            self._drawn[row] = 0
            settings = request.params
            if settings.repetition_penalty != 1.0:
                self._seen = self._seen if self._seen is not None else self._table(torch.bool)
                self._seen[row] = False
                self._seen[row, idx[0]] = True
            if settings.presence_penalty or settings.frequency_penalty:
                self._counts = self._counts if self._counts is not None else self._table(torch.float32)
                self._counts[row] = 0
            if settings.temperature != 0:
                generator = torch.Generator(device=self.device)
                if request.params.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(request.params.seed)
                draws = uniforms(request.params.max_tokens, generator, self._uniforms.dtype)
                self._uniforms[row, : request.params.max_tokens] = draws
            batch = SamplingBatch([settings], self.vocab_size, self.device)
            self._rows.append(request)
            self._batch = None
            ended = self._advance(slice(row, row + 1), [request], logits, batch)
        except Exception as e:  # this request's fault (or the model's): it fails, the others go on
            if self._rows and self._rows[-1] is request:
                self._rows.pop()
            self._finish(request, "error", f"{type(e).__name__}: {first_line(e)}")
            return
        self._retire([row] if ended[0] else [])

    def _step(self) -> None:
        """One token for every running request."""
        n = len(self._rows)
        if self._batch is None:
            self._batch = SamplingBatch([r.params for r in self._rows], self.vocab_size, self.device)
        longest = max(r.length for r in self._rows) + 1  # the positions this step reads, its own included
        view = self._cache.rows(0, n, min(self.context, -(-longest // SPAN_STEP) * SPAN_STEP))
        try:
            with self._autocast:
                logits = self.model.decode_step(self._inputs[:n], self._positions[:n], view)  # (n, V)
            self.steps += 1
            self._positions[:n] += 1
            for r in self._rows:
                r.length += 1
            ended = self._advance(slice(0, n), self._rows, logits, self._batch)
        except Exception as e:  # the batch is lost: fail its requests, keep serving the others
            message = f"{type(e).__name__}: {first_line(e)}"
            for r in self._rows:
                self._finish(r, "error", message)
            self._rows.clear()
            self._batch = None
            return
        self._retire([i for i, e in enumerate(ended) if e])

    def _advance(self, rows: slice, requests: list[_Request], logits: torch.Tensor,
                 batch: SamplingBatch) -> list[bool]:
        """Pick the next token of `rows` from their logits (r, V), feed it to them, send it to their
        streams; return which requests ended."""
        raw = logits.float()
        seen = self._seen[rows] if batch.needs_seen else None
        counts = self._counts[rows] if batch.needs_counts else None
        draws = None
        if not batch.all_greedy:
            draws = self._uniforms[rows].gather(1, self._drawn[rows, None])[:, 0]  # (r,): this step's draw
        tokens = batch.pick(batch.penalize(raw, seen, counts), draws)  # (r,)
        self._inputs[rows, 0] = tokens
        self._drawn[rows] += 1
        if self._seen is not None:
            self._seen[rows].scatter_(1, tokens[:, None], True)
        if self._counts is not None:
            self._counts[rows].scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=torch.float32))
        wanted = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        chosen, top = {}, {}
        if wanted:
            at = torch.tensor(wanted, device=self.device) if len(wanted) < len(requests) else slice(None)
            values, alternatives = logprobs(raw[at], tokens[at], max(requests[i].params.logprobs for i in wanted))
            chosen, top = dict(zip(wanted, values, strict=True)), dict(zip(wanted, alternatives, strict=True))
        ended = []
        for i, (request, token) in enumerate(zip(requests, tokens.tolist(), strict=True)):
            ended.append(self._deliver(request, token, chosen.get(i), top.get(i)))
        return ended

    def _deliver(self, request: _Request, token: int, logprob: float | None,
                 top: list[tuple[int, float]] | None) -> bool:
        """Send one token to its stream (its text UTF-8 whole, stop strings resolved); True when the request ends."""
        if request.first_token is None:
            request.first_token = time.perf_counter() - request.submitted
        params = request.params
        if params.stop_at_eos and token == self.eos_id:
            request.rest, _ = request.stops.feed(request.decoder.flush(), final=True)
            self._finish(request, "stop")
            return True
        request.generated += 1
        self.tokens_generated += 1
        final = request.generated >= params.max_tokens
        text = request.decoder.push(token)
        if final:
            text += request.decoder.flush()
        text, stopped = request.stops.feed(text, final)
        alternatives = None
        if top is not None:
            alternatives = tuple((self._token_text(t), lp) for t, lp in top[: params.logprobs])
        request.stream._put(TokenEvent(token, text, logprob, alternatives, self._token_text(token)))
        if stopped or final:
            self._finish(request, "stop" if stopped else "length")
            return True
        return False

    def _finish(self, request: _Request, reason: str, error: str | None = None) -> None:
        """Send a request's Finished (once: close() and the thread may both try)."""
        with self._lock:
            if request.done:
                return
            request.done = True
            self._live.discard(request)
            self.finished += 1
        request.stream._put(Finished(reason, request.prompt_tokens, request.generated, request.first_token,
                                     time.perf_counter() - request.submitted, request.rest, error))

    def _retire(self, rows: list[int]) -> None:
        """Take ended rows out of the batch: the last row moves into each freed place."""
        for row in sorted(rows, reverse=True):
            last = len(self._rows) - 1
            if row != last:
                moved = self._rows[last]
                self._move(last, row, moved.length)
                self._rows[row] = moved
            self._rows.pop()
            self._batch = None

    def _move(self, src: int, dst: int, length: int) -> None:
        """Copy row src's state (its filled cache positions, its inputs and tables) into row dst."""
        for keys, values in zip(self._cache.keys, self._cache.values, strict=True):
            keys[dst, :, :length] = keys[src, :, :length]
            values[dst, :, :length] = values[src, :, :length]
        for table in (self._inputs, self._positions, self._drawn, self._uniforms, self._seen, self._counts):
            if table is not None:
                table[dst] = table[src]

    def _table(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.max_batch, self.vocab_size, dtype=dtype, device=self.device)

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            try:
                text = self.tokenizer.token_strings([token])[0]
            except TokenizerError:  # an id past the tokenizer's vocabulary (a padded output layer)
                text = ""
            self._token_texts[token] = text
        return text

    def _end_all(self, reason: str, error: str | None = None) -> None:
        """End every request not ended yet (waiting, running, or between the two)."""
        with self._lock:
            requests = list(self._live)
            self._waiting.clear()
        for request in requests:
            self._finish(request, reason, error)
