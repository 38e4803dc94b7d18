"""LoRA adapter runs exported for transformers + peft: the adapter directory and the merged model."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.artifacts import open_checkpoint
from gpt2es_cli.checkpoint import AdapterBase, AdapterRecord, Checkpoint, save_checkpoint, weights_sha256
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.hf import export_hf
from gpt2es_cli.hf.peft_adapter import export_peft_adapter
from gpt2es_cli.hf.registry import ADAPTERS
from gpt2es_cli.lora import merge
from gpt2es_cli.model import GPT2
from gpt2es_cli.training import train

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

DOCS = Path(__file__).resolve().parent.parent / "docs"
TEXT = "¿Dónde está la señora Muñoz? ¡Está en el jardín! Había una vez un niño que vivía en un pueblo."
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _base(tokenizer, position: str = "learned", n_positions: int | None = None) -> Checkpoint:
    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, position=position, n_positions=n_positions)
    torch.manual_seed(0)
    return Checkpoint(config, GPT2(config).state_dict(), tokenizer.to_json())


def _adapter(config: ModelConfig, rank: int = 4, alpha: float = 8.0, targets=TARGETS, seed: int = 1,
             source: str = "runs/base/best.pth", sha256: str = "0" * 64):
    """A LoRA adapter in our naming with a nonzero B (a trained one; a fresh one has B = 0)."""
    torch.manual_seed(seed)
    shapes = GPT2.state_shapes(config)
    state = {}
    for i in range(config.n_layer):
        for target in targets:
            n_out, n_in = shapes[f"h.{i}.{target}.weight"]
            state[f"h.{i}.{target}.lora_A"] = 0.2 * torch.randn(rank, n_in)
            state[f"h.{i}.{target}.lora_B"] = 0.2 * torch.randn(n_out, rank)
    record = AdapterRecord(
        rank=rank, alpha=alpha, dropout=0.05, targets=tuple(targets),
        base=AdapterBase(source=source, revision=None, sha256=sha256, model_config=config.to_dict()),
    )
    return record, state


def _merged(base: Checkpoint, record, state) -> Checkpoint:
    merged = merge(base.model_state, state, record)
    return Checkpoint(base.model_config, merged, base.tokenizer_json)


def _ids(tokenizer):
    return torch.tensor([tokenizer.encode(TEXT)[:40], tokenizer.encode(TEXT[::-1])[:40]])


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_the_adapter_on_the_base_export_computes_the_merged_model(tmp_path, tiny_tokenizer, one_thread, position):
    base = _base(tiny_tokenizer, position)
    record, state = _adapter(base.model_config)
    base_dir = export_hf(base, tmp_path / "base")
    adapter_dir = export_peft_adapter(record, state, tmp_path / "adapter", tokenizer=tiny_tokenizer)
    merged = _merged(base, record, state)
    idx = _ids(tiny_tokenizer)
    with torch.no_grad():
        ours = merged.build_model()(idx)
        hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
        assert (hf_base(idx).logits - ours).abs().max() > 1e-2  # the adapter changes the model
        model = peft.PeftModel.from_pretrained(hf_base, adapter_dir).eval()
        torch.testing.assert_close(model(idx).logits, ours, atol=1e-4, rtol=0)
        merged_dir = export_hf(merged, tmp_path / "merged")
        plain = transformers.AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        torch.testing.assert_close(plain(idx).logits, ours, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.merge_and_unload()(idx).logits, ours, atol=1e-4, rtol=0)
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= files
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (base_dir / "model.safetensors").stat().st_size / 4
    tok = transformers.AutoTokenizer.from_pretrained(adapter_dir)
    assert tok(TEXT)["input_ids"] == tiny_tokenizer.encode(TEXT)


def test_adapter_config_is_what_peft_reads(tmp_path, tiny_tokenizer):
    base = _base(tiny_tokenizer)
    record, state = _adapter(base.model_config, rank=2, alpha=2.0)
    out = export_peft_adapter(record, state, tmp_path / "adapter")
    data = json.loads((out / "adapter_config.json").read_text())
    assert data["peft_type"] == "LORA" and data["task_type"] == "CAUSAL_LM"
    assert (data["r"], data["lora_alpha"], data["lora_dropout"]) == (2, 2.0, 0.05)
    assert data["fan_in_fan_out"] is True  # GPT2LMHeadModel's projections are Conv1D
    assert data["base_model_name_or_path"] == "runs/base/best.pth"
    assert sorted(data["target_modules"]) == sorted(TARGETS)
    config = peft.PeftConfig.from_pretrained(out)
    assert config.r == 2 and config.fan_in_fan_out and set(config.target_modules) == set(TARGETS)
    from safetensors.torch import load_file

    keys = set(load_file(out / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight" in keys
    assert len(keys) == 2 * len(TARGETS) * base.model_config.n_layer
    card = (out / "README.md").read_text()
    assert "gpt2es export runs/base/best.pth base-hf" in card and "PeftModel.from_pretrained" in card
    assert "$" not in card


def test_the_rope_adapter_names_gpt_neox_layers(tmp_path, tiny_tokenizer):
    base = _base(tiny_tokenizer, "rope")
    record, state = _adapter(base.model_config, targets=("attn.c_attn", "mlp.c_proj"))
    out = export_peft_adapter(record, state, tmp_path / "adapter")
    data = json.loads((out / "adapter_config.json").read_text())
    assert data["fan_in_fan_out"] is False
    assert sorted(data["target_modules"]) == ["attention.query_key_value", "mlp.dense_4h_to_h"]


def test_every_architecture_names_each_linear_layer(tiny_config):
    """linear_modules covers the four projections of every block, for every architecture in the registry."""
    linear = {name for name, m in GPT2(tiny_config).named_modules() if isinstance(m, torch.nn.Linear)}
    linear.discard("lm_head")
    for adapter in ADAPTERS:
        assert set(adapter.linear_modules(tiny_config)) == linear, adapter.label


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("h.0.attn.c_attn.lora_B"), "h.0.attn.c_attn.lora_B is missing"),
        (lambda s: s.update({"h.0.attn.c_attn.lora_A": torch.zeros(3, 32)}), r"shape \(3, 32\), the adapter's rank implies \(4, 32\)"),
        (lambda s: s.update({"wte.lora_A": torch.zeros(4, 32)}), "wte.lora_A is not part of the adapter"),
        (lambda s: s.clear(), r"is missing \(and 15 more\)"),
    ],
)
def test_a_broken_adapter_is_one_line(tmp_path, tiny_tokenizer, change, message):
    base = _base(tiny_tokenizer)
    record, state = _adapter(base.model_config)
    change(state)
    with pytest.raises(CheckpointError, match=message):
        export_peft_adapter(record, state, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_force_replaces_a_previous_export_only(tmp_path, tiny_tokenizer):
    base = _base(tiny_tokenizer)
    record, state = _adapter(base.model_config)
    out = export_peft_adapter(record, state, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="--force"):
        export_peft_adapter(record, state, out)
    export_peft_adapter(record, state, out, force=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="refusing"):
        export_peft_adapter(record, state, other, force=True)
    assert (other / "a.txt").read_text() == "mine"


def _adapter_run(tmp_path, tokenizer, position: str = "learned", n_positions: int | None = None):
    """A base checkpoint file and a run directory whose best.pth is a LoRA adapter on it."""
    base = _base(tokenizer, position, n_positions)
    save_checkpoint(tmp_path / "base.pth", base)
    record, state = _adapter(base.model_config, source=str(tmp_path / "base.pth"),
                             sha256=weights_sha256(base.model_state))
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pth", Checkpoint(base.model_config, state, base.tokenizer_json, adapter=record))
    return base, record, state, run


def test_export_of_an_adapter_checkpoint_writes_the_adapter_directory(tmp_path, tiny_tokenizer, one_thread):
    _, _, _, run = _adapter_run(tmp_path, tiny_tokenizer)
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "adapter")])
    assert result.exit_code == 0, result.output
    assert "LoRA adapter: rank 4" in result.stdout and "PeftModel.from_pretrained" in result.stdout
    assert f"gpt2es export {tmp_path / 'base.pth'} base-hf" in result.stdout
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base.pth") and config["r"] == 4
    assert (tmp_path / "adapter" / "tokenizer.json").is_file()
    result = runner.invoke(app, ["export", str(run), str(tmp_path / "adapter")])
    assert result.exit_code == 1 and "--force" in result.stderr


def test_merge_of_a_whole_model_is_one_line(tmp_path, tiny_checkpoint):
    result = CliRunner().invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "out"), "--merge"])
    assert result.exit_code == 1
    assert "--merge is for a LoRA run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _docs_snippets() -> tuple[str, str]:
    """The fine-tuning page's Python blocks: loading an adapter with peft, and chatting with it
    (the same on both pages)."""
    pages = []
    for lang in ("en", "es"):
        blocks = re.findall(r"```python\n(.*?)```", (DOCS / lang / "fine-tuning.md").read_text(encoding="utf-8"), re.S)
        pages.append((next(b for b in blocks if "PeftModel" in b), next(b for b in blocks if "apply_chat_template" in b)))
    assert pages[0] == pages[1], "the two fine-tuning pages' Python differs"
    return pages[0]


def test_export_merge_writes_the_merged_model_and_the_adapter_export_matches_it(
    tmp_path, tiny_tokenizer, one_thread, monkeypatch
):
    from gpt2es_cli.chat import TEXT_MARKERS

    # A context long enough for the page's generate() calls, and a chat template (an instruction-tuned run's).
    base, record, state, run = _adapter_run(tmp_path, tiny_tokenizer.with_chat_template(TEXT_MARKERS), n_positions=128)
    runner = CliRunner()
    for args in (["export", str(tmp_path / "base.pth"), str(tmp_path / "base-hf")],
                 ["export", str(run), str(tmp_path / "lora-hf")],
                 ["export", str(run), str(tmp_path / "merged"), "--merge"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "GPT2LMHeadModel" in result.stdout
    idx = _ids(tiny_tokenizer)
    with torch.no_grad():
        ours = _merged(base, record, state).build_model()(idx)
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(merged(idx).logits, ours, atol=1e-4, rtol=0)
        # The loading snippet of the fine-tuning page, run as written there (base-hf/, lora-hf/ here),
        # then its chat snippet on the model it loaded.
        monkeypatch.chdir(tmp_path)
        names: dict = {}
        load, chat = _docs_snippets()
        exec(load, names)
        exec(chat, names)
        assert names["output"].shape[1] == names["inputs"]["input_ids"].shape[1] + 60
        model, tokenizer = names["model"].eval(), names["tokenizer"]
        ids = torch.tensor([tokenizer(TEXT)["input_ids"][:40], tokenizer(TEXT[::-1])["input_ids"][:40]])
        torch.testing.assert_close(model(ids).logits, ours, atol=1e-4, rtol=0)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "lora-hf" / "adapter_model.safetensors").stat().st_size * 4 < (
        tmp_path / "merged" / "model.safetensors").stat().st_size


def test_a_trained_lora_run_exports_both_ways(tmp_path, train_dataset, one_thread):
    """`gpt2es train --init-from BASE --lora-rank 4`, then both exports, loaded with transformers and peft."""
    train(tiny_run(train_dataset, tmp_path / "base", max_steps=4, sample_tokens=0))
    runner = CliRunner()
    result = runner.invoke(app, [
        "train", "-d", str(train_dataset), "--init-from", str(tmp_path / "base"), "--lora-rank", "4",
        "-o", str(tmp_path / "lora"), "--batch-size", "4", "--max-steps", "6", "--eval-interval", "3",
        "--sample-tokens", "0", "--device", "cpu", "--lr", "1e-2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    for args in (["export", str(tmp_path / "base"), str(tmp_path / "base-hf")],
                 ["export", str(tmp_path / "lora"), str(tmp_path / "adapter")],
                 ["export", str(tmp_path / "lora"), str(tmp_path / "merged"), "--merge"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    ours = open_checkpoint(tmp_path / "lora")  # what gpt2es samples from: the adapter merged onto its base
    assert ours.adapter is not None and ours.adapter.rank == 4
    assert all(t.abs().max() > 0 for k, t in ours.adapter_state.items() if k.endswith("lora_B"))  # it trained
    tokenizer = ours.tokenizer()
    idx = _ids(tokenizer)[:, :24]
    with torch.no_grad():
        expected = ours.build_model()(idx)
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base-hf").eval()
        model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        torch.testing.assert_close(model(idx).logits, expected, atol=1e-4, rtol=0)
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(merged(idx).logits, expected, atol=1e-4, rtol=0)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base" / "best.pth").resolve())
    assert sorted(config["target_modules"]) == sorted(TARGETS)  # the default targets: c_attn, c_proj, c_fc


def test_an_adapter_on_a_hub_model_names_it_and_its_revision(tmp_path, tiny_tokenizer):
    base = _base(tiny_tokenizer)
    record, state = _adapter(base.model_config, source="DeepESP/gpt2-spanish")
    record = dataclasses.replace(record, base=dataclasses.replace(record.base, revision="v1"))
    out = export_peft_adapter(record, state, tmp_path / "adapter")
    data = json.loads((out / "adapter_config.json").read_text())
    assert (data["base_model_name_or_path"], data["revision"]) == ("DeepESP/gpt2-spanish", "v1")
    card = (out / "README.md").read_text()
    assert "base_model: DeepESP/gpt2-spanish\n" in card
    assert 'AutoModelForCausalLM.from_pretrained("DeepESP/gpt2-spanish", revision="v1")' in card
    assert "gpt2es export DeepESP" not in card  # loaded from the Hub as it is


def test_the_adapter_directory_carries_the_chat_template(tmp_path, tiny_tokenizer):
    """An instruction-tuned adapter's tokenizer files hold its chat template, as a full export's do."""
    from gpt2es_cli.chat import TEXT_MARKERS, render

    base = _base(tiny_tokenizer)
    record, state = _adapter(base.model_config)
    out = export_peft_adapter(record, state, tmp_path / "adapter", tokenizer=tiny_tokenizer.with_chat_template(TEXT_MARKERS))
    messages = [{"role": "user", "content": "¿Dónde está la señora Muñoz?"}]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == render(TEXT_MARKERS, messages, add_generation_prompt=True).text
