"""Next-token cross-entropy that never holds an fp32 copy of the logits, or no logits at all.

`F.cross_entropy(logits.float(), y)` on (B*T, V) logits makes an fp32 copy, keeps the fp32
log-probabilities for backward and builds an fp32 gradient: about 4 x B*T*V*4 bytes of fresh
memory per step (with a 16k vocabulary and 2048 tokens, over 500 MB), which on a CPU costs more
in page faults and memory traffic than the softmax itself. Here the logits are processed in
row chunks that stay in cache: forward keeps only the logits it was given, backward recomputes
each chunk's softmax and writes the gradient straight into the logits' dtype. Same result to
float rounding; on the CPU under bf16 autocast the loss is several times faster.

`linear_cross_entropy` goes further for training (fused linear cross-entropy, as Liger's kernel
does on GPUs): it takes the hidden states and the output head's weight, and for each chunk of
rows computes the logits, the loss, the softmax's gradient and at once the gradients of the
hidden states and of the weight, then drops the chunk. The (N, V) logits never exist, the
softmax is taken once instead of twice (forward and backward), and what the backward pass keeps
is two small gradients, N x C and V x C, instead of N x V logits: with a 32k vocabulary and
width 128, 64 times fewer bytes.

Targets equal to `IGNORE_INDEX` (an instruction dataset's prompt tokens, see data/batches.py) add
nothing to the loss or the gradients, and "mean" averages over the other targets only, as
`F.cross_entropy(..., ignore_index=IGNORE_INDEX)` does; with none left, the mean is 0 (torch's
would be NaN), so a window that holds no answer is no divergence.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""A target that is not scored (torch's and transformers' value)."""
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}
"""Logit elements per chunk: cache-sized on CPUs, large on GPUs (few kernel launches)."""
LINEAR_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}
"""Logit elements per chunk of `linear_cross_entropy`: on CPUs 128 rows of a 32k vocabulary, the
fastest in a sweep (fewer rows make the matrix products short, more spill the cache)."""


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of logits (N, V) against targets (N,), chunk rows at a time."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.size(0), rows):
            chunk = logits[start : start + rows].float()  # (rows, V), in cache
            total += F.cross_entropy(chunk, targets[start : start + rows], reduction="sum", ignore_index=IGNORE_INDEX)
        ctx.save_for_backward(logits, targets)
        ctx.rows = rows
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets = ctx.saved_tensors
        rows = ctx.rows
        grad = torch.empty_like(logits)
        scale = grad_total.float()
        for start in range(0, logits.size(0), rows):
            # d(-log softmax_t)/d logits = softmax - onehot(t); 0 for an ignored target
            t = targets[start : start + rows]
            scored = (t != IGNORE_INDEX)[:, None]  # (rows, 1)
            probs = torch.softmax(logits[start : start + rows].float(), dim=-1)  # (rows, V)
            probs[torch.arange(probs.size(0), device=probs.device), t.clamp_min(0)] -= 1.0
            grad[start : start + rows] = probs.mul_(scored * scale)
        return grad, None, None


def scored_count(targets: torch.Tensor) -> torch.Tensor:
    """How many targets are scored (not IGNORE_INDEX), as a tensor on their device (no sync)."""
    return (targets != IGNORE_INDEX).sum()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (..., V) against integer targets (...), computed in fp32; targets
    equal to IGNORE_INDEX are skipped ("mean": over the scored ones)."""
    flat = logits.reshape(-1, logits.size(-1))  # (N, V)
    device = flat.device.type
    if device not in CHUNK_ELEMENTS:
        loss = F.cross_entropy(flat.float(), targets.reshape(-1), reduction="sum", ignore_index=IGNORE_INDEX)
    else:
        rows = max(1, CHUNK_ELEMENTS[device] // flat.size(1))
        loss = _ChunkedCrossEntropy.apply(flat, targets.reshape(-1), rows)
    if reduction == "sum":
        return loss
    if reduction == "mean":
        return loss / scored_count(targets).clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}: use 'mean' or 'sum'")


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of hidden (N, C) @ weight (V, C).T against targets (N,), `rows` rows
    at a time, in `dtype`; with `need_grad`, the gradients are made chunk by chunk in forward.
    Rows whose target is IGNORE_INDEX add nothing (their loss and gradient rows are multiplied by 0)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int,
                dtype: torch.dtype, need_grad: bool, need_weight_grad: bool) -> torch.Tensor:
        h_all, w = hidden.to(dtype), weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad else None
        # A frozen head (LoRA) gets no weight gradient: neither its (V, C) buffer nor its matmuls.
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight_grad else None
        index = torch.arange(min(rows, hidden.size(0)), device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            h, t = h_all[start : start + rows], targets[start : start + rows]
            scored = t != IGNORE_INDEX  # (rows,)
            t = t.clamp_min(0)  # an ignored row reads any logit; its loss is multiplied by 0
            logits = (h @ w.t()).float()  # (rows, V): the only logits alive
            if not need_grad:
                total += ((torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None]).squeeze(1)) * scored).sum()
                continue
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # in place: exp(logits - max)
            norm = probs.sum(dim=-1, keepdim=True)
            total += ((peak.squeeze(1) + norm.log().squeeze(1) - target_logit) * scored).sum()
            probs.div_(norm)[index[: h.size(0)], t] -= 1.0  # d(-log softmax_t)/d logits = softmax - onehot(t)
            g = probs.to(dtype)
            keep = scored[:, None].to(dtype)  # (rows, 1): zeroing rows of g through the small factors, not g itself
            grad_h[start : start + rows] = (g @ w) * keep
            if grad_w is None:
                continue
            if dtype == torch.float32:
                grad_w.addmm_(g.t(), h * keep)
            else:
                grad_w += (g.t() @ (h * keep)).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is None:
            raise RuntimeError("linear_cross_entropy was computed without gradients (no_grad or frozen inputs)")
        scale = grad_total.float()
        weight_grad = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return grad_h * scale.to(grad_h.dtype), weight_grad, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the logits `hidden` (..., C) @ `weight` (V, C).T against integer targets
    (...), without building the logits (see the module docstring). Under autocast the matrix
    products run in the autocast dtype, as the Linear layer's would; the loss and the softmax
    are fp32. Same value and gradients as `cross_entropy(hidden @ weight.T, targets)`, IGNORE_INDEX
    targets skipped alike."""
    flat = hidden.reshape(-1, hidden.size(-1))  # (N, C)
    device = flat.device.type
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}: use 'mean' or 'sum'")
    if device not in LINEAR_CHUNK_ELEMENTS:  # e.g. mps: plain logits
        return cross_entropy(flat @ weight.to(flat.dtype).t(), targets, reduction)
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else flat.dtype
    rows = max(1, LINEAR_CHUNK_ELEMENTS[device] // weight.size(0))
    need_grad = torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad)
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        loss = _LinearCrossEntropy.apply(flat, weight, targets.reshape(-1), rows, dtype, need_grad,
                                         need_grad and weight.requires_grad)
    return loss / scored_count(targets).clamp_min(1) if reduction == "mean" else loss
