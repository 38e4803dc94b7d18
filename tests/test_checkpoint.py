import os
import pickle
import subprocess
import sys

import pytest
import torch

from gpt2es_cli import checkpoint as ckpt_mod
from gpt2es_cli.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    TrainedOn,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.fileio import current_umask


def test_round_trip_with_training_state(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    tiny_model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    opt.zero_grad()
    training = {
        "step": 7,
        "tokens_seen": 1234,
        "optimizer": opt.state_dict(),
        "rng": [{"torch": torch.get_rng_state(), "python": list(range(3))}],
        "metrics": [{"step": 1, "loss": 5.0}],
    }
    path = tmp_path / "run" / "last.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer, training=TrainingState.from_dict(training),
               extra={"dataset": "demo"})
    ck = load_checkpoint(path)
    assert ck.model_config == tiny_config
    assert ck.training.step == 7 and ck.extra == {"dataset": "demo"}
    assert ck.tokenizer().encode("Había una vez") == tiny_tokenizer.encode("Había una vez")
    model = ck.build_model()
    idx = torch.randint(0, tiny_config.vocab_size, (1, 10))
    torch.testing.assert_close(model(idx), tiny_model(idx))
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.training.optimizer)


def test_compiled_and_ddp_prefixes_are_stripped(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    state = {f"module._orig_mod.{k}": v for k, v in tiny_model.state_dict().items()}
    save_checkpoint(tmp_path / "c.pth", Checkpoint(tiny_config, state, tiny_tokenizer.to_json()))
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert set(loaded.model_state) == set(tiny_model.state_dict())  # saved under the plain names
    rebuilt = loaded.build_model().state_dict()
    for key, value in tiny_model.state_dict().items():
        torch.testing.assert_close(rebuilt[key], value, atol=0, rtol=0)


def test_crash_mid_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, tiny_model, tiny_config, tiny_tokenizer):
    path = tmp_path / "last.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer, training=TrainingState(step=1))
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"partial data")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, tiny_model, tiny_config, tiny_tokenizer, training=TrainingState(step=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp file left behind


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    good = Checkpoint(tiny_config, tiny_model.state_dict(), tiny_tokenizer.to_json()).to_dict()
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({**good, "extra": {"x": _Payload(marker)}}, evil)
    with pytest.raises(CheckpointError, match="refused to load .*arbitrary Python objects"):
        load_checkpoint(evil)
    assert not marker.exists()
    # The payload is real: an unsafe load runs it.
    torch.load(evil, weights_only=False)
    assert marker.read_text() == "pwned"


def test_clear_errors(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save(tiny_model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="not a gpt2es checkpoint .*bare state_dict"):
        load_checkpoint(tmp_path / "bare.pth")
    good = tmp_path / "good.pth"
    save_model(good, tiny_model, tiny_config, tiny_tokenizer)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "truncated.pth")
    (tmp_path / "garbage.pth").write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError, match="truncated or corrupt|arbitrary Python objects"):
        load_checkpoint(tmp_path / "garbage.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(tmp_path / "empty.pth")
    newer = Checkpoint(tiny_config, tiny_model.state_dict()).to_dict() | {"format_version": FORMAT_VERSION + 1}
    torch.save(newer, tmp_path / "newer.pth")
    with pytest.raises(CheckpointError, match="newer gpt2es.*upgrade"):
        load_checkpoint(tmp_path / "newer.pth")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not a gpt2es checkpoint file"):
        load_checkpoint(tmp_path / "emptydir")  # run and HF directories: artifacts.open_checkpoint
    no_tok = tmp_path / "notok.pth"
    save_model(no_tok, tiny_model, tiny_config, None)
    with pytest.raises(CheckpointError, match="carries no tokenizer"):
        load_checkpoint(no_tok).tokenizer()


def test_pickle_error_type_is_what_weights_only_raises(tmp_path):
    # Guard for the except clause in safe_torch_load: torch still raises UnpicklingError.
    torch.save({"x": _Payload(tmp_path / "m")}, tmp_path / "e.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "e.pth", weights_only=True)


def test_summary(tiny_checkpoint, tiny_model, tiny_tokenizer):
    s = load_checkpoint(tiny_checkpoint).summary()
    assert s["parameters"]["total"] == tiny_model.num_parameters()
    assert s["parameters"]["embeddings"] == tiny_model.wte.weight.numel() + tiny_model.wpe.weight.numel()
    assert s["tokenizer"]["vocab_size"] == tiny_tokenizer.vocab_size
    assert s["file_bytes"] == tiny_checkpoint.stat().st_size
    assert s["training"] is None


def test_files_are_readable_like_any_other(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    path = tmp_path / "c.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer)
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_trained_on_reads_both_records(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    last = tmp_path / "last.pth"
    save_model(last, tiny_model, tiny_config, tiny_tokenizer, training=TrainingState(dataset=TrainedOn("data/a", "x")))
    best = tmp_path / "best.pth"
    save_model(best, tiny_model, tiny_config, tiny_tokenizer, extra={"dataset": "data/b"})
    assert load_checkpoint(last).trained_on == "data/a"
    assert load_checkpoint(best).trained_on == "data/b"
    assert Checkpoint(tiny_config, {}).trained_on is None


def test_the_checkpoint_format_stands_alone():
    """checkpoint.py is below hf/ and artifacts.py: importing it imports neither."""
    code = "import sys, gpt2es_cli.checkpoint; print(sorted(m for m in sys.modules if m in ('gpt2es_cli.hf', 'gpt2es_cli.artifacts')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the training state -------------------------------------------------------------------------


def test_a_training_state_round_trips_every_field(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    from dataclasses import fields

    state = TrainingState(
        step=12, tokens_seen=3072, lr_scale=0.5, smoothed_loss=4.5, best_val_loss=4.25, val_loss=4.3, recoveries=1,
        elapsed=61.5, config={"lr": 3e-3}, total_steps=40, plan={"segments": [], "time_steps": 40},
        optimizer={"state": {}, "param_groups": []}, scaler=None, data={"epoch": 0, "position": 3},
        rng=[{"torch": torch.get_rng_state(), "cuda": None}], world_size=1, dataset=TrainedOn("data/demo", "abc"),
        metrics=[{"type": "train", "step": 12, "loss": 4.5}], meter={"losses": [4.5]}, clip={"average": 0.5, "steps": 3},
    )
    path = tmp_path / "last.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer, training=state)
    loaded = load_checkpoint(path).training
    for f in fields(TrainingState):
        a, b = getattr(loaded, f.name), getattr(state, f.name)
        if f.name == "rng":
            assert torch.equal(a[0]["torch"], b[0]["torch"])
        else:
            assert a == b, f.name
    assert torch.load(path, weights_only=True)["training"]["version"] == ckpt_mod.TRAINING_STATE_VERSION


def test_a_first_version_training_state_reads_with_defaults():
    """The keys a version-1 state may lack take their defaults; its recoveries are counted from its metrics."""
    old = {"step": 7, "tokens_seen": 700, "optimizer": {}, "config": {"lr": 1e-3}, "data": {"epoch": 0},
           "metrics": [{"type": "recovery", "step": 3}, {"type": "train", "step": 7, "loss": 5.0}]}
    state = TrainingState.from_dict(old)
    assert (state.step, state.tokens_seen, state.lr_scale, state.elapsed, state.recoveries) == (7, 700, 1.0, 0.0, 1)
    assert state.plan is None and state.meter is None and state.dataset is None and state.world_size == 1
    assert state.resumable and not TrainingState.from_dict({"step": 1}).resumable


def test_a_training_state_from_a_newer_gpt2es_is_refused(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    path = tmp_path / "last.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer, training=TrainingState(step=1))
    data = torch.load(path, weights_only=True)
    data["training"]["version"] = ckpt_mod.TRAINING_STATE_VERSION + 1
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="upgrade with pip install -U gpt2es"):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_a_sharded_checkpoint_reads_whole_and_its_metadata_never_runs_code(tmp_path, tiny_model, tiny_config,
                                                                          tiny_tokenizer):
    import warnings

    from gpt2es_cli.checkpoint import Shards, split_tensors, write_shards

    # The record beside its DCP directory, as a sharded run writes them (here by one process, no group).
    weights = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}}, "param_groups": [
        {"lr": 0.1, "betas": (0.9, 0.95), "params": [0]}]}
    skeleton, paths, tensors = split_tensors(optimizer)
    shards = Shards(tmp_path / "step-0000003.dcp", tuple(k for k in weights if k != "lm_head.weight"),
                    tuple(paths), {"lm_head.weight": "wte.weight"}, world_size=1)
    every = {shards.model_key(k): weights[k] for k in shards.model_keys}
    every.update({shards.optimizer_key(p): t for p, t in zip(paths, tensors)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_shards(shards.directory, every)
    training = TrainingState(step=3, config={"lr": 0.1}, optimizer=skeleton)
    record = Checkpoint(tiny_config, {}, tiny_tokenizer.to_json(), training=training, shards=shards)
    save_checkpoint(tmp_path / "last.pth", record)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["format_version"] == FORMAT_VERSION == 2

    whole = load_checkpoint(tmp_path / "last.pth")
    assert whole.shards.loaded and whole.unread_shards is None
    for key, value in weights.items():
        torch.testing.assert_close(whole.model_state[key], value, rtol=0, atol=0)
    assert whole.training.optimizer["param_groups"][0]["betas"] == (0.9, 0.95)
    torch.testing.assert_close(whole.training.optimizer["state"][0]["exp_avg"], torch.ones(2, 3))
    kept = load_checkpoint(tmp_path / "last.pth", keep_sharded=True)
    assert kept.model_state == {} and kept.unread_shards is not None and kept.training.resumable

    # Metadata that would run code is refused before anything is unpickled from it.
    (shards.directory / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError, match="does not load"):
        load_checkpoint(tmp_path / "last.pth")
