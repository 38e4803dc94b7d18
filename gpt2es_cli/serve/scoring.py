"""The log-probabilities of a prompt's own tokens, for `echo` with `logprobs` (OpenAI's way of
scoring a text: each token's logprob given the ones before it).

One forward pass over the prompt: the logits at position t score token t + 1. Like the engine's
logprobs, these are the model's log-softmax at temperature 1, before any sampling setting.
"""

from __future__ import annotations

import threading

import torch

from gpt2es_cli.model import GPT2

ROWS = 256
"""Positions turned into float32 log-probabilities at a time (a row is vocab_size floats)."""

_one_at_a_time = threading.Lock()  # a pass holds (T, vocab_size) logits: never several at once


@torch.inference_mode()
def prompt_logprobs(model: GPT2, ids: list[int], top: int) -> tuple[list[float | None], list[list[tuple[int, float]]]]:
    """For each token of `ids`: its logprob given the tokens before it (None for the first, which
    has none), and the `top` most likely tokens at its place as (id, logprob), most likely first
    (empty for the first token)."""
    device = next(model.parameters()).device
    with _one_at_a_time:
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        logits = model(idx)[0]  # (T, vocab_size)
        chosen: list[float | None] = [None]
        alternatives: list[list[tuple[int, float]]] = [[]]
        for start in range(0, len(ids) - 1, ROWS):
            rows = logits[start : min(start + ROWS, len(ids) - 1)].float().log_softmax(-1)  # (R, vocab_size)
            targets = idx[0, start + 1 : start + 1 + rows.size(0)]  # (R,): the token each row scores
            chosen.extend(rows.gather(1, targets[:, None])[:, 0].tolist())
            if top > 0:
                values, indices = rows.topk(min(top, rows.size(1)), dim=-1)  # (R, top)
                alternatives.extend(list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist()))
            else:
                alternatives.extend([] for _ in range(rows.size(0)))
    return chosen, alternatives
