"""Optimizers: AdamW's groups, Muon for the hidden matrices beside AdamW, one schedule for both,
and Muon through the loop (loss goes down, exact resume, NaN rollback)."""

import copy
import json
import os
import signal
from dataclasses import replace

import conftest
import pytest
import torch
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import load_checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.model import GPT2
from gpt2es_cli.training import Recovery, StepReport, optim, train
from gpt2es_cli.training import loop as loop_module
from gpt2es_cli.training.optim import MuonWithAdamW, build_optimizer, hidden_matrices, set_learning_rate

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

MUON = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=4e-3, weight_decay=0.1)


def tiny_run(dataset, out, **kw) -> TrainConfig:
    return conftest.tiny_run(dataset, out, **{**dict(sample_tokens=0, optimizer="muon", muon_lr=6e-3), **kw})


def train_losses(run_dir, kind="train", key="loss"):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r[key] for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return GPT2(tiny_config)


def loss_of(model, x):
    logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


# --- the partition ------------------------------------------------------------------------------


def test_the_default_settings_train_with_muon_beside_adamw(model):
    defaults = TrainConfig()
    optimizer = build_optimizer(model, defaults)
    assert isinstance(optimizer, MuonWithAdamW)
    adamw_decay, adamw_no_decay, muon_group = optimizer.param_groups
    assert {id(p) for p in muon_group["params"]} == {id(p) for p in hidden_matrices(model)}
    assert muon_group["lr"] == pytest.approx(defaults.muon_lr)
    assert adamw_decay["lr"] == adamw_no_decay["lr"] == pytest.approx(defaults.peak_lr)


def test_adamw_is_one_plain_adamw_over_every_parameter(model):
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))
    assert type(optimizer) is torch.optim.AdamW
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_parameters()


def test_muon_gets_the_block_matrices_and_adamw_everything_else_once(model):
    optimizer = build_optimizer(model, MUON)
    assert isinstance(optimizer, MuonWithAdamW) and isinstance(optimizer, torch.optim.Optimizer)
    names = {id(p): n for n, p in model.named_parameters()}  # named_parameters() lists the tied head once
    muon = [names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]]
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in optimizer.adamw.param_groups)
    expected_muon = [f"h.{i}.{m}.weight" for i in range(model.config.n_layer)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert sorted(muon) == sorted(expected_muon)
    assert sorted(decay) == ["wpe.weight", "wte.weight"]  # wte is the head too: once, and with AdamW
    assert all(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_f") for n in no_decay)
    every = muon + decay + no_decay
    assert len(every) == len(set(every)) and set(every) == set(names.values())  # none missing, none twice
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_parameters()
    assert [p.dim() for p in hidden_matrices(model)] == [2] * len(expected_muon)

    # The loop sees AdamW's two groups then Muon's, as the same dicts the two optimizers use.
    assert optimizer.param_groups == [*optimizer.adamw.param_groups, *optimizer.muon.param_groups]
    assert all(a is b for a, b in zip(optimizer.param_groups, [*optimizer.adamw.param_groups,
                                                                *optimizer.muon.param_groups], strict=True))
    adamw_decay, adamw_no_decay, muon_group = optimizer.param_groups
    assert (adamw_decay["weight_decay"], adamw_no_decay["weight_decay"], muon_group["weight_decay"]) == (0.1, 0.0, 0.1)
    assert adamw_decay["lr"] == 1e-3 and muon_group["lr"] == 4e-3


def test_every_group_follows_the_schedule_muon_at_its_ratio(model):
    optimizer = build_optimizer(model, MUON)
    for lr in (1e-4, 1e-3, 0.0):
        set_learning_rate(optimizer, lr)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, lr, lr * 4])
        assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(lr * 4)


# --- the combination as one optimizer -----------------------------------------------------------


