"""The Hugging Face architectures gpt2es reads and writes, and which one serves a model: the one list of them."""

from __future__ import annotations

from typing import Any

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.hf.adapter import StateDictAdapter
from gpt2es_cli.hf.gpt2 import GPT2Adapter
from gpt2es_cli.hf.neox import GPTNeoXAdapter

ADAPTERS: tuple[StateDictAdapter, ...] = (
    GPT2Adapter(),  # learned and sinusoidal positions
    GPTNeoXAdapter(),  # rope
)
"""Every architecture, in order of preference for export; the first is gpt2es's own, named in the
error for a config.json of another model_type."""


def adapter_for_config(config: ModelConfig) -> StateDictAdapter:
    """The first architecture that computes exactly the model `config` describes."""
    for adapter in ADAPTERS:
        if adapter.supports(config):
            return adapter
    raise CheckpointError(
        f"no Hugging Face architecture gpt2es writes ({', '.join(a.architecture for a in ADAPTERS)}) "
        f"computes a --position {config.position} model"
    )


def adapter_for_hf_config(data: dict[str, Any], source: Any = "config.json") -> StateDictAdapter:
    """The architecture of a config.json, by its model_type."""
    model_type = data.get("model_type")
    for adapter in ADAPTERS:
        if adapter.model_type == model_type:
            return adapter
    own, *others = ADAPTERS
    also = ", ".join(f"{a.model_type!r} {a.loads}".rstrip() for a in others)
    raise CheckpointError(
        f"{source} describes a {model_type!r} model, not {own.label}: gpt2es loads Hugging Face models with "
        f"model_type {own.model_type!r}" + (f" (and {also})" if also else "")
    )
