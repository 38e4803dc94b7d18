"""Read a local Hugging Face model directory as a Checkpoint: config, weights (one file or shards) and tokenizer.

The architecture comes from the registry (by config.json's model_type); the weight files and
the tokenizer are read the same way for every architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt2es_cli.checkpoint import Checkpoint, safe_torch_load
from gpt2es_cli.errors import CheckpointError, Gpt2esError, first_line
from gpt2es_cli.fileio import read_json_object
from gpt2es_cli.hf.registry import adapter_for_hf_config
from gpt2es_cli.tokenizer import Tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_hf_checkpoint(path: str | Path) -> Checkpoint:
    """Load a local Hugging Face model directory (config.json + model.safetensors or
    pytorch_model.bin, optionally sharded, + optional tokenizer) as a Checkpoint."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: it is not a Hugging Face model directory")
    data = read_json_object(config_file, CheckpointError, "download or export the model again")
    adapter = adapter_for_hf_config(data, config_file)
    config = adapter.from_hf_config(data, config_file)
    model_state = adapter.from_hf_state_dict(_read_hf_weights(path), config, f"the weights in {path}")
    tokenizer_json = None
    if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        try:
            tokenizer = Tokenizer.from_path(path)
        except Gpt2esError as e:
            raise CheckpointError(f"{path}: its tokenizer cannot be used ({e})") from None
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{config.vocab_size}: the directory mixes files from different models"
            )
        tokenizer_json = tokenizer.to_json()
    return Checkpoint(
        model_config=config,
        model_state=model_state,
        tokenizer_json=tokenizer_json,
        source="huggingface",
        path=path,
    )


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory's weights: one file or shards listed in an index."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _read_weight_file(path / name)
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise CheckpointError(f"{index} is not a valid weight index: the file is damaged") from None
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise CheckpointError(f"{path} lacks {shard}, listed in {index.name}: copy it there")
                state.update(_read_weight_file(path / shard))
            return state
    raise CheckpointError(f"{path} has config.json but no weights: expected {' or '.join(WEIGHT_FILES)}")


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if file.stat().st_size == 0:
            raise CheckpointError(f"{file} is empty: the file is truncated or was never written")
        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"cannot read {file}: not a valid safetensors file ({first_line(e, 120)})"
            ) from None
    state = safe_torch_load(file, "cpu")  # weights_only=True: never unpickles code
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state_dict of tensors")
    return state
