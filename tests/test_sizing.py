"""--preset auto: the model size fitted to --max-time from measured speeds, and its learning rate."""

import json

import pytest
import yaml

from gpt2es_cli.config import DEFAULT_LR, ModelConfig, TrainConfig
from gpt2es_cli.training import TrainStart, load_resume_checkpoint, resume_config, train
from gpt2es_cli.training import plan as plan_module
from gpt2es_cli.training.memory import parameter_count
from gpt2es_cli.training.sizing import (
    LADDER,
    TOKENS_PER_PARAMETER,
    TRAIN_SHARE,
    auto_lr,
    choose_model_size,
    shape_name,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def speeds_by_width(table):
    """A fake measurement: tokens per second by width, and the widths it was asked for."""
    asked = []

    def measure(model: ModelConfig):
        asked.append(model.n_embd)
        return table.get(model.n_embd)

    return measure, asked


def block_params(width):
    layers, heads, _, positions = next(s for s in LADDER if s[2] == width)
    return parameter_count(ModelConfig(n_layer=layers, n_head=heads, n_embd=width, n_positions=positions))[1]


def test_the_largest_model_that_gets_enough_tokens_per_parameter_wins():
    seconds = 900.0
    train = TRAIN_SHARE * seconds
    # Speeds such that 4x256 clears the rule (easily: small must be timed) and small just misses it.
    speeds = {
        128: 1.0e5,
        256: 10 * TOKENS_PER_PARAMETER * block_params(256) / train,
        384: 0.99 * TOKENS_PER_PARAMETER * block_params(384) / train,
        512: 1.0,
    }
    measure, asked = speeds_by_width(speeds)
    choice = choose_model_size(TrainConfig(max_time=seconds), 32768, 0.0, measure)
    assert choice.reason == "time" and shape_name(choice.model) == "4x256"
    assert choice.model.vocab_size == 32768 and choice.model.n_positions == 256
    assert choice.lr == pytest.approx(auto_lr(256)) == pytest.approx(DEFAULT_LR * 3)
    # 8x512 is never timed: small's speed (an upper bound for it) already rules it out
    assert asked == [128, 256, 384]
    assert [c.name for c in choice.candidates][:4] == ["2x128", "4x256", "small", "8x512"]
    assert choice.candidates[3].tokens_per_second is None
    assert choice.chosen.tokens == pytest.approx(speeds[256] * train)


def test_a_long_budget_picks_larger_models_and_memory_stops_the_ladder():
    measure, asked = speeds_by_width({w: 1e9 for w in (128, 256, 384, 512, 768)})  # gpt2-medium does not fit
    choice = choose_model_size(TrainConfig(max_time=3600.0), 50257, 0.0, measure)
    assert shape_name(choice.model) == "gpt2" and choice.model.n_positions == 1024
    assert asked == [128, 256, 384, 512, 768, 1024]
    assert [c.fits for c in choice.candidates][-3:] == [False, False, False]


def test_a_tiny_budget_still_gets_the_smallest_model_and_a_given_lr_is_kept():
    measure, _ = speeds_by_width({128: 1.0, 256: 1.0})
    choice = choose_model_size(TrainConfig(max_time=60.0, lr=1e-3), 32768, 0.0, measure)
    assert shape_name(choice.model) == "2x128" and choice.lr is None


def test_without_max_time_auto_is_small_untimed():
    measure, asked = speeds_by_width({})
    choice = choose_model_size(TrainConfig(), 32768, 0.1, measure)
    assert choice.reason == "no_time" and shape_name(choice.model) == "small" and asked == []
    assert choice.model.dropout == 0.1 and choice.lr is None


def test_a_run_with_auto_trains_the_measured_choice_records_it_and_resumes(train_dataset, tmp_path, monkeypatch):
    picked = ModelConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32)

    def fake_choose(config, vocab_size, world_size):
        from gpt2es_cli.training.sizing import SizeChoice

        return SizeChoice(model=picked, lr=2e-3, reason="time")

    monkeypatch.setattr(plan_module, "_choose_size", fake_choose)
    config = TrainConfig(data=str(train_dataset), out=str(tmp_path / "run"), batch_size=2, max_time=30.0,
                         max_steps=6, eval_interval=3, eval_batches=1, sample_tokens=0, device="cpu")
    events = []
    summary = train(config, subscribers=[events.append])
    start = next(e for e in events if isinstance(e, TrainStart))
    assert start.size_choice is not None and start.config.n_embd == 16 and start.config.lr == 2e-3
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["preset"], saved["n_layer"], saved["n_embd"], saved["lr"]) == ("auto", 1, 16, 2e-3)
    assert summary.step == 6
    checkpoint = load_resume_checkpoint(tmp_path / "run")
    resumed = train(resume_config(checkpoint, {"max_steps": 8}), resume=checkpoint)
    assert resumed.step == 8
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 8


def test_auto_times_real_steps_on_this_machine(train_dataset, tmp_path):
    """The real path: plan_run times the smallest candidates' steps on this CPU, the run trains the
    choice, and the header says what was chosen and why."""
    from typer.testing import CliRunner

    from gpt2es_cli.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "-d", str(train_dataset), "-o", str(out), "--max-time", "8s", "--seq-len", "32", "-b", "2",
        "--eval-batches", "1", "--sample-tokens", "0", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "preset auto: 2x128 (2 blocks x 128 wide, lr 0.0036)" in result.output
    assert f"the smallest, as none trains {TOKENS_PER_PARAMETER:g}+ tokens per block parameter in" in result.output
    assert "| timed in " in result.output and " tok/s (" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["n_layer"], saved["n_embd"], saved["lr"]) == (2, 128, pytest.approx(auto_lr(128)))
