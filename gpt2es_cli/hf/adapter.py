"""What every Hugging Face architecture gpt2es reads and writes provides: the adapter interface.

An adapter translates between our GPT2 (its ModelConfig and state_dict) and one transformers
architecture (its config.json and weight names, and where each Linear layer is, for LoRA
adapters). export.py, load.py and peft_adapter.py use adapters only through this interface;
registry.py picks one for a ModelConfig or a config.json.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from gpt2es_cli.config import ModelConfig

# Our activation -> transformers' name for it (ACT2FN), and back.
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_new": "gelu_new"}
ACTIVATIONS_FROM_HF = {
    "gelu": "gelu",  # exact erf GELU
    "gelu_new": "gelu_new",  # tanh approximation (OpenAI GPT-2)
    "gelu_pytorch_tanh": "gelu_new",  # the same tanh approximation, computed by torch
    "gelu_fast": "gelu_new",  # the same tanh approximation, factored differently
}


class StateDictAdapter(ABC):
    """Our GPT2 <-> one transformers architecture: its config and its weights."""

    model_type: str
    """transformers' model_type in config.json ('gpt2')."""
    architecture: str
    """The transformers class an export loads as ('GPT2LMHeadModel')."""
    label: str
    """The architecture's name in messages ('GPT-2')."""
    loads: str = ""
    """Which of its models gpt2es loads, in words, when not every one it can express is meant
    ('configured as its rope models'); shown after the model_type in the error for an unknown one."""

    fan_in_fan_out: bool = False
    """Whether the architecture stores each projection's weight as (in, out), as transformers' Conv1D
    does, where our nn.Linear stores (out, in): peft's `fan_in_fan_out` for LoRA on its layers."""

    @abstractmethod
    def linear_modules(self, config: ModelConfig) -> dict[str, str]:
        """Each Linear layer of our GPT2 (its module path, 'h.0.attn.c_attn') -> the path of the same
        layer in the architecture's model ('transformer.h.0.attn.c_attn'): where a LoRA adapter of it goes."""

    def output_rows_to_hf(self, module: str, t: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """A tensor whose rows are our Linear `module`'s outputs, in our order (its weight, its bias,
        a LoRA B) -> in the order of the architecture's layer. The same order unless overridden."""
        return t

    @abstractmethod
    def supports(self, config: ModelConfig) -> bool:
        """Whether this architecture computes exactly the model `config` describes."""

    @abstractmethod
    def to_hf_config(self, config: ModelConfig, eos_id: int | None, dtype: str = "float32") -> dict[str, Any]:
        """The transformers config (as a dict for config.json) equivalent to `config`."""

    @abstractmethod
    def from_hf_config(self, data: dict[str, Any], source: Any = "config.json") -> ModelConfig:
        """Our ModelConfig from a config.json of this model_type; every unsupported setting reported at once."""

    @abstractmethod
    def to_hf_state_dict(
        self, state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """Our state_dict (keys without compile/DDP prefixes) -> the architecture's, contiguous, in `dtype`."""

    @abstractmethod
    def from_hf_state_dict(
        self, state: dict[str, torch.Tensor], config: ModelConfig, source: Any = "the weights"
    ) -> dict[str, torch.Tensor]:
        """The architecture's state_dict -> ours, in float32, every key and shape checked."""
