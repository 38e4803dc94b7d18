"""Hugging Face interop: the weight map, logits parity, round trips, tokenizer parity, the CLI."""

import dataclasses
import json
import subprocess
import sys
from importlib.resources import files

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from gpt2es_cli.artifacts import open_checkpoint
from gpt2es_cli.checkpoint import Checkpoint, save_checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.hf import export_hf, key_map, load_hf_checkpoint
from gpt2es_cli.hf.registry import ADAPTERS, adapter_for_config, adapter_for_hf_config
from gpt2es_cli.model import GPT2
from gpt2es_cli.tokenizer import EOS_TOKEN

transformers = pytest.importorskip("transformers")

SPANISH = "¿Dónde está la señora Muñoz? ¡Está en el jardín! Había una vez un niño... ÁÉÍÓÚ ü ñandú"


def _checkpoint(tokenizer, activation: str = "gelu_new", seed: int = 0) -> Checkpoint:
    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, activation=activation)
    torch.manual_seed(seed)
    model = GPT2(config)
    with torch.no_grad():  # non-trivial LayerNorms, so a swapped weight/bias would show
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_f"):
                p.add_(0.1 * torch.randn_like(p))
    return Checkpoint(config, model.state_dict(), tokenizer.to_json())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    """One float32 export of the tiny model, shared by the read-only tests."""
    ckpt = _checkpoint(tiny_tokenizer)
    return ckpt, export_hf(ckpt, tmp_path_factory.mktemp("hf") / "model")


def _tiny_hf_model(activation: str = "gelu_new", vocab_size: int = 300):
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(config).eval()


def test_key_map_covers_every_weight_once(tiny_config):
    rows = key_map(tiny_config.n_layer)
    ours = [r[0] for r in rows]
    hf = [r[1] for r in rows]
    assert len(set(ours)) == len(ours) and len(set(hf)) == len(hf)
    assert set(ours) | {"lm_head.weight"} == set(GPT2(tiny_config).state_dict())
    hf_model = _tiny_hf_model(vocab_size=tiny_config.vocab_size)
    assert set(hf) | {"lm_head.weight"} == set(hf_model.state_dict())


@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_exported_logits_match_ours(tmp_path, tiny_tokenizer, activation):
    ckpt = _checkpoint(tiny_tokenizer, activation)
    out = export_hf(ckpt, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == activation
    assert config["model_type"] == "gpt2" and config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == config["bos_token_id"] == tiny_tokenizer.eos_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    ours = ckpt.build_model()
    idx = torch.tensor([tiny_tokenizer.encode(SPANISH)[:40], tiny_tokenizer.encode(SPANISH[::-1])[:40]])
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), atol=1e-4, rtol=0)


def test_round_trip_is_exact(exported):
    ckpt, out = exported
    back = open_checkpoint(out)
    assert back.source == "huggingface" and back.path == out
    assert back.model_config == ckpt.model_config
    assert back.tokenizer_json == ckpt.tokenizer_json
    assert back.model_state.keys() == ckpt.model_state.keys()
    for key, value in ckpt.model_state.items():
        assert torch.equal(back.model_state[key], value), key
    back.build_model()  # loads strictly into our GPT2


def test_export_writes_every_file(exported):
    _, out = exported
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json", "README.md",
    }  # fmt: skip
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left over
    assert "lm_head.weight" not in load_file(out / "model.safetensors")  # tied, as transformers saves
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["pad_token_id"] == generation["eos_token_id"] is not None
    assert "n_layer | 2" in (out / "README.md").read_text()


def test_autotokenizer_matches_ours(exported, tiny_tokenizer, spanish_texts):
    _, out = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in [SPANISH, *spanish_texts, f"fin{EOS_TOKEN}inicio", "sí , no . ¿ y ? n't"]:
        ids = tiny_tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == tiny_tokenizer.decode(ids) == text
    assert hf_tok.eos_token == hf_tok.bos_token == hf_tok.unk_token == EOS_TOKEN
    assert hf_tok.eos_token_id == tiny_tokenizer.eos_id