def test_steps_zero_grad_and_a_state_dict_round_trip(model, tiny_config):
    torch.manual_seed(1)
    x = torch.randint(0, tiny_config.vocab_size, (4, 17))
    optimizer = build_optimizer(model, MUON)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model, x).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())  # both optimizers stepped
    state = copy.deepcopy(optimizer.state_dict())  # load_state_dict adopts the tensors it is given
    assert set(state) == {"adamw", "muon"} and len(state["muon"]["state"]) == len(hidden_matrices(model))

    # A fresh optimizer with another --muon-lr takes the saved state but keeps its own ratio.
    twin = GPT2(tiny_config)
    twin.load_state_dict(model.state_dict())
    other = build_optimizer(twin, replace(MUON, muon_lr=2e-3))
    other.load_state_dict(state)
    assert other.param_groups[2]["lr_ratio"] == pytest.approx(2.0)
    assert all(a is b for a, b in zip(other.param_groups, [*other.adamw.param_groups, *other.muon.param_groups],
                                      strict=True))
    for opt, net in ((optimizer, model), (other, twin)):
        set_learning_rate(opt, 1e-3)
        loss_of(net, x).backward()
    other.param_groups[2]["lr"] = optimizer.param_groups[2]["lr"]  # compare the step itself
    optimizer.step()
    other.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


def test_the_other_optimizers_state_is_refused_in_one_line(model):
    adamw_state = build_optimizer(model, TrainConfig(optimizer="adamw")).state_dict()
    muon_state = build_optimizer(model, MUON).state_dict()
    with pytest.raises(CheckpointError, match="trained with --optimizer adamw"):
        build_optimizer(model, MUON).load_state_dict(adamw_state)
    with pytest.raises(CheckpointError, match="trained with --optimizer muon"):
        build_optimizer(model, TrainConfig(optimizer="adamw")).load_state_dict(muon_state)


def test_grad_scaler_unscales_both_and_skips_both_on_overflow(tiny_config):
    torch.manual_seed(1)
    x = torch.randint(0, tiny_config.vocab_size, (4, 17))
    scaled, plain = GPT2(tiny_config), GPT2(tiny_config)
    plain.load_state_dict(scaled.state_dict())
    opt_scaled, opt_plain = build_optimizer(scaled, MUON), build_optimizer(plain, MUON)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(loss_of(scaled, x)).backward()
    scaler.unscale_(opt_scaled)  # as the loop does, before clipping
    loss_of(plain, x).backward()
    for a, b in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    scaler.step(opt_scaled)
    scaler.update()
    opt_plain.step()
    for a, b in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)

    # An infinite gradient in either part skips the whole step and lowers the scale.
    before = {n: p.detach().clone() for n, p in scaled.named_parameters()}
    for poisoned in (scaled.h[0].mlp.c_fc.weight, scaled.ln_f.bias):
        opt_scaled.zero_grad()
        scaler.scale(loss_of(scaled, x)).backward()
        poisoned.grad[0] = float("inf")
        scale = scaler.get_scale()
        scaler.step(opt_scaled)
        scaler.update()
        assert scaler.get_scale() < scale
        assert all(torch.equal(before[n], p) for n, p in scaled.named_parameters())


# --- through the loop ---------------------------------------------------------------------------


def test_a_few_muon_steps_lower_the_loss(train_dataset, tmp_path):
    summary = train(tiny_run(train_dataset, tmp_path / "run", max_steps=16, eval_interval=0, save_interval=0))
    losses = train_losses(tmp_path / "run")
    assert summary.step == 16 and len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    saved = load_checkpoint(tmp_path / "run" / "last.pth").training
    assert saved.config["optimizer"] == "muon" and set(saved.optimizer) == {"adamw", "muon"}


@pytest.fixture
def built(monkeypatch):
    """The optimizers the loop builds, as it builds them."""
    found = []
    real_build = loop_module.build_optimizer

    def build_and_keep(*args):
        found.append(real_build(*args))
        return found[-1]

    monkeypatch.setattr(loop_module, "build_optimizer", build_and_keep)
    return found


