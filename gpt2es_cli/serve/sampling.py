"""Picking the next token for a batch of sequences that each have their own sampling settings.

`gpt2es_cli.generate.next_tokens` samples a batch under one GenerationConfig with one generator;
the server's batch mixes requests: one greedy, one at temperature 0.7 with top-p 0.9, one seeded.
`SamplingBatch` holds each row's settings (a request's `SamplingParams`) as tensors, so a step
picks every row's token with a handful of tensor operations, whatever the mix, and no loop over
the rows:

- penalties, on the logits: the repetition penalty (CTRL-style, as `generate.next_tokens`: a
  logit of a token already in the text, prompt included, is divided by the penalty when positive,
  multiplied when negative), then OpenAI's presence and frequency penalties (the logit minus
  presence * (count > 0) minus frequency * count, counting the generated tokens);
- greedy rows (temperature 0) take the most likely token;
- the other rows divide by their temperature, keep their top-k and top-p (nucleus) candidates
  (the same cut as `generate.next_tokens`: drop a candidate once the ones before it cover p),
  and draw by inverse transform: the first candidate whose cumulative probability passes the
  row's uniform number. The uniform numbers come from each request's own seeded generator
  (`uniforms`), so a seeded request draws the same tokens alone or beside any others.

A row's draw depends only on its own settings: rows that keep every token draw from the whole
vocabulary in id order, rows with top-k or top-p from their candidates in order of likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

FIRST_CANDIDATES = 64
"""Tokens ranked first for a row that cuts by top-p alone (8 times more while its nucleus needs more)."""
MAX_LOGPROBS = 20
"""Alternatives a token may report at most (OpenAI's completions allow 5, its chat 20)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens (the fields of an OpenAI completion request)."""

    max_tokens: int
    """New tokens at most. The prompt and these must fit in the engine's context."""
    temperature: float = 1.0
    """0: greedy (always the most likely token)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens with probability >= p; 1 keeps all."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 keeps all."""
    repetition_penalty: float = 1.0
    """CTRL-style, as `gpt2es sample`: > 1 makes tokens already in the text (prompt included) less likely."""
    presence_penalty: float = 0.0
    """OpenAI's: each logit minus presence * (1 if the token was generated before)."""
    frequency_penalty: float = 0.0
    """OpenAI's: each logit minus frequency * (how often the token was generated before)."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text ends before the first one found (which is not included)."""
    seed: int | None = None
    """A generator of the request's own: the same seed gives the same text, alone or batched."""
    logprobs: int | None = None
    """None: none; k: each token's logprob and its k most likely alternatives (see engine.TokenEvent)."""
    stop_at_eos: bool = True
    """End at <|endoftext|> (False: keep going to max_tokens)."""

    def problems(self) -> list[str]:
        """Every problem with these settings, in words a user can act on (empty when valid)."""
        found = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            found.append(f"max_tokens must be a whole number >= 1, not {self.max_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature < math.inf):
            found.append(f"temperature must be >= 0, not {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            found.append(f"top_p must be in (0, 1], not {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            found.append(f"top_k must be a whole number >= 0, not {self.top_k!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and 0 < self.repetition_penalty < math.inf):
            found.append(f"repetition_penalty must be > 0, not {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                found.append(f"{name} must be a number, not {value!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            found.append(f"stop must be a tuple of non-empty strings, not {self.stop!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            found.append(f"seed must be a whole number, not {self.seed!r}")
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS):
            found.append(f"logprobs must be a whole number from 0 to {MAX_LOGPROBS}, not {self.logprobs!r}")
        return found

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def filtered(self, vocab_size: int) -> bool:
        """Whether top-k or top-p leaves out some of `vocab_size` tokens."""
        return 0 < self.top_k < vocab_size or self.top_p < 1.0


def uniforms(count: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`count` uniform numbers in [0, 1) from `generator`: one per token a request may draw."""
    return torch.rand(count, generator=generator, dtype=dtype, device=generator.device)


class SamplingBatch:
    """The sampling settings of the rows of a batch, as tensors on `device`: built once when the batch
    changes, used at every step until it changes again."""

    def __init__(self, rows: Sequence[SamplingParams], vocab_size: int, device: torch.device):
        self.n = len(rows)
        self.vocab_size = V = vocab_size
        greedy = [r.greedy for r in rows]
        self.all_greedy = all(greedy)
        self.greedy = torch.tensor(greedy, device=device) if any(greedy) else None  # (n,) bool
        plain = [i for i, r in enumerate(rows) if not r.greedy and not r.filtered(V)]
        filtered = [i for i, r in enumerate(rows) if not r.greedy and r.filtered(V)]
        self.plain = self._subset(plain, device)
        self.filtered = self._subset(filtered, device)
        # Greedy rows divide by 1: their logits stay as they are for argmax.
        self.temperature = column([r.temperature or 1.0 for r in rows], device)  # (n, 1)
        kept = [rows[i] for i in filtered]
        self.top_k = torch.tensor([r.top_k if 0 < r.top_k < V else V for r in kept], device=device)[:, None]  # (f, 1)
        # top_p 1 keeps every candidate: +inf, so that rounding in the cumulative sum never drops one.
        self.top_p = column([r.top_p if r.top_p < 1.0 else float("inf") for r in kept], device)  # (f, 1)
        self.has_top_k = self.top_k < V  # (f, 1): the others cut by top-p alone, over the whole vocabulary
        # Candidates to rank: the largest top-k; with a row that cuts by top-p alone, at least
        # FIRST_CANDIDATES, more while its nucleus does not fit in them (see _draw).
        ks = [r.top_k for r in kept if 0 < r.top_k < V]
        self.top_p_alone = len(ks) < len(kept)
        self.candidates = min(V, max(ks + [FIRST_CANDIDATES] * self.top_p_alone, default=V))
        self.repetition = None
        if any(r.repetition_penalty != 1.0 for r in rows):
            self.repetition = column([r.repetition_penalty for r in rows], device)
        self.presence = self.frequency = None
        if any(r.presence_penalty or r.frequency_penalty for r in rows):
            self.presence = column([r.presence_penalty for r in rows], device)
            self.frequency = column([r.frequency_penalty for r in rows], device)

    def _subset(self, rows: list[int], device: torch.device) -> torch.Tensor | slice | None:
        """Row indices as a tensor; a slice when they are all the rows (no gather); None when none."""
        if not rows:
            return None
        if len(rows) == self.n:
            return slice(None)
        return torch.tensor(rows, device=device)

    @property
    def needs_seen(self) -> bool:
        """Whether a row has a repetition penalty (and so needs the tokens seen so far)."""
        return self.repetition is not None

    @property
    def needs_counts(self) -> bool:
        """Whether a row has a presence or frequency penalty (and so needs the generated token counts)."""
        return self.presence is not None

    def penalize(self, logits: torch.Tensor, seen: torch.Tensor | None, counts: torch.Tensor | None) -> torch.Tensor:
        """logits (n, V) float32 with each row's penalties applied. `seen` (n, V) bool: the tokens in
        each row's text so far; `counts` (n, V) float32: how often each was generated."""
        if self.repetition is not None:
            penalised = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits = torch.where(seen, penalised, logits)
        if self.presence is not None:
            logits = logits - self.frequency * counts - self.presence * (counts > 0)
        return logits

    def pick(self, logits: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
        """The next token (n,) of each row from its penalised logits (n, V) float32, `draws` (n,)
        (float64) the rows' uniform numbers for this step (unused by greedy rows; None when all are)."""
        if self.all_greedy:
            return argmax(logits)
        tokens = argmax(logits) if self.greedy is not None else torch.empty(self.n, dtype=torch.long,
                                                                           device=logits.device)
        scaled = logits / self.temperature
        for rows, filtered in ((self.plain, False), (self.filtered, True)):
            if rows is None:
                continue
            picked = self._draw(scaled[rows], draws[rows], filtered)
            if isinstance(rows, slice):  # every row draws this way
                return picked
            tokens.index_copy_(0, rows, picked)
        return tokens

    def _draw(self, scaled: torch.Tensor, draws: torch.Tensor, filtered: bool) -> torch.Tensor:
        """Inverse-transform draws (r,) from scaled logits (r, V): over the whole vocabulary, or over
        each row's top-k / top-p candidates."""
        probs = scaled.softmax(dim=-1)  # (r, V)
        if not filtered:
            return _inverse_transform(probs, draws)
        ids = self._candidates(scaled, probs)  # (r, K), most likely first
        candidate = probs.gather(1, ids)  # (r, K): their probabilities over the whole vocabulary
        in_top_k = torch.arange(ids.size(-1), device=ids.device) < self.top_k  # (r, K)
        candidate = candidate.masked_fill(~in_top_k, 0.0)
        # As next_tokens: a row with top-k cuts its nucleus over its k candidates, one without over all V.
        candidate = candidate / torch.where(self.has_top_k, candidate.sum(dim=-1, keepdim=True), 1.0)
        # Drop a candidate when the ones before it already cover p (the first one always stays).
        candidate = candidate.masked_fill(candidate.cumsum(dim=-1) - candidate > self.top_p, 0.0)
        return ids.gather(-1, _inverse_transform(candidate, draws)[:, None]).squeeze(1)

    def _candidates(self, scaled: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The ids (r, K) of the most likely tokens of each row, most likely first: every row's top-k,
        and every top-p-alone row's whole nucleus. Ranking the whole vocabulary (a sort) is the slow
        part; a nucleus is usually far smaller, so the K best come first (topk), and more only while a
        row's nucleus does not fit in them."""
        k = self.candidates
        while k < self.vocab_size:
            ids = torch.topk(scaled, k, dim=-1).indices  # (r, k)
            if not self.top_p_alone:
                return ids
            covered = self.has_top_k | (probs.gather(1, ids).sum(dim=-1, keepdim=True) >= self.top_p)
            if bool(covered.all()):
                return ids
            k *= 8
        return torch.sort(scaled, dim=-1, descending=True).indices  # (r, V)


def column(values: list[float], device: torch.device) -> torch.Tensor:
    """One float32 value a row, as a column (n, 1) that broadcasts over the vocabulary."""
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row (the first on a tie, as argmax): max(dim) is the faster
    kernel on the CPU."""
    return logits.max(dim=-1).indices


def _inverse_transform(probs: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Index (r,) of the first entry of each row of probs (r, K) (not normalised; zeros are never
    drawn) whose cumulative sum passes draws (r,) (uniform in [0, 1)) times the row's total."""
    cdf = probs.to(draws.dtype).cumsum(dim=-1)  # (r, K), in float64 (the draws' dtype)
    return torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.size(-1) - 1)[:, 0]


def logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """The model's log-probabilities, over the logits (r, V) as they came out of it (temperature 1,
    no penalty): of each row's `tokens` (r,), and its `top` most likely tokens as (id, logprob),
    most likely first."""
    lp = logits.float().log_softmax(dim=-1)  # (r, V)
    chosen = lp.gather(1, tokens[:, None])[:, 0].tolist()
    if top <= 0:
        return chosen, [[] for _ in chosen]
    values, ids = lp.topk(min(top, lp.size(-1)), dim=-1)  # (r, top), most likely first
    return chosen, [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
