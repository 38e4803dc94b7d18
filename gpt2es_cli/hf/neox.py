"""A --position rope model as transformers' `GPTNeoXForCausalLM`, and back.

GPT-2 has no rotary embeddings, but `GPTNeoXForCausalLM` computes exactly our rope model when it
is configured as one: `use_parallel_residual=False` (x + attn(ln_1 x), then + mlp(ln_2 x), as
GPT-2), rotary on the whole head (`partial_rotary_factor` 1.0) in the same half-split layout
(rotate_half) and base, biases on every projection (`attention_bias`), a 4x GELU MLP with the
same activation, the same LayerNorm epsilon and attention scale, and the output head tied or
not (`tie_word_embeddings`). The one difference is the fused q, k, v projection's layout: ours
is [q | k | v], each split into heads; GPT-NeoX's is per head, [q_h | k_h | v_h] for head 0,
then head 1, ...; the rows (and the bias) are reordered on the way. Every other weight keeps its
layout (both are nn.Linear), only its name changes (TOP_LEVEL, BLOCK).
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.hf.adapter import ACTIVATIONS_FROM_HF, ACTIVATIONS_TO_HF, StateDictAdapter
from gpt2es_cli.model import GPT2

PREFIX = "gpt_neox."
HEAD_KEY = "lm_head.weight"
TOP_LEVEL = (("wte.weight", "embed_in.weight"), ("ln_f.weight", "final_layer_norm.weight"),
             ("ln_f.bias", "final_layer_norm.bias"))
BLOCK = (
    ("ln_1.weight", "input_layernorm.weight"),
    ("ln_1.bias", "input_layernorm.bias"),
    ("ln_2.weight", "post_attention_layernorm.weight"),
    ("ln_2.bias", "post_attention_layernorm.bias"),
    ("attn.c_attn.weight", "attention.query_key_value.weight"),
    ("attn.c_attn.bias", "attention.query_key_value.bias"),
    ("attn.c_proj.weight", "attention.dense.weight"),
    ("attn.c_proj.bias", "attention.dense.bias"),
    ("mlp.c_fc.weight", "mlp.dense_h_to_4h.weight"),
    ("mlp.c_fc.bias", "mlp.dense_h_to_4h.bias"),
    ("mlp.c_proj.weight", "mlp.dense_4h_to_h.weight"),
    ("mlp.c_proj.bias", "mlp.dense_4h_to_h.bias"),
)


def keys(n_layer: int) -> list[tuple[str, str]]:
    """(our key, GPT-NeoX key) for every weight but the output head."""
    rows = [(ours, PREFIX + theirs) for ours, theirs in TOP_LEVEL]
    for i in range(n_layer):
        rows += [(f"h.{i}.{ours}", f"{PREFIX}layers.{i}.{theirs}") for ours, theirs in BLOCK]
    return rows


def _per_head(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """[q | k | v] rows (3C, ...) -> GPT-NeoX's [q_h | k_h | v_h] per head."""
    rest = t.shape[1:]
    return t.reshape(3, n_head, -1, *rest).transpose(0, 1).reshape(t.shape)


