"""Training: schedules, optimizer groups, settings, the loop, resume, recovery, and the CLI."""

import json
import math
import os
import signal
from dataclasses import replace
from io import StringIO

import pytest
import torch
from conftest import make_dataset, tiny_run
from rich.console import Console
from typer.testing import CliRunner

from gpt2es_cli import loss as loss_module
from gpt2es_cli.checkpoint import load_checkpoint, save_model
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig, TrainConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.loss import cross_entropy
from gpt2es_cli.model import GPT2
from gpt2es_cli.settings import load_config_file, parse_duration
from gpt2es_cli.tokenizer import Tokenizer
from gpt2es_cli.training import (
    Recovery,
    StepReport,
    TrainStart,
    ValidationDone,
    load_resume_checkpoint,
    plan_run,
    resume_config,
    train,
)
from gpt2es_cli.training import loop as loop_module
from gpt2es_cli.training.optim import parameter_groups
from gpt2es_cli.training.schedule import learning_rate

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dataset(train_dataset):
    return train_dataset


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


# --- schedules and optimizer -----------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_schedules_warm_up_then_end_where_they_should(schedule):
    lr = lambda s: learning_rate(s, lr=1.0, min_lr=0.1, total_steps=100, warmup_steps=10, schedule=schedule)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert all(lr(s) <= lr(s + 1) for s in range(9))
    end = 1.0 if schedule == "constant" else 0.1
    assert lr(99) == pytest.approx(end) and lr(500) == pytest.approx(end)
    assert all(lr(s) >= lr(s + 1) - 1e-12 for s in range(10, 120))


def test_wsd_is_flat_until_its_decay_fraction_and_cosine_is_halfway_at_midpoint():
    wsd = lambda s: learning_rate(s, lr=1.0, min_lr=0.0, total_steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2)  # noqa: E731
    assert wsd(79) == 1.0 and wsd(80) < 1.0 and wsd(89) == pytest.approx(0.5)
    cos = learning_rate(54, lr=1.0, min_lr=0.0, total_steps=100, warmup_steps=10, schedule="cosine")
    assert cos == pytest.approx(0.5, abs=0.02)


def test_weight_decay_only_on_matrices_and_tied_weights_counted_once(tiny_model):
    decay, no_decay = parameter_groups(tiny_model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    counted = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert counted == tiny_model.num_parameters()
    assert any(p is tiny_model.wte.weight for p in decay["params"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_torch(monkeypatch, dtype):
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", 7 * 50)  # 7 rows a chunk: 30 rows end mid-chunk
    torch.manual_seed(0)
    base = (3 * torch.randn(2, 15, 50)).to(dtype)
    targets = torch.randint(0, 50, (2, 15))
    ours = base.clone().requires_grad_()
    ref = base.clone().requires_grad_()
    loss = cross_entropy(ours, targets)
    expected = torch.nn.functional.cross_entropy(ref.float().view(-1, 50), targets.view(-1))
    torch.testing.assert_close(loss, expected)
    (2 * loss).backward()
    (2 * expected).backward()
    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad, ref.grad)
    summed = cross_entropy(base, targets, reduction="sum")
    torch.testing.assert_close(summed, expected.detach() * 30)


@pytest.mark.parametrize("autocast", [False, True])
def test_linear_cross_entropy_matches_logits_then_loss(monkeypatch, autocast):
    monkeypatch.setitem(loss_module.LINEAR_CHUNK_ELEMENTS, "cpu", 7 * 50)  # 7 rows a chunk: 30 rows end mid-chunk
    torch.manual_seed(0)
    hidden = torch.randn(2, 15, 16)
    weight = torch.randn(50, 16) * 0.5
    targets = torch.randint(0, 50, (2, 15))
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused = loss_module.linear_cross_entropy(h1, w1, targets)
        plain = cross_entropy(torch.nn.functional.linear(h2, w2), targets)
    tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {}
    torch.testing.assert_close(fused, plain, **tol)
    (3 * fused).backward()
    (3 * plain).backward()
    assert h1.grad.dtype == w1.grad.dtype == torch.float32
    torch.testing.assert_close(h1.grad, h2.grad, **tol)
    torch.testing.assert_close(w1.grad, w2.grad, **tol)
    with torch.no_grad():  # no gradients made: the loss alone
        summed = loss_module.linear_cross_entropy(hidden, weight, targets, reduction="sum")
    exact = torch.nn.functional.cross_entropy((hidden @ weight.t()).view(-1, 50), targets.view(-1), reduction="sum")
    torch.testing.assert_close(summed, exact)
    with pytest.raises(ValueError, match="unknown reduction"):
        loss_module.linear_cross_entropy(hidden, weight, targets, reduction="none")


def test_a_frozen_head_gets_no_weight_gradient_and_the_same_input_gradient(monkeypatch):
    """LoRA freezes the tied head: the fused loss then skips its (V, C) weight gradient entirely."""
    monkeypatch.setitem(loss_module.LINEAR_CHUNK_ELEMENTS, "cpu", 7 * 50)
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(2, 15, 16), torch.randn(50, 16) * 0.5, torch.randint(0, 50, (2, 15))
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    frozen, trained = weight.clone(), weight.clone().requires_grad_()
    loss_module.linear_cross_entropy(h1, frozen, targets).backward()
    loss_module.linear_cross_entropy(h2, trained, targets).backward()
    assert frozen.grad is None and trained.grad is not None
    torch.testing.assert_close(h1.grad, h2.grad, atol=0, rtol=0)


def test_model_loss_with_targets_is_the_loss_of_its_logits(tiny_model):
    torch.manual_seed(0)
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 12))
    y = torch.randint(0, tiny_model.config.vocab_size, (2, 12))
    fused = tiny_model(x, targets=y)
    fused.backward()
    grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad(set_to_none=True)
    plain = cross_entropy(tiny_model(x), y)
    plain.backward()
    torch.testing.assert_close(fused, plain)
    for name, p in tiny_model.named_parameters():  # the tied matrix gets both its embedding and head parts
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    tiny_model.zero_grad(set_to_none=True)  # the model is shared by the session's tests
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(x, targets=y, reduction="sum"), plain.detach() * y.numel())


