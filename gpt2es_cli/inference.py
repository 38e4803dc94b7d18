"""One inference loader: path + InferenceConfig -> a ready model and its tokenizer.

`sample`, `eval` (and `serve`) load through `load_model`, so they agree on what a CHECKPOINT is
(artifacts.py), on the dtype `auto` means (device.select_inference_dtype) and on how weights are
cast or quantized (quantize.prepare_for_inference): the weights themselves are cast, so no
float32 weight is read again as it would be under autocast. What an unset --dtype means depends
on the purpose (`Purpose`): generating text takes the fast dtype, scoring it and exporting take
float32 (exact scores, the trained weights), and `resolve_dtype` is the one place that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from gpt2es_cli.artifacts import Chosen, checkpoint_or_default, open_checkpoint
from gpt2es_cli.checkpoint import Checkpoint
from gpt2es_cli.config import InferenceConfig
from gpt2es_cli.device import dtype_name, parse_dtype, resolve_device, select_inference_dtype
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.model import GPT2
from gpt2es_cli.quantize import check_quantize, prepare_for_inference
from gpt2es_cli.tokenizer import Tokenizer


class Purpose(str, Enum):
    """What a model is loaded for, which decides what an unset --dtype means."""

    GENERATE = "generate"
    """sample, serve: auto (bfloat16 where it is fast)."""
    SCORE = "score"
    """eval: float32, exact scores (auto with --amp; bfloat16 under int8)."""
    EXPORT = "export"
    """export: float32, the trained weights (auto: the checkpoint's own dtype)."""


def resolve_dtype(settings: InferenceConfig, purpose: Purpose, amp: bool = False) -> str:
    """The --dtype to use for `purpose` (`amp`: eval's --amp, short for --dtype auto)."""
    if amp and settings.dtype not in (None, "auto"):
        raise ConfigError(f"--amp is short for --dtype auto: drop one of --amp and --dtype {settings.dtype}")
    if settings.dtype is not None:
        return settings.dtype
    if purpose is Purpose.GENERATE or amp:
        return "auto"
    if purpose is Purpose.SCORE and settings.quantize == "int8":  # int8 weights compute in bfloat16
        return "auto"
    return "float32"


def export_dtype(settings: InferenceConfig, checkpoint: Checkpoint) -> str:
    """The dtype `export` writes the weights of `checkpoint` in: float32 unless --dtype says
    otherwise; auto keeps the checkpoint's own (its first floating-point weight's)."""
    dtype = resolve_dtype(settings, Purpose.EXPORT)
    if dtype == "auto":
        first = next((t for t in checkpoint.model_state.values() if t.is_floating_point()), None)
        return dtype_name(first.dtype) if first is not None else "float32"
    return dtype_name(parse_dtype(dtype))


def check_export_dtype(settings: InferenceConfig) -> None:
    """Refuse an unknown --dtype for export before any file is read."""
    dtype = resolve_dtype(settings, Purpose.EXPORT)
    if dtype != "auto":
        parse_dtype(dtype)


@dataclass
class ReadyModel:
    """A model loaded for inference: in eval mode, on its device, cast (and quantized)."""

    model: GPT2
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    """The dtype of the weights and activations (bfloat16 under int8 quantization)."""
    quantize: str | None
    """None or 'int8'."""
    default: Chosen | None = None
    """Set when no path was given and the newest run's checkpoint was picked."""

    @property
    def precision(self) -> str:
        """How it computes, in words: 'float32', 'bfloat16', 'bfloat16 int8'."""
        return dtype_name(self.dtype) + (f" {self.quantize}" if self.quantize else "")


def load_model(path: str | Path | None, settings: InferenceConfig | None = None, *,
               purpose: Purpose = Purpose.GENERATE, amp: bool = False, **fields: Any) -> ReadyModel:
    """Open a CHECKPOINT (None: the newest run under runs/) and make it ready for inference.

    `settings` (or its fields as keywords: `load_model(path, device="cpu", dtype="bf16")`) say
    where and how: the device (auto/cpu/cuda/mps), the dtype (auto/float32/bfloat16/float16, or
    bf16/fp16/fp32; unset: as `purpose` says, see resolve_dtype), int8 quantization, the revision
    of a Hub model id. They are checked before any file is read. The checkpoint must carry a
    tokenizer.
    """
    settings = settings or InferenceConfig()
    if fields:
        settings = replace(settings, **fields).validate()
    quantize_mode = check_quantize(settings.quantize)
    target = resolve_device(settings.device)
    inference_dtype = select_inference_dtype(target, resolve_dtype(settings, purpose, amp), quantize_mode)
    path, chosen = checkpoint_or_default(path, revision=settings.revision)
    checkpoint = open_checkpoint(path)
    tokenizer = checkpoint.tokenizer()
    model = prepare_for_inference(checkpoint.build_model(target), inference_dtype, quantize_mode)
    return ReadyModel(model, tokenizer, checkpoint, target, inference_dtype, quantize_mode, chosen)
