"""Inference precision: --dtype casting, int8 weight-only quantization, and the dtype choice."""

import copy

import pytest
import torch
import torch.nn as nn

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.device import cpu_has_native_bf16, select_inference_dtype
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.generate import GenerationConfig, generate
from gpt2es_cli.model import GPT2
from gpt2es_cli.quantize import Int8Linear, check_quantize, prepare_for_inference

CPU = torch.device("cpu")
GREEDY = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=30)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT2(ModelConfig.from_preset("tiny", vocab_size=300)).eval()


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.float() - exact).norm() / exact.norm()).item()


def test_int8_linear_is_the_dequantized_matmul():
    torch.manual_seed(0)
    linear = nn.Linear(64, 300)
    q = Int8Linear.from_weight(linear.weight, linear.bias)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (300, 64) and q.scales.shape == (300,)
    # Symmetric per-row rounding puts every weight within half a step (max |row| / 127, the step
    # itself rounded to bf16) of its int8 value.
    dequantized = q.weight.float() * q.scales.float()[:, None]
    error = (dequantized - linear.weight).abs() / q.scales.float()[:, None]
    assert 0.4 < error.max() <= 0.5 + 1e-2
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        y = q(x.bfloat16())
        expected = x @ (q.weight.float() * q.scales.float()[:, None]).T + q.bias.float()
    assert y.shape == (2, 5, 300) and y.dtype == torch.bfloat16
    # bf16 activations and output: ~3 significant digits.
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)


def test_int8_logits_stay_close_to_float32(model):
    quantized = prepare_for_inference(copy.deepcopy(model), torch.bfloat16, "int8")
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert isinstance(quantized.lm_head, Int8Linear)  # the tied head has its own int8 copy...
    assert quantized.wte.weight.dtype == torch.bfloat16  # ...and the embedding stays float
    idx = torch.randint(0, 300, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact, approx = model(idx), quantized(idx)
    # Rounding to 255 levels per row gives each weight an rms error of ~0.2% of the row's
    # largest weight, and bf16 keeps 8 bits of mantissa: both add up to ~1% of the logits'
    # norm here (measured 0.8%). 2% catches a wrong scale or layout, which gives >10%.
    assert relative_error(approx, exact) < 0.02
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9


def test_int8_generation_with_cache_and_past_the_context(model):
    quantized = prepare_for_inference(copy.deepcopy(model), torch.bfloat16, "int8")
    cfg = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=70)  # context is 64
    out = generate(quantized, [5, 17, 42], cfg, eos_id=0, num_samples=2)
    assert len(out[0]) == 70 and out[0] == out[1] and all(0 <= t < 300 for t in out[0])
    short = GenerationConfig(temperature=0, stop_at_eos=False, max_new_tokens=8)
    assert len(generate(quantized, [5, 17, 42], short, eos_id=0, use_cache=False)[0]) == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inference(model, dtype):
    half = prepare_for_inference(copy.deepcopy(model), dtype)
    assert {p.dtype for p in half.parameters()} == {dtype}
    idx = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(half(idx), model(idx)) < 0.02
    cache = half.new_cache(1)
    with torch.no_grad():
        half(idx, cache)
    assert cache.keys[0].dtype == dtype  # the KV cache follows the weights: half the memory
    assert len(generate(half, [1, 2, 3], GREEDY, eos_id=0)[0]) == 30


def test_float32_greedy_is_unchanged_by_prepare(model):
    same = prepare_for_inference(copy.deepcopy(model), torch.float32)
    assert generate(same, [7, 8], GREEDY, eos_id=0) == generate(model, [7, 8], GREEDY, eos_id=0)


def test_select_inference_dtype():
    auto = select_inference_dtype(CPU)
    assert auto == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert select_inference_dtype(CPU, "float32") == torch.float32
    assert select_inference_dtype(CPU, "bf16") == torch.bfloat16
    assert select_inference_dtype(CPU, "float16") == torch.float16
    assert select_inference_dtype(CPU, "auto", "int8") == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        select_inference_dtype(CPU, "float64")
    with pytest.raises(ConfigError, match="int8 computes in bfloat16"):
        select_inference_dtype(CPU, "float32", "int8")


def test_check_quantize():
    assert check_quantize("none") is None and check_quantize("int8") == "int8"
    with pytest.raises(ConfigError, match="unknown quantization 'int4': choose none or int8"):
        check_quantize("int4")
