"""A decoder-only GPT-2 in pure torch: no printing, no files.

Token + position embeddings (learned, as GPT-2; or the fixed sinusoidal table; or rotary
embeddings applied to queries and keys), N pre-LayerNorm blocks (causal self-attention with a fused
QKV projection and scaled_dot_product_attention, then a GELU feed-forward 4x wide, each on a
residual branch), a final LayerNorm, and an output projection tied to the token embedding.
Incremental decoding goes through `KVCache`. With `activation_checkpointing` set, training
forward passes keep only each block's input and recompute the block in the backward pass.
`GPT2.attention_weights` spells out each layer's attention weights, to look at (never built otherwise).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.loss import linear_cross_entropy


def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The original Transformer's position encoding (Vaswani et al. 2017) of `positions` (T,) (or any
    shape): (T, dim) (or (*shape, dim)) float32, sin at even and cos at odd channels, wavelengths
    2 pi .. 10000 * 2 pi."""
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[..., None] * inv  # (T, ceil(dim / 2)), or (*shape, ceil(dim / 2))
    table = torch.zeros(*positions.shape, dim, dtype=torch.float32, device=positions.device)
    table[..., 0::2] = torch.sin(angles)
    table[..., 1::2] = torch.cos(angles[..., : dim // 2])
    return table


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_dim) of rotary embeddings at `positions` (T,) (or any shape: (*shape,
    head_dim)), in the half-split layout (GPT-NeoX, Llama): channel i and i + head_dim/2 rotate
    together at frequency theta^(-2i/head_dim)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    freqs = positions.to(torch.float32)[..., None] * inv  # (T, head_dim / 2), or (*shape, head_dim / 2)
    angles = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x (B, nh, T, hs) by the angles of their positions."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated to the context.

    `length` is how many positions are filled; a forward pass with the cache appends to it.
    Storage is allocated on first use, in the dtype of the keys (so autocast works unchanged).
    """

    def __init__(self, config: ModelConfig, batch_size: int, capacity: int | None = None):
        self.capacity = capacity or config.n_positions
        """Positions it holds: the context, or more for encodings that extrapolate (sinusoidal, rope)."""
        self.shape = (batch_size, config.n_head, self.capacity, config.head_dim)  # (B, nh, Tmax, hs)
        self.n_layer = config.n_layer
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def allocate(self, like: torch.Tensor) -> None:
        """Make the storage if it is not there yet, in the dtype and on the device of `like`."""
        if not self.keys:
            self.keys = [like.new_zeros(self.shape) for _ in range(self.n_layer)]
            self.values = [like.new_zeros(self.shape) for _ in range(self.n_layer)]

    def write(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one position's k, v (B, nh, 1, hs) in place at `pos`: a (1,) tensor for every row, or
        (B,), each row at its own position; return the whole storage (B, nh, capacity, hs): fixed
        shapes, whatever the position."""
        if pos.numel() == 1:
            self.keys[layer].index_copy_(2, pos, k)
            self.values[layer].index_copy_(2, pos, v)
        else:
            at = pos.view(-1, 1, 1, 1).expand_as(k)  # (B, nh, 1, hs): row b's slot pos[b]
            self.keys[layer].scatter_(2, at, k)
            self.values[layer].scatter_(2, at, v)
        return self.keys[layer], self.values[layer]

    def rows(self, start: int, stop: int, capacity: int | None = None) -> KVCache:
        """Rows start..stop-1 and the first `capacity` positions (all: None) of this allocated cache,
        sharing its storage: what is written through it lands here. For a sequence, or a batch,
        that uses part of a larger storage (`gpt2es serve` keeps one for all its requests). Its
        `length` starts at 0."""
        capacity = capacity or self.capacity
        view = copy.copy(self)
        view.capacity, view.length = capacity, 0
        view.shape = (stop - start, self.shape[1], capacity, self.shape[3])  # (rows, nh, capacity, hs)
        view.keys = [k[start:stop, :, :capacity] for k in self.keys]
        view.values = [v[start:stop, :, :capacity] for v in self.values]
        return view

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after the filled part; return all keys and values so far."""
        self.allocate(k)
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True  # scaled init, see GPT2._init_weights
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                decode: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`decode`: (pos (1,) or (B,), mask (1 or B, 1, 1, capacity)) for a fixed-shape one-token step
        that writes the cache at pos and attends to the whole cache through the mask (see GPT2.decode_step)."""
        B, T, C = x.size()
        q, k, v = self.heads(x, rope)  # each (B, nh, T, hs)
        if decode is not None:
            assert cache is not None
            k, v = cache.write(layer, decode[0], k, v)  # (B, nh, capacity, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=decode[1])
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.c_proj(y)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past+T, hs)
        dropout_p = self.attn_dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1)
        elif T == 1:
            # One new token attends to every cached position: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # A chunk after a filled cache: query i sits at position past+i and sees keys <= it.
            # (is_causal would align the mask top-left, which is wrong when T_q != T_k.)
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C), split into heads: each (B, nh, T, hs)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:  # rotary: each query and key turned by its true position (cached keys too)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def weights(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The attention weights of x (B, T, C), no cache: (B, nh, T, T) float32, row i how much
        position i takes from each position j <= i (each row sums to 1, the future is exactly 0).

        What `forward`'s scaled_dot_product_attention computes without ever building it, spelled
        out to look at: softmax(q k^T / sqrt(hs)) under the causal mask. Training and sampling never call it.
        """
        q, k, _ = self.heads(x, rope)  # (B, nh, T, hs)
        T = q.size(2)
        scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)  # j > i
        return scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # (B, nh, T, T)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_new" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                decode: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope, decode)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    """GPT-2 language model. `forward(idx)` returns logits (B, T, vocab_size)."""

    activation_checkpointing: bool = False
    """Recompute each block in the backward pass instead of keeping its activations (training only)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position == "learned":  # sinusoidal is computed, rope turns q and k: no table to train
            self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight  # tied: one matrix embeds and un-embeds
        self.apply(self._init_weights)  # an untied head starts as a Linear does here: N(0, 0.02)


    @staticmethod
    def state_shapes(config: ModelConfig) -> dict[str, torch.Size]:
        """The shape of every tensor in the state_dict of a GPT2 with this config (built on the meta
        device: no memory, no initialisation)."""
        with torch.device("meta"):
            return {k: v.shape for k, v in GPT2(config).state_dict().items()}

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2: normal(0, 0.02); projections into the residual stream scaled by 1/sqrt(2*n_layer)
        # so the stream's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False,
                targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Logits for every position of idx (B, T). With a cache, idx continues the cached tokens.

        `last_only` returns the logits of the last position only (B, 1, vocab_size): generation
        needs no others, and it spares the output head (the largest matrix) for the prompt.

        With `targets` (B, T) it returns their cross-entropy instead ("mean" or "sum" over the
        tokens), fused with the output head so that no logits are built (loss.linear_cross_entropy):
        what training and validation call.
        """
        T = idx.size(1)  # idx: (B, T)
        c = self.config
        past = cache.length if cache is not None else 0
        limit = cache.capacity if cache is not None else c.n_positions if c.position == "learned" else None
        if limit is not None and past + T > limit:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context of {limit}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        x, rope = self._embed(idx, pos)
        x = self.drop(x)
        # Checkpointing pays off only when a backward pass follows: not in eval, not with a cache.
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.h):
            if recompute:
                # Only x (B, T, C) is kept; the backward pass reruns the block, replaying the RNG
                # state (same dropout masks) and the autocast state, so gradients are unchanged.
                x = checkpoint(block, x, None, i, rope, use_reentrant=False)
            else:
                x = block(x, cache, i, rope)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.ln_f(x)
        if targets is not None:
            return linear_cross_entropy(x, self.lm_head.weight, targets, reduction)
        return self.lm_head(x)  # (B, T, vocab_size), or (B, 1, vocab_size) with last_only

    def _embed(self, idx: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token embeddings of idx (B, T) at positions pos (T,) (or (B, 1): one a row), with the
        position encoding added (learned, sinusoidal), or the rotary angles for the attention (rope; else None)."""
        c = self.config
        x = self.wte(idx)  # (B, T, C)
        if c.position == "learned":
            return x + self.wpe(pos), None
        if c.position == "sinusoidal":
            return x + sinusoidal_table(pos, c.n_embd).to(x.dtype), None
        return x, rope_angles(pos, c.head_dim, c.rope_theta)

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention weights for idx (B, T) from position 0, without a cache: n_layer
        tensors (B, nh, T, T) float32 (CausalSelfAttention.weights), for looking inside the model
        (`gpt2es inspect --attention`). Call it in eval mode, so that no dropout acts between layers."""
        T = idx.size(1)
        if self.config.position == "learned" and T > self.config.n_positions:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.config.n_positions}")
        x, rope = self._embed(idx, torch.arange(T, dtype=torch.long, device=idx.device))
        weights = []
        for i, block in enumerate(self.h):
            weights.append(block.attn.weights(block.ln_1(x), rope))  # (B, nh, T, T)
            x = block(x, None, i, rope)  # the block's own forward: the next layer sees what it always sees
        return weights

    def decode_step(self, idx: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, vocab_size) of one new token per sequence, idx (B, 1) at position `pos`: a (1,)
        long tensor for the whole batch, or (B,), each sequence at its own position (sequences of
        different lengths side by side, as `gpt2es serve` runs them), the cache filled before it by
        a forward pass (which allocates its storage). Every shape is fixed whatever the position
        (the key and value are written in place, attention sees the whole cache through a mask, one
        row each), so `torch.compile` traces it once, and CUDA graphs can replay it. The caller
        advances cache.length. Inference only (no dropout)."""
        x, rope = self._embed(idx, pos[:, None])  # positions (P, 1), P = 1 or B: (B, 1, C)
        if rope is not None:
            rope = (rope[0][:, None], rope[1][:, None])  # (P, 1, 1, hs): each row's angles, for (B, nh, 1, hs)
        filled = torch.arange(cache.capacity, device=idx.device) <= pos[:, None]  # (P, capacity): filled + pos
        mask = filled[:, None, None, :]  # (P, 1, 1, capacity)
        for i, block in enumerate(self.h):
            x = block(x, cache, i, rope, (pos, mask))
        return self.lm_head(self.ln_f(x))[:, -1, :]

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences (it takes the device of the keys), holding the
        context or `capacity` positions (beyond the context only for sinusoidal and rope)."""
        if capacity is not None and capacity > self.config.n_positions and self.config.position == "learned":
            raise ValueError(f"learned positions stop at the context of {self.config.n_positions}")
        return KVCache(self.config, batch_size, capacity)

    def num_parameters(self) -> int:
        """Parameter count, the tied output projection counted once."""
        return sum(p.numel() for p in self.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts per component: embeddings, attention, feed-forward, norms."""
        return parameter_counts(((name, p.numel()) for name, p in self.named_parameters()),
                                tied=self.config.tie_word_embeddings)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM appendix: 6N + 12 L T C."""
        T = seq_len or self.config.n_positions
        n = self.num_parameters() - (self.wpe.weight.numel() if self.config.position == "learned" else 0)
        return 6 * n + 12 * self.config.n_layer * T * self.config.n_embd


def parameter_counts(sizes: Iterable[tuple[str, int]], tied: bool = True) -> dict[str, int]:
    """Group (name, numel) pairs of a GPT2 state dict into embeddings, attention, feed-forward,
    norms and (untied) output head. A tied `lm_head.weight` is the token embedding, so it is not
    counted again."""
    groups = {"embeddings": 0, "attention": 0, "feed_forward": 0, "norms": 0}
    for name, numel in sizes:
        if name == "lm_head.weight":
            if not tied:
                groups["head"] = groups.get("head", 0) + numel
            continue
        if name.startswith(("wte.", "wpe.")):
            groups["embeddings"] += numel
        elif ".attn." in name:
            groups["attention"] += numel
        elif ".mlp." in name:
            groups["feed_forward"] += numel
        else:
            groups["norms"] += numel
    return groups