# --- settings ---------------------------------------------------------------------------------


def test_train_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        TrainConfig(batch_size=0, lr=-1.0, schedule="zigzag", preset="huge", min_lr=None, beta2=1.5).validate()
    message = str(e.value)
    for word in ("--batch-size must be >= 1", "--lr must be > 0", "--schedule must be one of", "--preset", "--beta2"):
        assert word in message
    with pytest.raises(ConfigError) as e:
        TrainConfig(lr=float("nan"), grad_clip=float("inf"), max_time=float("nan"), weight_decay=-0.0 - 1).validate()
    for word in ("--lr must be a finite number", "--grad-clip must be a finite", "--max-time must be a finite",
                 "--weight-decay must be >= 0"):
        assert word in str(e.value)


def test_config_files_toml_and_yaml_and_unknown_keys(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nmax_steps = 30\nlr = 1\nmax_time = "1h30m"\n', encoding="utf-8")
    config = TrainConfig.from_dict(load_config_file(toml))
    assert (config.preset, config.max_steps, config.lr, config.max_time) == ("tiny", 30, 1.0, 5400.0)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train:\n  batch_size: 2\n  schedule: wsd\n", encoding="utf-8")
    assert TrainConfig.from_dict(load_config_file(yaml_file)).schedule == "wsd"
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) bach_size \(did you mean batch_size\?\); the settings are: data, out"):
        TrainConfig.from_dict({"bach_size": 2})
    with pytest.raises(ConfigError, match="max-steps .did you mean max_steps"):
        TrainConfig.from_dict({"max-steps": 2})
    bad = tmp_path / "bad.toml"
    bad.write_text("preset = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400 and parse_duration(12) == 12.0
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration("soon")


# --- the loop ---------------------------------------------------------------------------------


def test_train_writes_a_complete_run(dataset, tmp_path, tiny_tokenizer):
    events = []
    summary = train(tiny_run(dataset, tmp_path / "run", max_steps=20), subscribers=[events.append])
    run = tmp_path / "run"
    assert summary.stop_reason == "max_steps" and summary.step == 20
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "last.pth", "best.pth"):
        assert (run / name).is_file(), name
    assert isinstance(events[0], TrainStart)
    steps = [e for e in events if isinstance(e, StepReport)]
    evals = [e for e in events if isinstance(e, ValidationDone)]
    assert [e.step for e in steps] == list(range(1, 21))
    assert [e.step for e in evals] == [4, 8, 12, 16, 20]
    assert evals[0].sample.startswith("Había una vez")
    assert steps[-1].smoothed_loss < steps[0].loss  # it learns
    assert summary.best_val_loss == min(e.val_loss for e in evals)
    # Checkpoints load with weights_only and carry what sample/resume need.
    raw = torch.load(run / "last.pth", weights_only=True)
    assert raw["training"]["step"] == 20 and raw["training"]["data"]["seq_len"] == 64
    best = load_checkpoint(run / "best.pth")
    assert best.training is None and best.tokenizer().vocab_size == tiny_tokenizer.vocab_size
    assert len(records(run, "train")) == 20 and len(records(run, "eval")) == 5
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_budgets_tokens_epochs_and_time(dataset, tmp_path):
    by_tokens = train(tiny_run(dataset, tmp_path / "a", max_steps=None, max_tokens=1000, eval_interval=0))
    assert by_tokens.total_steps == math.ceil(1000 / (4 * 64)) and by_tokens.stop_reason == "max_tokens"
    train_tokens = json.loads((dataset / "meta.json").read_text())["splits"]["train"]["tokens"]
    by_epochs = train(tiny_run(dataset, tmp_path / "b", max_steps=None, epochs=0.05, eval_interval=0))
    assert by_epochs.total_steps == math.ceil(0.05 * train_tokens / 256) and by_epochs.stop_reason == "epochs"
    default = plan_run(TrainConfig(data=str(dataset), out=str(tmp_path / "d"), preset="tiny", batch_size=4))
    assert default.budget == "epochs" and default.total_steps == math.ceil(train_tokens / 256)
    assert default.warmup_steps == max(1, default.total_steps // 20) and default.config.warmup_steps is None
    by_time = train(tiny_run(dataset, tmp_path / "c", max_steps=1000, max_time=1e-6))
    assert by_time.stop_reason == "max_time" and by_time.step < 1000
    assert (tmp_path / "c" / "last.pth").is_file()


def test_interrupted_then_resumed_equals_uninterrupted(dataset, tmp_path):
    # Dropout and gradient accumulation on, so RNG and accumulation state must be restored too.
    config = tiny_run(dataset, tmp_path / "whole", max_steps=10, batch_size=2, global_batch=4, dropout=0.1,
                      eval_interval=3, save_interval=100)
    whole = train(config)

    def ctrl_c_at_step_4(event):
        if isinstance(event, StepReport) and event.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    stopped = train(replace(config, out=str(cut)), subscribers=[ctrl_c_at_step_4])
    assert stopped.stop_reason == "interrupted" and stopped.step == 5  # the step in flight completes
    result = runner.invoke(app, ["train", "--resume", str(cut)])
    assert result.exit_code == 0, result.output
    assert "resuming at step 5" in result.stdout

    losses = [r["loss"] for r in records(tmp_path / "whole", "train")]
    resumed = [r["loss"] for r in records(cut, "train")]
    assert len(resumed) == 10
    torch.testing.assert_close(resumed, losses, rtol=1e-6, atol=1e-7)
    a, b = load_checkpoint(tmp_path / "whole" / "last.pth"), load_checkpoint(cut / "last.pth")
    for key, value in a.model_state.items():
        torch.testing.assert_close(b.model_state[key], value, rtol=1e-6, atol=1e-7)
    assert [r["val_loss"] for r in records(cut, "eval")] == pytest.approx(
        [r["val_loss"] for r in records(tmp_path / "whole", "eval")], rel=1e-6
    )
    assert whole.step == 10


def test_a_resume_mid_log_interval_logs_what_the_uninterrupted_run_logs(dataset, tmp_path, monkeypatch):
    # Logged every 4 steps, stopped after step 6: the step-8 record averages steps 5-8 in both runs.
    config = tiny_run(dataset, tmp_path / "whole", max_steps=10, log_interval=4, eval_interval=0, save_interval=100)
    train(config)
    original = loop_module._Trainer._optimizer_step

    def stepping(self):
        lr = original(self)
        if self.step == 5:  # seen at the next step, which completes
            os.kill(os.getpid(), signal.SIGINT)
        return lr

    monkeypatch.setattr(loop_module._Trainer, "_optimizer_step", stepping)
    cut = tmp_path / "cut"
    stopped = train(replace(config, out=str(cut)))
    monkeypatch.setattr(loop_module._Trainer, "_optimizer_step", original)
    assert stopped.stop_reason == "interrupted" and stopped.step == 6
    checkpoint = load_resume_checkpoint(cut)
    train(resume_config(checkpoint, {}), resume=checkpoint)
    whole = [(r["step"], r["loss"]) for r in records(tmp_path / "whole", "train")]
    resumed = [(r["step"], r["loss"]) for r in records(cut, "train")]
    assert [s for s, _ in whole] == [4, 8, 10]
    assert [s for s, _ in resumed] == [4, 8, 10]  # the stop at step 6 is shown, not recorded
    assert dict(resumed)[8] == pytest.approx(dict(whole)[8], rel=1e-6)
    assert dict(resumed)[10] == pytest.approx(dict(whole)[10], rel=1e-6)


def test_a_nan_rolls_back_lowers_the_lr_and_training_goes_on(dataset, tmp_path, nan_at):
    nan_at(lambda n: n == 6)
    events = []
    summary = train(tiny_run(dataset, tmp_path / "run", max_steps=10, schedule="constant", warmup_steps=0,
                             save_interval=4), subscribers=[events.append])
    recoveries = [e for e in events if isinstance(e, Recovery)]
    assert len(recoveries) == 1 and recoveries[0].step == 6 and recoveries[0].restored_step == 4
    assert summary.stop_reason == "max_steps" and summary.step == 10 and summary.recoveries == 1
    lrs = {r["step"]: r["lr"] for r in records(tmp_path / "run", "train")}
    assert lrs[4] == pytest.approx(3e-3) and lrs[10] == pytest.approx(1.5e-3)
    assert all(math.isfinite(r["loss"]) for r in records(tmp_path / "run", "train"))


def test_persistent_nan_stops_with_a_good_checkpoint_and_a_clear_message(dataset, tmp_path, nan_at):
    nan_at(lambda n: n > 5)
    run = tmp_path / "run"
    args = ["train", "--data", str(dataset), "--out", str(run), "--preset", "tiny", "--batch-size", "4",
            "--max-steps", "20", "--save-interval", "4", "--eval-interval", "0", "--nan-retries", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "rollbacks" in result.stderr and "--resume" in result.stderr and "Traceback" not in result.output
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt.training.step == 4
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


def test_keep_last_keeps_the_newest_numbered_checkpoints(dataset, tmp_path):
    train(tiny_run(dataset, tmp_path / "run", max_steps=12, save_interval=2, keep_last=2, eval_interval=0))
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*.pth")) == ["step-0000010.pth", "step-0000012.pth"]
    assert load_checkpoint(tmp_path / "run" / "step-0000010.pth").training.step == 10


def test_init_from_starts_from_the_checkpoint_weights(dataset, tmp_path, tiny_checkpoint):
    train(tiny_run(dataset, tmp_path / "ft", init_from=str(tiny_checkpoint), max_steps=1, lr=1e-12, muon_lr=1e-12,
                   eval_interval=0, weight_decay=0.0))
    start, tuned = load_checkpoint(tiny_checkpoint), load_checkpoint(tmp_path / "ft" / "last.pth")
    for key, value in start.model_state.items():
        torch.testing.assert_close(tuned.model_state[key], value, rtol=0, atol=1e-6)


# --- the command ------------------------------------------------------------------------------


def test_cli_trains_with_a_config_file_and_flags_winning(dataset, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('preset = "tiny"\nmax_steps = 50\nbatch_size = 2\neval_interval = 3\nlog_interval = 2\n',
                   encoding="utf-8")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(cfg), "-d", str(dataset), "-o", str(run), "--max-steps", "6"])
    assert result.exit_code == 0, result.output
    assert "step 6/6" in result.stdout and "eval step 3" in result.stdout and "sample:" in result.stdout
    assert "sample with: gpt2es sample" in result.stdout
    saved = (run / "config.yaml").read_text(encoding="utf-8")
    assert "max_steps: 6" in saved and "batch_size: 2" in saved and "seq_len: 64" in saved


def test_cli_refuses_to_overwrite_a_run_unless_forced(dataset, tmp_path):
    run = tmp_path / "run"
    base = ["train", "-d", str(dataset), "-o", str(run), "-p", "tiny", "--max-steps", "2", "--eval-interval", "0"]
    assert runner.invoke(app, base).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = runner.invoke(app, base)
    assert result.exit_code == 1 and "already holds a run" in result.stderr and "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert runner.invoke(app, [*base, "--force"]).exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seq-len", "65"], "longer than the model's context"),
        (["--batch-size", "4", "--global-batch", "6"], "must be a multiple of --batch-size (4), e.g. 4 or 8"),
        (["--n-positions", "4096", "--seq-len", "4000"], "fewer than one window"),
        (["--schedule", "zigzag", "--lr", "-1"], "--schedule must be one of"),
        (["--max-time", "soon"], "invalid duration"),
    ],
)
def test_cli_bad_settings_are_one_line_errors(dataset, tmp_path, extra, message):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "-d", str(dataset), "-o", str(run), "-p", "tiny", "--max-steps", "1", *extra])
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not run.exists()


