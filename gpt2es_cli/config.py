"""Model configuration: one dataclass for the architecture, named presets, validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from gpt2es_cli.errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_new")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only GPT-2."""

    vocab_size: int = 50257
    """Number of token ids the embedding and output projection cover."""
    n_positions: int = 1024
    """Context length: the most tokens the model attends over (learned positions)."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 768
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 disables)."""
    activation: str = "gelu_new"
    """Feed-forward activation: 'gelu' (exact) or 'gelu_new' (tanh approximation, OpenAI GPT-2)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    def problems(self) -> list[str]:
        """Every problem with this config, in words a user can act on (empty when valid)."""
        found = []
        for name in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                found.append(f"{name} must be a positive integer (got {value!r})")
        if (
            isinstance(self.n_embd, int)
            and isinstance(self.n_head, int)
            and self.n_head > 0
            and self.n_embd > 0
            and self.n_embd % self.n_head
        ):
            found.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            found.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if self.activation not in ACTIVATIONS:
            found.append(f"activation must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            found.append(f"layer_norm_eps must be positive (got {self.layer_norm_eps!r})")
        return found

    def validate(self) -> ModelConfig:
        """Raise ConfigError listing every problem at once; return self when valid."""
        found = self.problems()
        if found:
            raise ConfigError("invalid model config: " + "; ".join(found))
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. a checkpoint's); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data).validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see PRESETS), with fields overridden one by one."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(PRESETS[name], **given).validate()


PRESETS: dict[str, ModelConfig] = {
    # For tests: a forward pass takes about a millisecond.
    "tiny": ModelConfig(n_positions=64, n_layer=2, n_head=2, n_embd=32),
    # Trains on a laptop CPU in minutes to hours.
    "small": ModelConfig(n_positions=256, n_layer=6, n_head=6, n_embd=384),
    # The OpenAI GPT-2 family (124M, 355M, 774M, 1.5B with the GPT-2 vocabulary).
    "gpt2": ModelConfig(n_positions=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": ModelConfig(n_positions=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": ModelConfig(n_positions=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": ModelConfig(n_positions=1024, n_layer=48, n_head=25, n_embd=1600),
}