def _per_part(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """GPT-NeoX's per-head q, k, v rows -> ours, [q | k | v]."""
    rest = t.shape[1:]
    return t.reshape(n_head, 3, -1, *rest).transpose(0, 1).reshape(t.shape)


class GPTNeoXAdapter(StateDictAdapter):
    """GPTNeoXForCausalLM configured as our blocks, for rotary positions."""

    model_type = "gpt_neox"
    architecture = "GPTNeoXForCausalLM"
    label = "GPT-NeoX"
    loads = "configured as its rope models"

    def linear_modules(self, config: ModelConfig) -> dict[str, str]:
        return {
            ours.removesuffix(".weight"): theirs.removesuffix(".weight")
            for ours, theirs in keys(config.n_layer)
            if ours.startswith("h.") and ours.endswith(".weight") and ".ln_" not in ours
        }

    def output_rows_to_hf(self, module: str, t: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """The fused q, k, v projection's rows go per head; every other layer keeps its order."""
        return _per_head(t, config.n_head) if module.endswith("attn.c_attn") else t

    def supports(self, config: ModelConfig) -> bool:
        return config.position == "rope"

    def to_hf_config(self, config: ModelConfig, eos_id: int | None, dtype: str = "float32") -> dict[str, Any]:
        from transformers import GPTNeoXConfig

        neox = GPTNeoXConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.n_embd,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            intermediate_size=4 * config.n_embd,
            hidden_act=ACTIVATIONS_TO_HF[config.activation],
            attention_dropout=config.dropout,
            hidden_dropout=config.dropout,
            max_position_embeddings=config.n_positions,
            layer_norm_eps=config.layer_norm_eps,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            tie_word_embeddings=config.tie_word_embeddings,
            use_parallel_residual=False,
            attention_bias=True,
            rotary_pct=1.0,
            rotary_emb_base=config.rope_theta,
            architectures=[self.architecture],
            dtype=dtype,
        )
        return neox.to_dict()

    def from_hf_config(self, data: dict[str, Any], source: Any = "config.json") -> ModelConfig:
        rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
        theta = rope.get("rope_theta", data.get("rotary_emb_base", data.get("rope_theta", 10000)))
        partial = rope.get("partial_rotary_factor", data.get("rotary_pct", 0.25))
        width, heads = data.get("hidden_size", 6144), data.get("num_attention_heads", 64)
        problems = []
        if data.get("use_parallel_residual", True):
            problems.append("use_parallel_residual true (gpt2es blocks are sequential)")
        if partial != 1.0:
            problems.append(f"rotary on {partial:g} of each head (gpt2es rotates all of it)")
        if rope.get("rope_type", "default") != "default":
            problems.append(f"rope_type {rope.get('rope_type')!r} (gpt2es has plain rotary embeddings)")
        if not data.get("attention_bias", True):
            problems.append("attention_bias false")
        if data.get("intermediate_size", 4 * width) != 4 * width:
            problems.append(f"intermediate_size {data.get('intermediate_size')} is not 4 x hidden_size")
        activation = ACTIVATIONS_FROM_HF.get(data.get("hidden_act", "gelu"))
        if activation is None:
            problems.append(f"hidden_act {data.get('hidden_act')!r}")
        if problems:
            raise CheckpointError(f"{source}: a {self.label} gpt2es cannot run: " + "; ".join(problems))
        try:
            return ModelConfig(
                vocab_size=data.get("vocab_size", 50432), n_positions=data.get("max_position_embeddings", 2048),
                n_layer=data.get("num_hidden_layers", 44), n_head=heads, n_embd=width,
                dropout=float(data.get("hidden_dropout", 0.0)), activation=activation,
                layer_norm_eps=float(data.get("layer_norm_eps", 1e-5)),
                tie_word_embeddings=bool(data.get("tie_word_embeddings", False)), position="rope",
                rope_theta=float(theta),
            ).validate()
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: {e}") from None

    def to_hf_state_dict(
        self, state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        out = {}
        for ours, theirs in keys(config.n_layer):
            t = state[ours].detach().to("cpu")
            if ours.startswith("h."):
                t = self.output_rows_to_hf(ours.rsplit(".", 1)[0], t, config)
            out[theirs] = t.to(dtype or t.dtype).contiguous()
        if not config.tie_word_embeddings:
            out[HEAD_KEY] = state[HEAD_KEY].detach().to("cpu").to(dtype or torch.float32).contiguous()
        return out

    def from_hf_state_dict(
        self, state: dict[str, torch.Tensor], config: ModelConfig, source: Any = "the weights"
    ) -> dict[str, torch.Tensor]:
        plain = {k if k == HEAD_KEY or k.startswith(PREFIX) else PREFIX + k: v for k, v in state.items()}
        shapes = GPT2.state_shapes(config)
        out: dict[str, torch.Tensor] = {}
        for ours, theirs in keys(config.n_layer):
            if theirs not in plain:
                raise CheckpointError(f"{source}: {theirs} is missing")
            t = plain[theirs]
            if ours.endswith("attn.c_attn.weight") or ours.endswith("attn.c_attn.bias"):
                t = _per_part(t, config.n_head)
            if t.shape != shapes[ours]:
                raise CheckpointError(f"{source}: {theirs} has shape {tuple(t.shape)}, config.json implies {tuple(shapes[ours])}")
            out[ours] = t.to(torch.float32).contiguous()
        head = plain.get(HEAD_KEY, plain.get(PREFIX + "embed_out.weight", plain.get("embed_out.weight")))
        if config.tie_word_embeddings:
            out[HEAD_KEY] = out["wte.weight"]  # the same tensor, as in GPT2.state_dict()
        elif head is None:
            raise CheckpointError(f"{source}: config.json sets tie_word_embeddings false but there is no {HEAD_KEY}")
        else:
            out[HEAD_KEY] = head.to(torch.float32).contiguous()
        return out
