"""Device, dtype and autocast selection: the one place that decides them."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

from gpt2es_cli.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_dtype(name: str, option: str = "--dtype") -> torch.dtype:
    """float32 / bfloat16 / float16 (or fp32 / bf16 / fp16) -> the torch dtype; one-line error otherwise."""
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r} for {option}: choose float32, bfloat16 or float16 (fp32, bf16, fp16)")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def configure_backends(device: torch.device) -> None:
    """Fast matmul settings for training on `device`: TF32 tensor cores on CUDA (Ampere+)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass(frozen=True)
class Precision:
    """Where to run and how: parameters stay fp32; `autocast_dtype` is used inside autocast."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    """None for plain fp32; bfloat16 or float16 under autocast."""

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.autocast_dtype == torch.float16

    @property
    def name(self) -> str:
        return "float32" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch.")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; others must be available."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but Apple MPS is not available: use --device cpu")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast and correct here (CUDA Ampere+, CPUs, MPS on recent torch)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("cpu", "mps")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86: AVX512-BF16 or AMX; Arm: the BF16
    extension). Elsewhere bf16 matmuls are emulated and can be slower than float32."""
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        # On Arm this asks oneDNN whether the CPU has the BF16 extension.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private torch probes: absent means no
        return False


INFERENCE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def select_inference_dtype(device: torch.device, dtype: str = "auto", quantize: str | None = None) -> torch.dtype:
    """The dtype to cast a model's weights to for inference (--dtype; no autocast).

    auto: bfloat16 on CUDA GPUs that support it (float16 on older ones) and on CPUs with native
    bf16 instructions (`cpu_has_native_bf16`); float32 elsewhere (other CPUs, Apple MPS).
    With `quantize="int8"` the activations are bfloat16 (the int8 kernel is fast only there):
    auto gives bfloat16 and any other explicit dtype is refused.
    """
    key = DTYPE_ALIASES.get(dtype, dtype)
    if key not in INFERENCE_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: choose {', '.join(INFERENCE_DTYPES)}")
    if quantize == "int8":
        if key not in ("auto", "bfloat16"):
            raise ConfigError(f"--quantize int8 computes in bfloat16: use --dtype auto or bfloat16, not {dtype}")
        if not bf16_supported(device):
            raise ConfigError(
                f"--quantize int8 computes in bfloat16, which this {device.type} device lacks: drop --quantize"
            )
        return torch.bfloat16
    if key == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    chosen = DTYPES[key]
    if chosen == torch.bfloat16 and not bf16_supported(device):
        raise ConfigError(f"bfloat16 is not supported on this {device.type} device: use --dtype float16 or float32")
    return chosen


def select_precision(device: str = "auto", amp: bool = False, dtype: str | None = None) -> Precision:
    """Resolve --device, --amp and --dtype into one Precision.

    --amp picks bf16 where supported, else fp16 (older GPUs, with a GradScaler); on a CPU without
    native bf16 it stays float32 (emulated bf16 is slower). --dtype forces
    one of float32/bfloat16/float16 (bf16/fp16/fp32 also accepted).
    """
    dev = resolve_device(device)
    if dtype is not None:
        chosen = parse_dtype(dtype)
        if chosen == torch.bfloat16 and not bf16_supported(dev):
            raise ConfigError(f"bfloat16 is not supported on this {dev.type} device: use --dtype float16")
        if chosen == torch.float16 and dev.type == "cpu":
            raise ConfigError("float16 autocast is not useful on the CPU: use --dtype bfloat16")
        return Precision(dev, None if chosen == torch.float32 else chosen)
    if not amp:
        return Precision(dev, None)
    if dev.type == "cpu":
        # Without native bf16 the CPU emulates it, slower than float32: --amp then stays fp32.
        return Precision(dev, torch.bfloat16 if cpu_has_native_bf16() else None)
    return Precision(dev, torch.bfloat16 if bf16_supported(dev) else torch.float16)
