"""--position learned|sinusoidal|rope: each trains, decodes with the KV cache exactly as without it,
resumes, and (sinusoidal, rope) scores windows longer than the trained context; sinusoidal exports
to GPT2LMHeadModel with the same logits."""

import json

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import GenerationConfig, ModelConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.generate import generate
from gpt2es_cli.hf import export_hf, load_hf_checkpoint
from gpt2es_cli.model import GPT2, apply_rope, rope_angles, sinusoidal_table
from gpt2es_cli.training import load_resume_checkpoint, resume_config, train

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
POSITIONS = ["learned", "sinusoidal", "rope"]


def tiny(position, vocab_size=300, **kw):
    return ModelConfig.from_preset("tiny", vocab_size=vocab_size, position=position, **kw)


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_decoding_equals_uncached(position):
    torch.manual_seed(0)
    model = GPT2(tiny(position)).eval()
    greedy = GenerationConfig(max_new_tokens=58, temperature=0, seed=0, stop_at_eos=False)  # to the 64 context
    cached = generate(model, [5, 6, 7, 8], greedy, None)
    uncached = generate(model, [5, 6, 7, 8], greedy, None, use_cache=False)
    assert cached == uncached
    longer = generate(model, [5, 6, 7, 8], GenerationConfig(max_new_tokens=150, temperature=0, stop_at_eos=False), None)
    assert len(longer[0]) == 150  # past the context: the window slides


def test_only_learned_positions_have_a_table_and_stop_at_the_context():
    assert "wpe.weight" in GPT2(tiny("learned")).state_dict()
    for position in ("sinusoidal", "rope"):
        model = GPT2(tiny(position)).eval()
        assert not any(k.startswith("wpe") for k in model.state_dict())
        with torch.no_grad():
            assert model(torch.randint(0, 300, (1, 3 * 64))).shape == (1, 192, 300)  # 3x the trained context
    with pytest.raises(ValueError, match="exceeds the context of 64"):
        GPT2(tiny("learned"))(torch.randint(0, 300, (1, 65)))


def test_sinusoidal_table_is_the_transformers_encoding():
    table = sinusoidal_table(torch.arange(50), 8)
    assert torch.allclose(table[0], torch.tensor([0.0, 1.0] * 4))
    pos, i = 7, 1
    assert table[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (2 * i / 8))).item())
    assert table[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (2 * i / 8))).item())


def test_rope_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cos_m, sin_m = rope_angles(torch.tensor([m]), 16, 10000.0)
        cos_n, sin_n = rope_angles(torch.tensor([n]), 16, 10000.0)
        return (apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum().item()

    assert score(10, 3) == pytest.approx(score(107, 100), rel=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 9), rel=1e-2)
    with pytest.raises(ConfigError, match="rope needs an even head width"):
        ModelConfig(n_embd=30, n_head=2, position="rope").validate()


@pytest.mark.parametrize("position", ["sinusoidal", "rope"])
def test_train_resume_and_long_context_eval(train_dataset, tmp_path, position):
    out = tmp_path / position
    train(tiny_run(train_dataset, out, position=position, max_steps=4, eval_interval=2, sample_tokens=4))
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt.model_config.position == position
    resumed = load_resume_checkpoint(out)
    with pytest.raises(ConfigError, match="cannot change --position"):
        resume_config(resumed, {"position": "learned"})
    assert train(resume_config(resumed, {"max_steps": 6}), resume=resumed).step == 6
    result = runner.invoke(app, ["eval", str(out / "last.pth"), "--data", str(train_dataset), "--context", "128",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["tokens"] > 0
    shown = runner.invoke(app, ["inspect", str(out / "last.pth"), "--json"])
    assert f'"position": "{position}"' in shown.stdout


def test_learned_positions_refuse_a_longer_eval_context(tmp_path, tiny_checkpoint, train_dataset):
    result = runner.invoke(app, ["eval", str(tiny_checkpoint), "--data", str(train_dataset), "--context", "128"])
    assert result.exit_code == 1 and "longer than the model's 64 learned positions" in result.stderr


def test_sinusoidal_exports_to_gpt2_with_the_same_logits(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = GPT2(tiny("sinusoidal", tiny_tokenizer.vocab_size)).eval()
    out = export_hf(Checkpoint(model.config, model.state_dict(), tiny_tokenizer.to_json()), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    idx = torch.tensor([tiny_tokenizer.encode("Había una vez un niño que soñaba con el mar")[:30]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_rope_exports_to_gpt_neox_with_the_same_logits_and_imports_back(tmp_path, tiny_tokenizer, tied):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tiny("rope", tiny_tokenizer.vocab_size, tie_word_embeddings=tied, rope_theta=500.0, activation="gelu")
    model = GPT2(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped weight would show
        for name, param in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    ckpt = Checkpoint(config, model.state_dict(), tiny_tokenizer.to_json())
    out = export_hf(ckpt, tmp_path / "hf")
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "gpt_neox" and saved["use_parallel_residual"] is False
    assert saved["tie_word_embeddings"] is tied
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    ids = tiny_tokenizer.encode("¿Dónde está la señora Muñoz? Había una vez un niño que soñaba con el mar")[:40]
    idx = torch.tensor([ids, ids[::-1]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-4, rtol=0)
        theirs = hf.generate(idx[:1], max_new_tokens=12, do_sample=False)[0, idx.shape[1]:].tolist()
    ours = generate(model, ids, GenerationConfig(max_new_tokens=12, temperature=0, stop_at_eos=False), None)[0]
    assert theirs == ours
    back = load_hf_checkpoint(out)
    assert back.model_config == config
    for key, value in ckpt.model_state.items():
        assert torch.equal(back.model_state[key], value), key
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("Había una vez")["input_ids"] == tiny_tokenizer.encode("Había una vez")


def test_cli_exports_a_rope_run(tmp_path, tiny_tokenizer):
    rope = GPT2(tiny("rope", tiny_tokenizer.vocab_size))
    path = tmp_path / "rope.pth"
    save_checkpoint(path, Checkpoint(rope.config, rope.state_dict(), tiny_tokenizer.to_json()))
    result = runner.invoke(app, ["export", str(path), str(tmp_path / "rope-hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rope-hf" / "model.safetensors").exists()
