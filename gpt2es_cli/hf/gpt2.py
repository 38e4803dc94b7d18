"""Learned and sinusoidal position models as transformers' `GPT2LMHeadModel`, through one explicit weight map.

Our GPT2 and transformers' GPT-2 compute the same function; they differ only in names and in
layout: transformers' `Conv1D` stores a projection's weight as (in, out) where our `nn.Linear`
stores (out, in), so those four matrices per block are transposed on the way. The output
projection is tied to the token embedding on both sides (tie_word_embeddings), so
`lm_head.weight` is written only for a model trained with --untied-head, as its own matrix.
A sinusoidal model's fixed table is written as GPT-2's learned `wpe` (exactly the values it adds).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.hf.adapter import ACTIVATIONS_FROM_HF, ACTIVATIONS_TO_HF, StateDictAdapter
from gpt2es_cli.model import GPT2, sinusoidal_table

# --- the weight map -------------------------------------------------------------------------
# (our key, Hugging Face GPT2LMHeadModel key, transposed). "{i}" is the block index.
# Our lm_head.weight is the same tensor as wte.weight; transformers ties it the same way
# (GPT2LMHeadModel._tied_weights_keys), so it is not in the map.
TOP_LEVEL_MAP: tuple[tuple[str, str, bool], ...] = (
    ("wte.weight", "transformer.wte.weight", False),  # (vocab, C)
    ("wpe.weight", "transformer.wpe.weight", False),  # (n_positions, C)
    ("ln_f.weight", "transformer.ln_f.weight", False),
    ("ln_f.bias", "transformer.ln_f.bias", False),
)
BLOCK_MAP: tuple[tuple[str, str, bool], ...] = (
    ("h.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight", False),
    ("h.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias", False),
    ("h.{i}.attn.c_attn.weight", "transformer.h.{i}.attn.c_attn.weight", True),  # ours (3C, C), HF (C, 3C)
    ("h.{i}.attn.c_attn.bias", "transformer.h.{i}.attn.c_attn.bias", False),
    ("h.{i}.attn.c_proj.weight", "transformer.h.{i}.attn.c_proj.weight", True),  # (C, C)
    ("h.{i}.attn.c_proj.bias", "transformer.h.{i}.attn.c_proj.bias", False),
    ("h.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight", False),
    ("h.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias", False),
    ("h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_fc.weight", True),  # ours (4C, C), HF (C, 4C)
    ("h.{i}.mlp.c_fc.bias", "transformer.h.{i}.mlp.c_fc.bias", False),
    ("h.{i}.mlp.c_proj.weight", "transformer.h.{i}.mlp.c_proj.weight", True),  # ours (C, 4C), HF (4C, C)
    ("h.{i}.mlp.c_proj.bias", "transformer.h.{i}.mlp.c_proj.bias", False),
)
HF_PREFIX = "transformer."
TIED_KEY = "lm_head.weight"
# Buffers older transformers saved with every block (the causal mask): not weights, skipped.
_HF_BUFFER = re.compile(r"^h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")

# transformers' GPT2Config defaults, for fields a config.json leaves out.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
# Names newer configs may use instead (GPT2Config.attribute_map).
_HF_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


def key_map(n_layer: int) -> list[tuple[str, str, bool]]:
    """Every (our key, Hugging Face key, transposed) for a model with n_layer blocks."""
    rows = list(TOP_LEVEL_MAP)
    for i in range(n_layer):
        rows += [(ours.format(i=i), hf.format(i=i), t) for ours, hf, t in BLOCK_MAP]
    return rows


def _check_keys(found: set[str], expected: set[str], mismatch: str) -> None:
    """Raise `mismatch`, with the first few missing and unexpected keys, unless `found` is `expected`."""
    missing = sorted(expected - found)
    unknown = sorted(found - expected)
    if missing or unknown:
        raise CheckpointError(
            mismatch
            + (f"; missing: {_few(missing)}" if missing else "")
            + (f"; unexpected: {_few(unknown)}" if unknown else "")
        )


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


class GPT2Adapter(StateDictAdapter):
    """GPT2LMHeadModel: GPT-2 exactly, for learned and sinusoidal positions."""

    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    label = "GPT-2"
    fan_in_fan_out = True  # Conv1D

    def linear_modules(self, config: ModelConfig) -> dict[str, str]:
        """The four projections of every block, transposed in the weight map (Conv1D), keep their names."""
        return {
            ours.removesuffix(".weight"): hf.removesuffix(".weight")
            for ours, hf, transposed in key_map(config.n_layer)
            if transposed
        }

    def supports(self, config: ModelConfig) -> bool:
        return config.position in ("learned", "sinusoidal")  # rotary positions have no GPT-2 equivalent

    def to_hf_config(self, config: ModelConfig, eos_id: int | None, dtype: str = "float32") -> dict[str, Any]:
        from transformers import GPT2Config

        hf = GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_inner=None,  # 4 * n_embd, as ours
            activation_function=ACTIVATIONS_TO_HF[config.activation],
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            summary_first_dropout=config.dropout,
            layer_norm_epsilon=config.layer_norm_eps,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            tie_word_embeddings=config.tie_word_embeddings,
            architectures=[self.architecture],
            dtype=dtype,
        )
        return hf.to_dict()

    def from_hf_config(self, data: dict[str, Any], source: Any = "config.json") -> ModelConfig:
        cfg = dict(_HF_DEFAULTS)
        cfg.update({_HF_ALIASES.get(k, k): v for k, v in data.items()})
        problems = []
        activation = ACTIVATIONS_FROM_HF.get(cfg["activation_function"])
        if activation is None:
            problems.append(
                f"activation_function {cfg['activation_function']!r} is not supported "
                f"(gpt2es runs {', '.join(sorted(ACTIVATIONS_FROM_HF))})"
            )
        n_embd = cfg["n_embd"]
        if cfg["n_inner"] is not None and cfg["n_inner"] != 4 * n_embd:
            problems.append(
                f"n_inner {cfg['n_inner']} is not 4 * n_embd ({4 * n_embd}), which gpt2es requires"
            )
        if not cfg["scale_attn_weights"]:
            problems.append("scale_attn_weights false is not supported")
        if cfg["scale_attn_by_inverse_layer_idx"]:
            problems.append("scale_attn_by_inverse_layer_idx is not supported")
        if cfg["add_cross_attention"]:
            problems.append("add_cross_attention (an encoder-decoder GPT-2) is not supported")
        if problems:
            raise CheckpointError(f"{source}: " + "; ".join(problems))
        try:
            return ModelConfig(
                vocab_size=cfg["vocab_size"],
                n_positions=cfg["n_positions"],
                n_layer=cfg["n_layer"],
                n_head=cfg["n_head"],
                n_embd=n_embd,
                dropout=float(cfg["resid_pdrop"]),
                activation=activation,
                layer_norm_eps=float(cfg["layer_norm_epsilon"]),
                tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
            ).validate()
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: {e}") from None

    def to_hf_state_dict(
        self, state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """Without the tied lm_head; a sinusoidal model's table becomes `wpe`."""
        if config.position == "sinusoidal":
            table = sinusoidal_table(torch.arange(config.n_positions), config.n_embd)
            state = {**state, "wpe.weight": table}
        rows = key_map(config.n_layer)
        if not config.tie_word_embeddings:  # an untied head is a weight of its own in GPT2LMHeadModel too
            rows = [*rows, (TIED_KEY, TIED_KEY, False)]
        expected = {ours for ours, _, _ in rows} | {TIED_KEY}
        _check_keys(set(state), expected, f"the checkpoint's weights do not match a {self.label} of its config")
        if config.tie_word_embeddings and TIED_KEY in state and not torch.equal(state[TIED_KEY], state["wte.weight"]):
            raise CheckpointError("the checkpoint's lm_head.weight differs from wte.weight: gpt2es ties them")
        out = {}
        for ours, hf, transposed in rows:
            t = state[ours].detach().to("cpu")
            if transposed:
                t = t.t()  # nn.Linear (out, in) -> Conv1D (in, out)
            out[hf] = t.to(dtype or t.dtype).contiguous()
        return out

    def from_hf_state_dict(
        self, state: dict[str, torch.Tensor], config: ModelConfig, source: Any = "the weights"
    ) -> dict[str, torch.Tensor]:
        """A GPT2LMHeadModel (or GPT2Model) state_dict -> ours.

        Accepts keys with or without the 'transformer.' prefix and skips the old causal-mask buffers.
        With tied embeddings (config.tie_word_embeddings) an lm_head.weight must equal the token
        embedding; untied, it is required and becomes our separate head.
        """
        plain: dict[str, torch.Tensor] = {}
        lm_head = None
        for key, value in state.items():
            if key == TIED_KEY:
                lm_head = value
                continue
            key = key.removeprefix(HF_PREFIX)
            if _HF_BUFFER.match(key):
                continue
            plain[key] = value
        rows = key_map(config.n_layer)
        wanted = {hf.removeprefix(HF_PREFIX) for _, hf, _ in rows}
        _check_keys(set(plain), wanted, f"{source} do not match a {self.label} of its config.json")
        shapes = GPT2.state_shapes(config)
        out: dict[str, torch.Tensor] = {}
        for ours, hf, transposed in rows:
            t = plain[hf.removeprefix(HF_PREFIX)]
            if transposed and t.dim() == 2:
                t = t.t()  # Conv1D (in, out) -> nn.Linear (out, in)
            if t.shape != shapes[ours]:
                raise CheckpointError(
                    f"{source}: {hf} has shape {tuple(t.shape)} but config.json implies "
                    f"{tuple(shapes[ours][::-1] if transposed else shapes[ours])}"
                )
            out[ours] = t.to(torch.float32).contiguous()
        if not config.tie_word_embeddings:  # an untied head: its own matrix
            if lm_head is None:
                raise CheckpointError(
                    f"{source}: config.json sets tie_word_embeddings false but there is no lm_head.weight"
                )
            if lm_head.shape != out["wte.weight"].shape:
                raise CheckpointError(
                    f"{source}: lm_head.weight has shape {tuple(lm_head.shape)} but config.json implies "
                    f"{tuple(out['wte.weight'].shape)}"
                )
            out[TIED_KEY] = lm_head.to(torch.float32).contiguous()
            return out
        if lm_head is not None and (lm_head.shape != out["wte.weight"].shape or not torch.equal(
            lm_head.to(torch.float32), out["wte.weight"]
        )):
            raise CheckpointError(
                f"{source}: lm_head.weight differs from the token embedding although config.json ties them "
                "(tie_word_embeddings true): the files come from different models"
            )
        out[TIED_KEY] = out["wte.weight"]  # the same tensor, as in GPT2.state_dict()
        return out
