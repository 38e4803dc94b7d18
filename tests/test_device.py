import pytest
import torch

from gpt2es_cli import device as dev
from gpt2es_cli.errors import ConfigError


def test_amp_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    p = dev.select_precision("cpu", amp=True)
    assert p.autocast_dtype == torch.bfloat16 and not p.needs_grad_scaler
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.select_precision("cpu", amp=True).autocast_dtype is None  # emulated bf16 is slower


def test_forced_dtypes_and_errors():
    assert dev.select_precision("cpu", dtype="bf16").autocast_dtype == torch.bfloat16
    assert dev.select_precision("cpu", dtype="float32").autocast_dtype is None
    assert dev.select_precision("cpu").name == "float32"
    with pytest.raises(ConfigError, match="float16 autocast is not useful on the CPU"):
        dev.select_precision("cpu", dtype="float16")
    with pytest.raises(ConfigError, match="unknown dtype"):
        dev.select_precision("cpu", dtype="float64")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        dev.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            dev.resolve_device("cuda")


def test_autocast_context_runs():
    p = dev.select_precision("cpu", dtype="bfloat16")
    with p.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
