"""--untied-head: a separate output projection, trained, sampled, resumed, exported to
GPT2LMHeadModel with tie_word_embeddings false (same logits) and imported back exactly."""

import json

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import Checkpoint, load_checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import GenerationConfig, ModelConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.generate import generate
from gpt2es_cli.hf import export_hf, load_hf_checkpoint
from gpt2es_cli.model import GPT2
from gpt2es_cli.training import load_resume_checkpoint, resume_config, train
from gpt2es_cli.training.memory import parameter_count

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def untied(vocab_size=300):
    return ModelConfig.from_preset("tiny", vocab_size=vocab_size, tie_word_embeddings=False)


def test_an_untied_head_is_its_own_matrix_and_counted():
    torch.manual_seed(0)
    tied, free = GPT2(ModelConfig.from_preset("tiny", vocab_size=300)), GPT2(untied())
    assert free.lm_head.weight is not free.wte.weight and tied.lm_head.weight is tied.wte.weight
    assert free.num_parameters() == tied.num_parameters() + 300 * 32
    assert parameter_count(free.config)[0] == sum(p.numel() for p in free.parameters())
    assert free.parameter_counts()["head"] == 300 * 32 and "head" not in tied.parameter_counts()
    assert free.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)  # GPT-2's init


def test_train_sample_and_resume_with_an_untied_head(train_dataset, tmp_path):
    config = tiny_run(train_dataset, tmp_path / "run", untied_head=True, max_steps=4, eval_interval=2)
    train(config)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt.model_config.tie_word_embeddings is False
    assert not torch.equal(ckpt.model_state["lm_head.weight"], ckpt.model_state["wte.weight"])
    model = ckpt.build_model()
    greedy = GenerationConfig(max_new_tokens=12, temperature=0, seed=0)
    cached = generate(model, [1, 2, 3], greedy, None)
    uncached = generate(model, [1, 2, 3], greedy, None, use_cache=False)
    assert torch.equal(torch.as_tensor(cached), torch.as_tensor(uncached))
    resumed = load_resume_checkpoint(tmp_path / "run")
    with pytest.raises(ConfigError, match="cannot change --untied-head"):
        resume_config(resumed, {"untied_head": False})
    summary = train(resume_config(resumed, {"max_steps": 6}), resume=resumed)
    assert summary.step == 6
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "run" / "last.pth"), "--json"])
    assert result.exit_code == 0 and '"tie_word_embeddings": false' in result.stdout


def test_untied_export_matches_transformers_and_imports_back(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = untied(tiny_tokenizer.vocab_size)
    model = GPT2(config)
    ckpt = Checkpoint(config, model.state_dict(), tiny_tokenizer.to_json())
    out = export_hf(ckpt, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    idx = torch.tensor([tiny_tokenizer.encode("Había una vez un niño que soñaba")[:20]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model.eval()(idx), atol=1e-4, rtol=0)
        assert torch.equal(hf.generate(idx, max_new_tokens=8, do_sample=False)[0, idx.shape[1]:],
                           torch.as_tensor(generate(model, idx[0].tolist(), GenerationConfig(
                               max_new_tokens=8, temperature=0, stop_at_eos=False), None)[0]))
    back = load_hf_checkpoint(out)
    assert back.model_config.tie_word_embeddings is False
    for key, value in ckpt.model_state.items():
        assert torch.equal(back.model_state[key], value), key
