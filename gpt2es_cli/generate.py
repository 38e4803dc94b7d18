"""Autoregressive sampling with a KV cache: temperature, top-k, top-p, repetition penalty.

`Generation` is a token-by-token iterator over a batch of samples of one prompt, so the CLI can
stream; `generate` runs one to the end and returns the new token ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import replace

import torch

from gpt2es_cli.config import GenerationConfig
from gpt2es_cli.model import GPT2


def next_tokens(
    logits: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick the next token (B,) from logits (B, V), in float32: repetition penalty, then greedy,
    or temperature, top-k and top-p (nucleus) sampling.

    With top-k the softmax, the nucleus cut and the draw run on the k best candidates only, not
    on the whole vocabulary: the same distribution at a fraction of the cost per token.
    """
    logits = logits.float()
    if seen is not None and config.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    top_k = config.top_k if config.top_k and config.top_k < logits.size(-1) else None
    top_p = config.top_p if config.top_p is not None and config.top_p < 1.0 else None
    if top_k is None and top_p is None:
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
    if top_k is not None:
        values, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), most likely first
    else:
        values, ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    if top_p is not None:
        probs = values.softmax(dim=-1)
        # Drop a candidate when the ones before it already cover p (the first one always stays).
        values = values.masked_fill(probs.cumsum(dim=-1) - probs > top_p, float("-inf"))
    choice = torch.multinomial(values.softmax(dim=-1), 1, generator=generator)  # (B, 1)
    return ids.gather(-1, choice).squeeze(1)


def compiled_decode_step(model: GPT2):
    """`model.decode_step` through torch.compile: traced once for fixed shapes (no recompiles as the
    sequence grows), with CUDA graphs on a GPU (mode reduce-overhead). Compiling takes seconds to a
    minute, on the first step."""
    mode = "reduce-overhead" if model.wte.weight.device.type == "cuda" else None
    return torch.compile(model.decode_step, mode=mode, dynamic=False)


def truncate_prompt(prompt_ids: list[int], context: int) -> tuple[list[int], int]:
    """Keep the last `context` tokens of a prompt; return them and how many were dropped."""
    if len(prompt_ids) <= context:
        return list(prompt_ids), 0
    return list(prompt_ids[-context:]), len(prompt_ids) - context


