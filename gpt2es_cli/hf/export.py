"""Write a Checkpoint as a Hugging Face model directory: weights, config, tokenizer and model card.

The architecture comes from the registry (the first whose adapter supports the model config);
the files beside the weights are the same for every architecture.
"""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import torch

from gpt2es_cli import __version__
from gpt2es_cli.chat import end_of_turn_id
from gpt2es_cli.checkpoint import Checkpoint, clean_state_dict
from gpt2es_cli.device import dtype_name, parse_dtype
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.fileio import replace_dir, temp_dir_for
from gpt2es_cli.hf.registry import adapter_for_config
from gpt2es_cli.tokenizer import CHAT_TEMPLATE_KEY, EOS_TOKEN, Tokenizer

MODEL_CARD = "model_card.md"
"""The README.md template (string.Template), package data beside this module."""
EXPORT_MARKERS = ("config.json", "adapter_config.json")
"""A file only an export (a model's, or a peft adapter's) holds: --force replaces a directory with one."""


def export_hf(
    checkpoint: Checkpoint,
    out_dir: str | Path,
    force: bool = False,
    dtype: str | torch.dtype = "float32",
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write `checkpoint` as a Hugging Face model directory and return its path.

    The directory holds config.json, generation_config.json, model.safetensors, the tokenizer
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json) and a README.md model card;
    `AutoModelForCausalLM.from_pretrained(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)`
    load it offline. `dtype` is float32, bfloat16 or float16 (or fp32/bf16/fp16, or a torch
    dtype). `tokenizer` overrides the checkpoint's; without either, no tokenizer files
    are written. The directory appears whole or not at all (written beside it, then renamed); an
    existing non-empty `out_dir` is refused unless `force`, and even then unless it holds a
    previous export (config.json).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    weight_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)
    dtype = dtype_name(weight_dtype)
    _check_target(out_dir, force)
    config = checkpoint.model_config
    if tokenizer is None and checkpoint.tokenizer_json is not None:
        tokenizer = checkpoint.tokenizer()
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}: "
            "pass the tokenizer the model was trained with"
        )
    eos_id = tokenizer.eos_id if tokenizer is not None else None
    adapter = adapter_for_config(config)
    tensors = adapter.to_hf_state_dict(clean_state_dict(checkpoint.model_state), config, weight_dtype)
    config_json = adapter.to_hf_config(config, eos_id, dtype)

    tmp = temp_dir_for(out_dir)  # a killed export's temp directory goes first
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config_json)
        _write_json(tmp / "generation_config.json", _generation_config(eos_id, tokenizer))
        if tokenizer is not None:
            _write_tokenizer(tmp, tokenizer, config.n_positions)
        num_params = sum(t.numel() for t in tensors.values())
        (tmp / "README.md").write_text(
            _model_card(checkpoint, adapter.architecture, dtype, num_params, tokenizer), encoding="utf-8"
        )
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"cannot export to {out_dir}: it is a file; give a directory path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise CheckpointError(f"{out_dir} already exists and is not empty: pass --force to replace it")
        if not any((out_dir / name).is_file() for name in EXPORT_MARKERS):  # --force must not wipe an unrelated directory
            raise CheckpointError(
                f"{out_dir} is not empty and holds no model (no config.json) or adapter (no adapter_config.json): "
                "refusing to replace it even with --force; choose another directory"
            )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _generation_config(eos_id: int | None, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    # pad = eos, as our tokenizers have no padding token: generate() then does not warn and pads with it.
    # A chat model's generate() also stops at the end of a turn (ChatML's <|im_end|>).
    end_of_turn = end_of_turn_id(tokenizer) if tokenizer is not None else eos_id
    return {
        "bos_token_id": eos_id,
        "eos_token_id": eos_id if end_of_turn == eos_id else [eos_id, end_of_turn],
        "pad_token_id": eos_id,
        "transformers_version": _transformers_version(),
    }


def _write_tokenizer(directory: Path, tokenizer: Tokenizer, n_positions: int) -> None:
    """tokenizer.json as is, plus the two small files transformers reads beside it.

    tokenizer_class PreTrainedTokenizerFast (TokenizersBackend in transformers 5) loads
    tokenizer.json verbatim; GPT2Tokenizer would rebuild the pipeline from vocab and merges. A chat
    template goes into tokenizer_config.json, where apply_chat_template finds it.
    """
    (directory / "tokenizer.json").write_text(tokenizer.backend.to_str(), encoding="utf-8")  # the library's format
    special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
            "model_max_length": n_positions,
            **({CHAT_TEMPLATE_KEY: tokenizer.chat_template} if tokenizer.chat_template is not None else {}),
        },
    )
    _write_json(directory / "special_tokens_map.json", special)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _model_card(
    checkpoint: Checkpoint, architecture: str, dtype: str, num_params: int, tokenizer: Tokenizer | None
) -> str:
    """README.md: the model card template filled in for this export."""
    c = checkpoint.model_config
    notes = {
        k: v
        for section in (checkpoint.training.scalars() if checkpoint.training else {}, checkpoint.extra or {})
        for k, v in section.items()
        if isinstance(v, (str, int, float, bool))
    }
    if checkpoint.adapter is not None:  # a LoRA run, merged onto its base
        a = checkpoint.adapter
        notes["merged LoRA adapter"] = f"rank {a.rank}, alpha {a.alpha:g}, on the base {a.base.source}"
    tok = (
        f"Byte-level BPE, {tokenizer.vocab_size} ids, `{EOS_TOKEN}` (id {tokenizer.eos_id}) as "
        "bos/eos/unk."
        if tokenizer is not None
        else "No tokenizer was exported with this model."
    )
    template = Template(files(__package__).joinpath(MODEL_CARD).read_text(encoding="utf-8"))
    return template.substitute(
        num_params=f"{num_params:,}",
        origin="converted from a Hugging Face GPT-2"
        if checkpoint.source == "huggingface"
        else f"made with gpt2es {checkpoint.gpt2es_version}",
        version=__version__,
        architecture=architecture,
        dtype=dtype,
        embeddings="tied" if c.tie_word_embeddings else "separate",
        config_rows="\n".join(f"| {k} | {v} |" for k, v in c.to_dict().items()),
        tokenizer=tok,
        exported_from=checkpoint.path.name if checkpoint.path is not None else "an in-memory checkpoint",
        source=checkpoint.source,
        notes="".join(f"\n- {k}: {v}" for k, v in notes.items()),
    )