def tensors(state):
    """Every tensor in a (nested) state dict, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors(v)]
    return []


def test_muon_lr_follows_the_schedule_at_its_ratio_through_rollback(train_dataset, tmp_path, built, nan_at):
    nan_at({6})
    seen = []

    def watch(event):
        if isinstance(event, StepReport):
            optimizer = built[0]
            seen.append((event.step, event.lr, [g["lr"] for g in optimizer.param_groups]))
        elif isinstance(event, Recovery):
            seen.append(event)

    summary = train(tiny_run(train_dataset, tmp_path / "run", max_steps=10, warmup_steps=3), subscribers=[watch])
    recoveries = [e for e in seen if isinstance(e, Recovery)]
    assert len(recoveries) == 1 and recoveries[0].step == 6 and recoveries[0].restored_step == 4
    assert summary.step == 10 and summary.recoveries == 1
    reports = [e for e in seen if not isinstance(e, Recovery)]
    assert len({lr for _, lr, _ in reports}) > 5  # warmup then cosine: the rate moves
    for _, lr, (decay, no_decay, muon) in reports:
        assert decay == no_decay == pytest.approx(lr) and muon == pytest.approx(lr * 2)  # 6e-3 / 3e-3
    first_5, again_5 = (lr for step, lr, _ in reports if step == 5)
    assert again_5 == pytest.approx(first_5 / 2)  # the rollback halved both rates
    assert all(torch.isfinite(torch.tensor(train_losses(tmp_path / "run"))))


def test_interrupted_then_resumed_equals_uninterrupted_with_muon(train_dataset, tmp_path):
    # Dropout and gradient accumulation on, so RNG and accumulation state must be restored too.
    config = tiny_run(train_dataset, tmp_path / "whole", max_steps=10, batch_size=2, global_batch=4, dropout=0.1,
                      eval_interval=3, save_interval=100)
    train(config)

    def ctrl_c_at_step_4(event):
        if isinstance(event, StepReport) and event.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    stopped = train(replace(config, out=str(cut)), subscribers=[ctrl_c_at_step_4])
    assert stopped.stop_reason == "interrupted" and stopped.step == 5
    result = runner.invoke(app, ["train", "--resume", str(cut)])
    assert result.exit_code == 0, result.output
    assert "resuming at step 5" in result.stdout

    whole = tmp_path / "whole"
    torch.testing.assert_close(train_losses(cut), train_losses(whole), rtol=1e-6, atol=1e-7)
    assert len(train_losses(cut)) == 10
    assert train_losses(cut, "eval", "val_loss") == pytest.approx(train_losses(whole, "eval", "val_loss"), rel=1e-6)
    a, b = load_checkpoint(whole / "last.pth"), load_checkpoint(cut / "last.pth")
    for key, value in a.model_state.items():
        torch.testing.assert_close(b.model_state[key], value, rtol=1e-6, atol=1e-7)
    momentum = [s["momentum_buffer"] for s in a.training.optimizer["muon"]["state"].values()]
    resumed = [s["momentum_buffer"] for s in b.training.optimizer["muon"]["state"].values()]
    torch.testing.assert_close(resumed, momentum, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_second_rollback_restores_the_same_good_state(train_dataset, tmp_path, built, nan_at, optimizer):
    nan_at({6, 8})  # step 6 fails, back to step 4; step 5 passes; step 6 fails again, back to step 4
    at_step_4, restored = [], []

    def watch(event):
        state = copy.deepcopy(built[0].state_dict())
        if isinstance(event, StepReport) and event.step == 4 and not at_step_4:
            at_step_4.append(state)
        elif isinstance(event, Recovery):
            restored.append(state)

    summary = train(tiny_run(train_dataset, tmp_path / "run", max_steps=8, eval_interval=0, optimizer=optimizer),
                    subscribers=[watch])
    assert summary.recoveries == 2 and len(restored) == 2
    for state in restored:
        for got, want in zip(tensors(state), tensors(at_step_4[0]), strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_our_muon_is_torchs_in_bfloat16_and_close_in_float32(monkeypatch, shape):
    """Our Muon only changes the dtype of the orthogonalization: in bfloat16 it steps exactly as
    torch.optim.Muon (state included); in float32 the step is the same to bfloat16's precision."""
    torch.manual_seed(0)
    start = torch.randn(shape)
    grads = [torch.randn(shape) for _ in range(3)]

    def run(cls, dtype=None):
        if dtype is not None:
            monkeypatch.setattr(optim, "orthogonalize_dtype", lambda device: dtype)
        w = torch.nn.Parameter(start.clone())
        opt = cls([w], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        for g in grads:
            w.grad = g.clone()
            opt.step()
        return w.detach(), opt.state_dict()

    theirs, their_state = run(torch.optim.Muon)
    ours, our_state = run(optim.Muon, torch.bfloat16)
    assert torch.equal(ours, theirs)
    assert torch.equal(our_state["state"][0]["momentum_buffer"], their_state["state"][0]["momentum_buffer"])
    fp32, _ = run(optim.Muon, torch.float32)
    assert not torch.equal(fp32, theirs)
    assert torch.allclose(fp32, theirs, atol=0.02 * 0.2 * max(shape) ** 0.5 * 3 * 0.05)


def test_muon_orthogonalizes_in_float32_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: False)
    assert optim.orthogonalize_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: True)
    assert optim.orthogonalize_dtype(torch.device("cpu")) == torch.bfloat16
    assert optim.orthogonalize_dtype(torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize(("total", "warmup"), [(100, 30), (57, 17), (10, 2)])
def test_onecycle_is_torchs_onecycle_lr(total, warmup):
    from gpt2es_cli.training.schedule import ONECYCLE_DIV, default_warmup, learning_rate

    lr, min_lr = 1e-3, 1e-3 / ONECYCLE_DIV / 1e4
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    theirs = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total, pct_start=warmup / total, anneal_strategy="cos", cycle_momentum=False,
        div_factor=ONECYCLE_DIV, final_div_factor=1e4, three_phase=False,
    )
    expected = []
    for step in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        if step < total - 1:
            theirs.step()
    ours = [learning_rate(s, lr=lr, min_lr=min_lr, total_steps=total, warmup_steps=warmup, schedule="onecycle")
            for s in range(total)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert default_warmup(100, "onecycle") == 30 and default_warmup(100) == 5


def test_auto_clipping_cuts_spikes_at_twice_the_recent_norm():
    from gpt2es_cli.training.clipping import AUTO_FACTOR, GradClip

    clip = GradClip("auto")
    assert clip.limit() == float("inf")  # no history: the first step is not clipped
    for _ in range(200):
        clip.update(1.0)
    assert clip.limit() == pytest.approx(AUTO_FACTOR)
    clip.update(100.0)  # a spike is clipped, and the average follows the clipped norm, not the spike
    assert clip.limit() == pytest.approx(AUTO_FACTOR * (0.98 + 0.02 * AUTO_FACTOR))
    state = clip.state_dict()
    again = GradClip("auto")
    again.load_state_dict(state)
    assert again.limit() == clip.limit()
    assert GradClip(1.0).limit() == 1.0 and GradClip(0.0).limit() == float("inf")
    fixed = GradClip(1.0)
    fixed.update(5.0)
    assert fixed.limit() == 1.0


def test_a_run_with_auto_clipping_logs_it_and_resumes_exactly(train_dataset, tmp_path):
    import json
    import os
    import signal

    config = tiny_run(train_dataset, tmp_path / "whole", grad_clip="auto", max_steps=10, log_interval=1, eval_interval=5,
                      save_interval=100, optimizer="adamw")
    train(config)
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    assert steps[0]["grad_clip"] is None and all(r["grad_clip"] > 0 for r in steps[1:])
    assert all(r["clipped"] in (0, 1) for r in steps)

    def ctrl_c(event):
        if isinstance(event, StepReport) and event.step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    train(replace(config, out=str(cut)), subscribers=[ctrl_c])
    checkpoint = load_checkpoint(cut / "last.pth")
    assert checkpoint.training.clip["steps"] == 5
    from gpt2es_cli.training import load_resume_checkpoint, resume_config

    resumed = load_resume_checkpoint(cut)
    train(resume_config(resumed, {}), resume=resumed)
    got = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    resumed_steps = [r for r in got if r["type"] == "train"]
    assert [r["step"] for r in resumed_steps] == [r["step"] for r in steps]
    for key in ("loss", "grad_norm", "grad_clip", "clipped", "lr"):
        for got_value, want in zip((r[key] for r in resumed_steps), (r[key] for r in steps), strict=True):
            assert got_value == (want if want is None else pytest.approx(want, rel=1e-6)), key
