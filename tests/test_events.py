"""The loop's typed events, their metrics records, and the subscribers: passed in, registered, files."""

import json
import math
from pathlib import Path
from typing import ClassVar

import conftest
import pytest
import torch

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.training import (
    Recovery,
    Saved,
    StepReport,
    TrainEnd,
    TrainStart,
    ValidationDone,
    subscribers,
    train,
)
from gpt2es_cli.training.events import PlanFitted, PlanWarning
from gpt2es_cli.training.subscribers.jsonl import MetricsFile
from gpt2es_cli.training.subscribers.plot import LossPlot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dataset(train_dataset):
    return train_dataset


def tiny_run(dataset, out, **kw) -> TrainConfig:
    return conftest.tiny_run(dataset, out, **{**dict(max_steps=4, log_interval=2, eval_interval=2, sample_tokens=0, save_interval=2), **kw})


def step_report(**kw) -> StepReport:
    values = dict(step=5, tokens_seen=1000, loss=3.2, smoothed_loss=3.3, lr=1e-3, grad_norm=0.5,
                  tokens_per_second=1234.0, mfu=None, elapsed=3.0, total_steps=10, epoch=0.1, eta=3.0)
    values.update(kw)
    return StepReport(**values)


# --- records ------------------------------------------------------------------------------------


def test_each_event_gives_its_own_record():
    assert step_report(loss=float("nan")).record() == {
        "type": "train", "step": 5, "tokens": 1000, "loss": None, "smoothed_loss": 3.3, "lr": 1e-3,
        "grad_norm": 0.5, "tokens_per_second": 1234.0, "mfu": None, "elapsed": 3.0, "grad_clip": None, "clipped": 0,
    }
    validation = ValidationDone(step=4, tokens_seen=512, val_loss=2.0, val_perplexity=math.exp(2.0), best=True,
                                sample="Había", elapsed=1.5)
    assert validation.record() == {"type": "eval", "step": 4, "tokens": 512, "val_loss": 2.0,
                                   "val_perplexity": math.exp(2.0), "best": True, "sample": "Había", "elapsed": 1.5}
    assert Recovery(step=6, restored_step=4, lr_scale=0.5, attempt=1, max_attempts=3).record() == {
        "type": "recovery", "step": 6, "restored_step": 4, "lr_scale": 0.5, "attempt": 1,
    }
    assert Saved(Path("last.pth"), 4).record() is None
    plan = PlanFitted(step=9, total_steps=500, time_steps=500, budget="max_time", warmup_steps=25, evals=20, eval_batches=20,
                      step_time=0.4, eval_time=3.0, save_time=0.5, elapsed=5.0, projected=239.5, max_time=240.0,
                      first=True)
    assert plan.record() == {"type": "plan", "step": 9, "total_steps": 500, "time_steps": 500, "budget": "max_time",
                             "warmup_steps": 25, "evals": 20, "eval_batches": 20, "step_time": 0.4, "eval_time": 3.0, "save_time": 0.5,
                             "elapsed": 5.0, "projected": 239.5, "max_time": 240.0, "first": True}
    assert PlanWarning("only 12 steps fit").record() is None


# --- subscribers ----------------------------------------------------------------------------------


def test_a_subscriber_gets_the_typed_events_in_order(dataset, tmp_path):
    events = []
    summary = train(tiny_run(dataset, tmp_path / "run"), subscribers=[events.append])
    kinds = [(type(e).__name__, getattr(e, "step", None), getattr(e, "best", None)) for e in events]
    assert kinds[:5] == [
        ("TrainStart", None, None),
        ("StepReport", 2, None),
        ("ValidationDone", 2, True),  # the first validation is the best so far
        ("Saved", 2, True),  # best.pth, written by the saving step after the validation
        ("Saved", 2, False),  # last.pth
    ]
    assert kinds[5:7] == [("StepReport", 4, None), ("ValidationDone", 4, events[6].best)]
    assert kinds[-2:] == [("Saved", 4, False), ("TrainEnd", None, None)]
    assert isinstance(events[0], TrainStart) and events[0].history == () and events[0].start_step == 0
    assert isinstance(events[-1], TrainEnd) and events[-1].summary == summary
    saved = [e for e in events if isinstance(e, Saved)]
    assert {e.path.name for e in saved} == {"best.pth", "last.pth"}
    # metrics.jsonl holds exactly the events' records, and so does the checkpoint's history.
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [e.record() for e in events if e.record() is not None]
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["training"]["metrics"] == lines


class Recorder:
    """A logger registered by the test: every instance keeps the events it got."""

    instances: ClassVar[list["Recorder"]] = []

    def __init__(self):
        self.events = []
        Recorder.instances.append(self)

    def __call__(self, event):
        self.events.append(event)


def test_a_registered_logger_is_created_for_each_run(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(subscribers.REGISTRY, "recorder", f"{__name__}:Recorder")
    monkeypatch.delitem(subscribers.REGISTRY, "plot")
    monkeypatch.setattr(Recorder, "instances", [])
    passed = []
    train(tiny_run(dataset, tmp_path / "run", max_steps=2), subscribers=[passed.append])
    assert len(Recorder.instances) == 1
    got = Recorder.instances[0].events
    assert isinstance(got[0], TrainStart) and isinstance(got[-1], TrainEnd)
    assert got == passed  # the same events, registered loggers first
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not (tmp_path / "run" / "loss.png").exists()  # its logger was not registered


def test_file_subscribers_start_from_the_history_they_are_given(tmp_path):
    history = ({"type": "train", "step": 1, "tokens": 64, "loss": 5.0, "smoothed_loss": 5.0},)
    start = TrainStart(
        run_dir=tmp_path, config=TrainConfig(), num_parameters=1, device="cpu", precision="float32",
        world_size=1, accum_steps=1, tokens_per_step=64, total_steps=3, budget="max_steps", train_tokens=640,
        start_step=1, history=history,
    )
    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "step": 2}\n', encoding="utf-8")  # after the checkpoint
    metrics, plot = MetricsFile(), LossPlot()
    for event in (start, step_report(step=2, tokens_seen=128), Saved(tmp_path / "last.pth", 2)):
        metrics(event)
        plot(event)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[0] == history[0]
    assert not (tmp_path / "loss.png").exists()  # drawn after validations and at the end
    plot(ValidationDone(step=2, tokens_seen=128, val_loss=4.0, val_perplexity=54.6, best=True, sample=None,
                        elapsed=1.0))
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["type"] for r in plot.records] == ["train", "train", "eval"]