class Generation:
    """Samples `config.num_samples` (or `num_samples`) continuations of one prompt as one batch, a step at a time.

    Iterating yields, at each step, the list of new token ids (one per sample; None for a
    sample that already ended). `samples` holds each sample's new ids (without <|endoftext|>),
    `finished` whether each ended at <|endoftext|> (or at one of `stop_ids`, e.g. a chat
    template's end-of-turn token, which is left out too).

    With `use_cache` the prompt is encoded once and each step feeds one token; past the context
    the cache is refilled from the last three quarters of the context (positions are learned,
    so the window must be re-encoded when it slides). Without it every step re-encodes the last
    `n_positions` tokens: slower, and the reference the cached path is tested against.

    For speed, give it a model cast or quantized by `quantize.prepare_for_inference` (logits
    are still processed in float32); `autocast` is for a float32 model in training. `compile`
    (with the cache) runs each one-token step through `compiled_decode_step`: `GPT2.decode_step`
    compiled once for fixed shapes (CUDA graphs on a GPU); the prompt and a refill past the
    context still go through the plain forward pass.
    """

    def __init__(
        self,
        model: GPT2,
        prompt_ids: list[int],
        config: GenerationConfig,
        eos_id: int,
        num_samples: int | None = None,
        use_cache: bool = True,
        autocast: contextlib.AbstractContextManager | None = None,
        compile: bool = False,
        stop_ids: Collection[int] = (),
    ):
        if num_samples is not None:
            config = replace(config, num_samples=num_samples)
        config.validate()
        num_samples = config.num_samples
        self.model = model
        self.config = config
        self.eos_id = eos_id
        self.stop_ids = {eos_id, *stop_ids}
        self.num_samples = num_samples
        self.use_cache = use_cache
        self.autocast = autocast or contextlib.nullcontext()
        self.decode = compiled_decode_step(model) if compile and use_cache else None
        self.context = model.config.n_positions
        # An empty prompt starts from <|endoftext|>, as GPT-2 was trained to begin documents.
        self.prompt_ids, self.truncated = truncate_prompt(list(prompt_ids) or [eos_id], self.context)
        self.samples: list[list[int]] = [[] for _ in range(num_samples)]
        self.finished = [False] * num_samples
        device = model.wte.weight.device
        self.device = device
        self.generator = torch.Generator(device=device)
        if config.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(config.seed)

    def _next_logits(self, tokens: torch.Tensor, cache, fresh: int) -> torch.Tensor:
        """Logits for the next token given all tokens (B, T); `fresh` = tokens not yet encoded."""
        if cache is None:
            return self.model(tokens[:, -self.context :], last_only=True)[:, -1, :]
        if cache.length + fresh > self.context:
            keep = max(1, self.context * 3 // 4)
            cache.reset()
            return self.model(tokens[:, -keep:], cache, last_only=True)[:, -1, :]
        if self.decode is not None and fresh == 1 and cache.length > 0:
            pos = torch.full((1,), cache.length, dtype=torch.long, device=tokens.device)
            logits = self.decode(tokens[:, -1:].clone(), pos, cache)  # clone: fixed strides, whatever the prompt
            cache.length += 1
            return logits
        return self.model(tokens[:, -fresh:], cache, last_only=True)[:, -1, :]

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[int | None]]:
        B, n_prompt = self.num_samples, len(self.prompt_ids)
        stop_at_eos = self.config.stop_at_eos
        # Every token so far, preallocated: step i writes column n_prompt + i (no cat per step).
        tokens = torch.empty(B, n_prompt + self.config.max_new_tokens, dtype=torch.long, device=self.device)
        tokens[:, :n_prompt] = torch.tensor(self.prompt_ids, dtype=torch.long, device=self.device)
        length = n_prompt
        seen = None
        if self.config.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.model.config.vocab_size, dtype=torch.bool, device=self.device)
            seen[:, tokens[0, :n_prompt]] = True
        cache = self.model.new_cache(B) if self.use_cache else None
        ended = None  # (B,) bool, set once a sample has ended: it is then fed <|endoftext|>
        fresh = n_prompt
        for _ in range(self.config.max_new_tokens):
            with self.autocast:
                logits = self._next_logits(tokens[:, :length], cache, fresh)  # (B, V)
            nxt = next_tokens(logits, self.config, self.generator, seen)  # (B,)
            if ended is not None:
                nxt = nxt.masked_fill(ended, self.eos_id)
            tokens[:, length] = nxt
            length, fresh = length + 1, 1
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            step: list[int | None] = []
            newly_ended = False
            for i, t in enumerate(nxt.tolist()):
                if self.finished[i]:
                    step.append(None)
                elif stop_at_eos and t in self.stop_ids:
                    self.finished[i] = newly_ended = True
                    step.append(None)
                else:
                    self.samples[i].append(t)
                    step.append(t)
            yield step
            if newly_ended:
                if all(self.finished):
                    return
                ended = torch.tensor(self.finished, device=self.device)


def generate(
    model: GPT2,
    prompt_ids: list[int],
    config: GenerationConfig,
    eos_id: int,
    num_samples: int | None = None,
    use_cache: bool = True,
    autocast: contextlib.AbstractContextManager | None = None,
    compile: bool = False,
) -> list[list[int]]:
    """Run a Generation to the end; return each sample's new token ids (see `Generation`)."""
    gen = Generation(model, prompt_ids, config, eos_id, num_samples=num_samples, use_cache=use_cache,
                     autocast=autocast, compile=compile)
    for _ in gen:
        pass
    return gen.samples
