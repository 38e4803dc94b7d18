"""inference.load_model: the one loader `sample` and `eval` share."""

import pytest
import torch

from gpt2es_cli.checkpoint import save_model
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.inference import load_model
from gpt2es_cli.quantize import Int8Linear

IDX = torch.tensor([[1, 5, 9, 42, 7, 3]])


def test_float32_is_the_checkpoint_exactly(tiny_checkpoint, tiny_model, tiny_tokenizer):
    ready = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    assert ready.precision == "float32" and ready.dtype == torch.float32 and ready.quantize is None
    assert ready.default is None and ready.checkpoint.path == tiny_checkpoint
    assert ready.tokenizer.to_json() == tiny_tokenizer.to_json()
    assert not ready.model.training
    with torch.no_grad():
        torch.testing.assert_close(ready.model(IDX), tiny_model(IDX), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16"])
def test_bfloat16_casts_the_weights(tiny_checkpoint, tiny_model, dtype):
    ready = load_model(tiny_checkpoint, device="cpu", dtype=dtype)
    assert ready.precision == "bfloat16"
    assert {p.dtype for p in ready.model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(ready.model(IDX).float(), tiny_model(IDX), atol=0.1, rtol=0.05)


def test_int8_quantizes_the_linears(tiny_checkpoint, tiny_model):
    ready = load_model(tiny_checkpoint, device="cpu", quantize="int8")
    assert ready.precision == "bfloat16 int8"
    assert any(isinstance(m, Int8Linear) for m in ready.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in ready.model.modules())
    with torch.no_grad():
        logits = ready.model(IDX).float()
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, tiny_model(IDX), atol=0.15, rtol=0.1)


def test_no_path_is_the_newest_run(tmp_path, monkeypatch, tiny_model, tiny_config, tiny_tokenizer):
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "runs" / "demo" / "last.pth", tiny_model, tiny_config, tiny_tokenizer)
    ready = load_model(None, device="cpu", dtype="float32")
    assert str(ready.default) == "runs/demo/last.pth (the newest run under runs/)"
    assert ready.checkpoint.path.name == "last.pth"


def test_options_are_checked_before_any_file_is_read(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        load_model(missing, device="cpu", dtype="float64")
    with pytest.raises(ConfigError, match="unknown quantization 'int4'"):
        load_model(missing, device="cpu", quantize="int4")
    with pytest.raises(ConfigError, match="int8 computes in bfloat16"):
        load_model(missing, device="cpu", dtype="float32", quantize="int8")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(missing, device="cpu")


def test_a_checkpoint_without_tokenizer_is_refused(tmp_path, tiny_model, tiny_config):
    path = tmp_path / "notok.pth"
    save_model(path, tiny_model, tiny_config, None)
    with pytest.raises(CheckpointError, match="carries no tokenizer"):
        load_model(path, device="cpu")
