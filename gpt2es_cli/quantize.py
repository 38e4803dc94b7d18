"""Weight-only int8 quantization for inference: 4x less weight memory to read per token.

Batch-1 decoding is bound by memory bandwidth: every new token reads every weight once. Storing
the Linear weights (and the tied output head, the largest matrix) as int8 with one scale per
output channel and multiplying with `torch.ops.aten._weight_int8pack_mm` (as gpt-fast does)
reads a quarter of the fp32 bytes. Embeddings and LayerNorms stay in the activation dtype.

Scheme, per output channel n of a weight W (out, in): scale[n] = max|W[n, :]| / 127 and
q[n, k] = round(W[n, k] / scale[n]) in [-127, 127], so W ~= q * scale[:, None].
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gpt2es_cli.errors import ConfigError

QUANTIZE_CHOICES = ("none", "int8")


class Int8Linear(nn.Module):
    """y = x @ (q * scale[:, None]).T + bias, with q int8 (out, in) and one scale per output row.

    Computes in the dtype of `scales`, which `x` must share. On the CPU the kernel is fast only
    in bfloat16 (float32/float16 inputs take a slow path): `select_inference_dtype` picks it.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = weight.size(1)
        self.out_features = weight.size(0)
        self.register_buffer("weight", weight)  # (out, in) int8
        self.register_buffer("scales", scales)  # (out,)
        self.register_buffer("bias", bias)  # (out,) or None

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16
    ) -> Int8Linear:
        """Quantize a float weight (out, in), per output channel, symmetric; compute in `dtype`."""
        w = weight.detach().float()
        # The kernel takes the scales in `dtype`: round them first and quantize with the rounded
        # values, so rounding the scales adds no error of its own.
        scales = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).to(dtype)  # (out,)
        q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scales, None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.weight, self.scales)  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def check_quantize(name: str) -> str | None:
    """Validate --quantize; returns None for 'none'."""
    if name not in QUANTIZE_CHOICES:
        raise ConfigError(f"unknown quantization {name!r}: choose {' or '.join(QUANTIZE_CHOICES)}")
    return None if name == "none" else name


def int8_supported(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this torch build has the int8 weight-only matmul on `device` (tried on a tiny input)."""
    try:
        x = torch.ones(1, 32, dtype=dtype, device=device)
        w = torch.ones(8, 32, dtype=torch.int8, device=device)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(8, dtype=dtype, device=device))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def quantize_int8(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an Int8Linear computing in `dtype`.

    The GPT-2 output head shares its weight with the token embedding: it gets its own int8 copy
    while the embedding (one row read per token) keeps its float weight. Quantize the float32
    model, then cast the rest to `dtype`; `prepare_for_inference` does both. For inference only.
    """
    device = next(model.parameters()).device
    if not int8_supported(device, dtype):
        raise ConfigError(
            f"--quantize int8 is not supported on {device.type} by this torch build: use --dtype bfloat16 instead"
        )
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_weight(linear.weight, linear.bias, dtype))
    return model


def prepare_for_inference(model: nn.Module, dtype: torch.dtype, quantize: str | None = None) -> nn.Module:
    """A float32 model made ready for generation or evaluation: weights cast to `dtype` (so no
    float32 weight is read again, unlike autocast), Linears quantized first when `quantize` is
    'int8'. In place, in eval mode; returns the model. `inference.load_model` picks `dtype` (with
    `select_inference_dtype`) and calls this.
    """
    quantize = check_quantize(quantize or "none")
    if quantize == "int8":
        quantize_int8(model, dtype)
    return model.to(dtype).eval()