def test_cli_missing_dataset_and_missing_config_file(tmp_path):
    result = runner.invoke(app, ["train", "-d", str(tmp_path / "nope"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 1 and "gpt2es prepare" in result.stderr
    result = runner.invoke(app, ["train", "-c", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_cli_validation_split_too_short(tmp_path, tiny_tokenizer, spanish_texts):
    data = make_dataset(tmp_path / "d", tiny_tokenizer, spanish_texts[:1], repeats=20, val_repeats=1)
    result = runner.invoke(app, ["train", "-d", str(data), "-o", str(tmp_path / "run"), "-p", "tiny"])
    assert result.exit_code == 1 and "val.bin" in result.stderr and "--eval-interval 0" in result.stderr


def test_cli_resume_refuses_another_architecture_or_a_weights_only_file(dataset, tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", "-d", str(dataset), "-o", str(run), "-p", "tiny", "--max-steps", "2"]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(run), "--n-layer", "3", "--max-steps", "4"])
    assert result.exit_code == 1 and "cannot change --n-layer" in result.stderr
    assert "(the run has n_layer=2)" in result.stderr  # the tiny preset's, not the unset setting's None
    result = runner.invoke(app, ["train", "--resume", str(run / "best.pth"), "--max-steps", "4"])
    assert result.exit_code == 1 and "no training state" in result.stderr and "--init-from" in result.stderr
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 1 and "already finished" in result.stderr


def test_cli_resume_on_another_dataset_is_refused(dataset, tmp_path, tiny_tokenizer, spanish_texts):
    run = tmp_path / "run"
    train(tiny_run(dataset, run, max_steps=2, eval_interval=0))
    other = make_dataset(tmp_path / "other", tiny_tokenizer, spanish_texts[::-1])
    result = runner.invoke(app, ["train", "--resume", str(run), "--data", str(other), "--max-steps", "4"])
    assert result.exit_code == 1 and "not the dataset" in result.stderr


def test_cli_init_from_with_another_tokenizer_is_refused(tmp_path, tiny_checkpoint, spanish_texts):
    other = Tokenizer.train(spanish_texts * 2, vocab_size=300, min_frequency=1)
    data = make_dataset(tmp_path / "other", other, spanish_texts)
    result = runner.invoke(app, ["train", "-d", str(data), "-o", str(tmp_path / "run"), "--init-from", str(tiny_checkpoint)])
    assert result.exit_code == 1 and "another tokenizer" in result.stderr
    result = runner.invoke(app, ["train", "-d", str(data), "-o", str(tmp_path / "run"),
                                 "--init-from", str(tiny_checkpoint), "--n-layer", "4"])
    assert result.exit_code == 1 and "cannot change the architecture" in result.stderr


def test_resume_from_a_checkpoint_of_another_architecture_is_refused(dataset, tmp_path, tiny_tokenizer):
    run = tmp_path / "run"
    train(tiny_run(dataset, run, max_steps=2, eval_interval=0))
    # Same run, but its weights replaced by a wider model's: the library refuses it too.
    ckpt = load_checkpoint(run / "last.pth")
    wide = ModelConfig.from_preset("tiny", vocab_size=tiny_tokenizer.vocab_size, n_embd=64)
    save_model(run / "last.pth", GPT2(wide), wide, tiny_tokenizer, training=ckpt.training)
    result = runner.invoke(app, ["train", "--resume", str(run), "--max-steps", "4"])
    assert result.exit_code == 1 and "cannot resume" in result.stderr and "n_embd=64" in result.stderr


def test_the_header_says_which_budget_sets_the_steps(dataset, tmp_path, monkeypatch):
    from gpt2es_cli.cli import train_display as train_cli

    start = TrainStart(run_dir=tmp_path, config=TrainConfig(), num_parameters=10**6, device="cpu",
                       precision="float32", world_size=1, accum_steps=1, tokens_per_step=2048, total_steps=415,
                       budget="epochs", train_tokens=850_000, start_step=0, warmup_steps=20)
    header = train_cli.TrainDisplay(live=False)._header
    assert "415 steps (1 epoch) | lr 0.0006 cosine, warmup 20" in header(start)
    assert "1,230 steps (2.5 epochs)" in header(replace(start, total_steps=1230, config=TrainConfig(epochs=2.5)))
    assert "2,000 steps (--max-steps)" in header(replace(start, total_steps=2000, budget="max_steps"))
    fitted = replace(start, budget="max_time", total_steps=520, max_time=600.0)
    assert "520 steps (fitted to 10m 00s)" in header(fitted)
    fitting = replace(fitted, fit_time=True, warmup_steps=None, cap_steps=5131, cap_budget="epochs")
    assert "steps fitted to 10m 00s after the first ones, at most 5,131 (1 epoch)" in header(fitting)
    assert "warmup 5% of the steps" in header(fitting)


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_panel_fits_the_terminal_and_keeps_the_bar_on_its_own_line(monkeypatch, width):
    import re

    from gpt2es_cli.cli import train_display as train_cli

    out = StringIO()
    monkeypatch.setattr(train_cli, "console", Console(file=out, force_terminal=True, width=width, color_system=None))
    display = train_cli.TrainDisplay(live=True)
    with display:
        display(StepReport(step=50, total_steps=60, loss=4.2544, smoothed_loss=4.4130, lr=1e-4, grad_norm=3.412,
                           tokens_seen=102400, epoch=0.1, tokens_per_second=1234.0, mfu=0.42, elapsed=3.0, eta=3.0,
                           grad_clip=1.62, clipped=2))
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).splitlines()
    panel = [line for line in final if line.strip()][-4:]  # the last frame: bar, then three rows of figures
    assert all(len(line) <= width for line in panel), panel
    assert "━" in panel[0] and "83.3%" in panel[0] and "step" not in panel[0]
    text = "\n".join(panel)
    for piece in ("step 50/60", "loss 4.2544", "grad 3.412 (2 clipped at 1.6)", "1,234 tok/s", "eta 0:00:03"):
        assert piece in text, (piece, panel)


def test_live_display_renders_on_a_terminal(monkeypatch):
    from gpt2es_cli.cli import train_display as train_cli

    out = StringIO()
    monkeypatch.setattr(train_cli, "console", Console(file=out, force_terminal=True, width=120))
    display = train_cli.TrainDisplay(live=True)
    with display:
        display(StepReport(step=5, total_steps=10, loss=3.2, smoothed_loss=3.3, lr=1e-3, grad_norm=0.5,
                           tokens_seen=1000, epoch=0.1, tokens_per_second=1234.0, mfu=0.42, elapsed=3.0, eta=3.0))
        display(ValidationDone(step=5, tokens_seen=1000, val_loss=3.1, val_perplexity=22.2, best=True,
                               sample="Había", elapsed=3.0))
    text = out.getvalue()
    for piece in ("3.2000", "1,234 tok/s", "mfu 42.0%", "val loss", "22.20", "best", "sample:"):
        assert piece in text, piece


def test_loss_plot_ticks_read_as_counts():
    from gpt2es_cli.training.subscribers.plot import short_count

    assert [short_count(x) for x in (0, 500, 400_000, 1_200_000, 3e9)] == ["0", "500", "400k", "1.2M", "3G"]


def test_loss_plot_log_scale_sets_both_axes_to_log(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpt2es_cli.training.subscribers.plot import plot_loss_curve

    axes = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (axes.append(fig.axes[0]), real_close(fig)))
    records = [{"type": "train", "step": s, "tokens": 64 * s, "loss": 6 / s ** 0.3, "smoothed_loss": 6 / s ** 0.3}
               for s in range(1, 50)] + [{"type": "eval", "step": 49, "tokens": 64 * 49, "val_loss": 2.0}]
    plot_loss_curve(records, tmp_path / "linear.png")
    plot_loss_curve(records, tmp_path / "log.png", scale="log")
    assert [(a.get_xscale(), a.get_yscale()) for a in axes] == [("linear", "linear"), ("log", "log")]
    assert (tmp_path / "log.png").read_bytes()[:4] == b"\x89PNG"
    assert TrainConfig.from_dict({"plot_scale": "log"}).plot_scale == "log"
    with pytest.raises(ConfigError, match="--plot-scale must be one of linear, log"):
        TrainConfig.from_dict({"plot_scale": "cubic"})
