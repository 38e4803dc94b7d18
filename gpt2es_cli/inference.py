"""One inference loader: path + device + dtype + quantize -> a ready model and its tokenizer.

`sample`, `eval` (and a future `serve`) load through `load_model`, so they agree on what a
CHECKPOINT is (artifacts.py), on the dtype `auto` means (device.select_inference_dtype) and on
how weights are cast or quantized (quantize.prepare_for_inference): the weights themselves are
cast, so no float32 weight is read again as it would be under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2es_cli.artifacts import Chosen, checkpoint_or_default, open_checkpoint
from gpt2es_cli.checkpoint import Checkpoint
from gpt2es_cli.device import dtype_name, resolve_device, select_inference_dtype
from gpt2es_cli.model import GPT2
from gpt2es_cli.quantize import check_quantize, prepare_for_inference
from gpt2es_cli.tokenizer import Tokenizer


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


def load_model(
    path: str | Path | None,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    revision: str | None = None,
) -> ReadyModel:
    """Open a CHECKPOINT (None: the newest run under runs/) and make it ready for inference.

    `device` is auto/cpu/cuda/mps; `dtype` auto/float32/bfloat16/float16 (bf16/fp16/fp32
    accepted; auto is bfloat16 where it is fast, float32 elsewhere); `quantize` none or int8.
    The options are checked before any file is read. The checkpoint must carry a tokenizer.
    `revision`: the branch, tag or commit of a Hub model id.
    """
    quantize_mode = check_quantize(quantize)
    target = resolve_device(device)
    inference_dtype = select_inference_dtype(target, dtype, quantize_mode)
    path, chosen = checkpoint_or_default(path, revision=revision)
    checkpoint = open_checkpoint(path)
    tokenizer = checkpoint.tokenizer()
    model = prepare_for_inference(checkpoint.build_model(target), inference_dtype, quantize_mode)
    return ReadyModel(model, tokenizer, checkpoint, target, inference_dtype, quantize_mode, chosen)