def test_gpt2_tokenizer_export_matches_transformers(tmp_path, gpt2_tokenizer_dir, spanish_texts):
    """With the original GPT-2 vocabulary, the export tokenizes as transformers' GPT2Tokenizer."""
    from gpt2es_cli.tokenizer import Tokenizer

    ours = Tokenizer.from_path(gpt2_tokenizer_dir)
    config = ModelConfig.from_preset("tiny", vocab_size=ours.vocab_size, n_layer=1)
    out = export_hf(Checkpoint(config, GPT2(config).state_dict(), ours.to_json()), tmp_path / "gpt2")
    exported = transformers.AutoTokenizer.from_pretrained(out)
    reference = transformers.GPT2Tokenizer.from_pretrained(gpt2_tokenizer_dir)
    for text in [SPANISH, *spanish_texts]:
        assert exported(text)["input_ids"] == reference(text)["input_ids"] == ours.encode(text), text
    assert exported.eos_token_id == reference.eos_token_id == 50256


def test_pipeline_generates_text(exported):
    _, out = exported
    generate = transformers.pipeline("text-generation", model=str(out), tokenizer=str(out))
    result = generate("Había una vez", max_new_tokens=8, do_sample=False)
    text = result[0]["generated_text"]
    assert text.startswith("Había una vez") and len(text) > len("Había una vez")


def test_failed_export_leaves_previous_one_intact(tmp_path, exported, monkeypatch):
    ckpt, _ = exported
    out = export_hf(ckpt, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr("gpt2es_cli.hf.export._write_tokenizer", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_hf(ckpt, out, force=True, dtype="float16")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16", torch.bfloat16])
def test_export_in_bfloat16(tmp_path, exported, dtype):
    ckpt, _ = exported
    out = export_hf(ckpt, tmp_path / "bf16", dtype=dtype)
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert "bfloat16 weights" in (out / "README.md").read_text()
    back = load_hf_checkpoint(out)
    assert back.model_state["wte.weight"].dtype == torch.float32
    torch.testing.assert_close(
        back.model_state["wte.weight"], ckpt.model_state["wte.weight"], atol=1e-2, rtol=1e-2
    )


def test_unknown_export_dtype_is_refused_before_writing(tmp_path, exported):
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        export_hf(exported[0], tmp_path / "x", dtype="float64")
    assert not (tmp_path / "x").exists()


def test_load_model_saved_by_transformers(tmp_path):
    hf = _tiny_hf_model("gelu")
    hf.save_pretrained(tmp_path / "saved")
    ckpt = open_checkpoint(tmp_path / "saved")
    assert ckpt.tokenizer_json is None and ckpt.model_config.activation == "gelu"
    ours = ckpt.build_model()
    idx = torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_load_old_style_bin_without_prefix_or_lm_head(tmp_path, exported):
    """GPT2Model-style keys, causal-mask buffers, pytorch_model.bin and a tokenizer from
    vocab.json + merges.txt: all read as the same checkpoint."""
    ckpt, out = exported
    old = tmp_path / "old"
    old.mkdir()
    config = json.loads((out / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "activation_function": "gelu_pytorch_tanh"}))
    state = {k.removeprefix("transformer."): v for k, v in load_file(out / "model.safetensors").items()}
    n = ckpt.model_config.n_positions
    for i in range(ckpt.model_config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, old / "pytorch_model.bin")
    ckpt.tokenizer().backend.model.save(str(old))  # vocab.json + merges.txt
    back = open_checkpoint(old)
    assert back.model_config == ckpt.model_config
    for key, value in ckpt.model_state.items():
        assert torch.equal(back.model_state[key], value), key
    assert back.tokenizer().encode(SPANISH) == ckpt.tokenizer().encode(SPANISH)


def _hf_dir(tmp_path, exported, **config_changes):
    _, out = exported
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((out / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **config_changes}))
    return bad


@pytest.mark.parametrize(
    ("changes", "weights", "message"),
    [
        ({"model_type": "llama"}, True, "'llama' model, not GPT-2"),
        ({"n_inner": 100}, True, "n_inner 100 is not 4 * n_embd (128)"),
        ({"activation_function": "relu"}, True, "activation_function 'relu' is not supported"),
        ({"n_embd": 64}, True, "has shape (400, 32) but config.json implies (400, 64)"),
        ({}, False, "has config.json but no weights"),
    ],
)
def test_bad_hf_directories_give_clear_errors(tmp_path, exported, changes, weights, message):
    bad = _hf_dir(tmp_path, exported, **changes)
    if weights:
        save_file(load_file(exported[1] / "model.safetensors"), str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(bad)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_corrupt_weights_and_untied_head_are_refused(tmp_path, exported):
    bad = _hf_dir(tmp_path, exported)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        open_checkpoint(bad)
    weights = load_file(exported[1] / "model.safetensors")
    weights["lm_head.weight"] = torch.randn_like(weights["transformer.wte.weight"])
    save_file(weights, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from the token embedding"):
        open_checkpoint(bad)


def test_cli_export_and_refusal(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.stdout and "AutoModelForCausalLM.from_pretrained" in result.stdout
    assert (out / "tokenizer.json").is_file()
    marker = (out / "config.json").stat().st_mtime_ns

    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(out)])
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.output and (out / "config.json").stat().st_mtime_ns == marker

    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(out), "--force", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float16}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(out), "--force", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert "(bfloat16)" in result.stdout

    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(out), "--force", "--dtype", "int4"])
    assert result.exit_code == 1 and "unknown dtype 'int4'" in result.stderr

    result = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path), "--force"])
    assert result.exit_code == 1 and "holds no model" in result.stderr
    assert tiny_checkpoint.is_file()  # --force never wipes a directory that is not an export


def test_cli_export_from_hf_dir_and_bad_config(tmp_path, exported):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(exported[1]), str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert load_file(tmp_path / "again" / "model.safetensors").keys() == load_file(
        exported[1] / "model.safetensors"
    ).keys()

    bad = _hf_dir(tmp_path, exported, model_type="bert")
    result = runner.invoke(app, ["export", str(bad), str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "'bert' model, not GPT-2" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_cli_export_without_tokenizer_warns(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    path = tmp_path / "bare.pth"
    save_checkpoint(path, Checkpoint(tiny_config, tiny_model.state_dict(), None))
    result = CliRunner().invoke(app, ["export", str(path), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "no tokenizer" in result.stderr and not (tmp_path / "out" / "tokenizer.json").exists()
    tok = tmp_path / "tok.json"
    tiny_tokenizer.save(tok)
    result = CliRunner().invoke(
        app, ["export", str(path), str(tmp_path / "out"), "--force", "--tokenizer", str(tok)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "tokenizer.json").read_text() == tiny_tokenizer.to_json()


@pytest.mark.parametrize(
    ("position", "architecture"),
    [("learned", "GPT2LMHeadModel"), ("sinusoidal", "GPT2LMHeadModel"), ("rope", "GPTNeoXForCausalLM")],
)
def test_the_registry_picks_the_architecture_by_position_and_model_type(position, architecture):
    config = ModelConfig.from_preset("tiny", position=position)
    adapter = adapter_for_config(config)
    assert adapter.architecture == architecture and adapter.supports(config)
    assert adapter_for_hf_config({"model_type": adapter.model_type}) is adapter
    assert [a for a in ADAPTERS if a.supports(config)] == [adapter]  # one architecture per model


def test_an_unknown_architecture_is_one_line_naming_the_registry():
    with pytest.raises(CheckpointError) as e:
        adapter_for_hf_config({"model_type": "llama"}, "x/config.json")
    message = str(e.value)
    assert message.startswith("x/config.json describes a 'llama' model") and "\n" not in message
    assert all(repr(a.model_type) in message for a in ADAPTERS)
    with pytest.raises(CheckpointError, match="no Hugging Face architecture gpt2es writes") as e:
        adapter_for_config(dataclasses.replace(ModelConfig.from_preset("tiny"), position="alibi"))
    assert all(a.architecture in str(e.value) for a in ADAPTERS)


def test_the_model_card_template_ships_with_the_package_and_is_filled(exported):
    assert files("gpt2es_cli.hf").joinpath("model_card.md").is_file()
    card = (exported[1] / "README.md").read_text(encoding="utf-8")
    assert "$" not in card and "as a `GPT2LMHeadModel` (float32 weights, tied" in card


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, gpt2es_cli.hf; print(sorted(m for m in ('transformers', 'safetensors') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
