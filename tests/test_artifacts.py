"""artifacts.py: what each kind of path opens as, and the defaults (newest run, recorded dataset)."""

import os

import pytest

from gpt2es_cli.artifacts import (
    Chosen,
    checkpoint_or_default,
    checkpoint_path,
    default_checkpoint,
    is_dataset,
    is_hf_model,
    open_checkpoint,
    open_tokenizer,
    recorded_dataset,
)
from gpt2es_cli.checkpoint import TrainedOn, TrainingState, save_model
from gpt2es_cli.data.dataset import DatasetWriter
from gpt2es_cli.errors import CheckpointError, DataError

TEXT = "¡Había una vez un niño que vivía junto al río!"


@pytest.fixture
def save(tiny_model, tiny_config, tiny_tokenizer):
    def save(path, **kw):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, tiny_model, tiny_config, tiny_tokenizer, **kw)
        return path

    return save


@pytest.fixture
def dataset(tmp_path, tiny_tokenizer):
    out = tmp_path / "data"
    with DatasetWriter(out, tiny_tokenizer) as w:
        for split in ("train", "val"):
            w.write(split, [*tiny_tokenizer.encode(TEXT), tiny_tokenizer.eos_id], nbytes=len(TEXT.encode()))
        w.finish()
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_model, tiny_config, tiny_tokenizer):
    from gpt2es_cli.checkpoint import Checkpoint
    from gpt2es_cli.hf import export_hf

    ckpt = Checkpoint(tiny_config, tiny_model.state_dict(), tiny_tokenizer.to_json())
    return export_hf(ckpt, tmp_path_factory.mktemp("hf") / "model")


def set_mtime(path, seconds):
    os.utime(path, (seconds, seconds))


# --- CHECKPOINT arguments -----------------------------------------------------------------------
def test_a_pth_file_is_itself(tmp_path, save, tiny_tokenizer):
    path = save(tmp_path / "model.pth")
    assert checkpoint_path(path) == path
    ckpt = open_checkpoint(path)
    assert ckpt.source == "gpt2es" and ckpt.path == path
    assert open_tokenizer(path).to_json() == tiny_tokenizer.to_json()


def test_a_run_directory_is_its_best_else_its_last(tmp_path, save):
    run = tmp_path / "run"
    save(run / "last.pth")
    save(run / "step-0000010.pth")
    assert checkpoint_path(run) == run / "last.pth"
    assert open_checkpoint(run).path == run / "last.pth"
    save(run / "best.pth")
    assert checkpoint_path(run) == run / "best.pth"
    assert open_checkpoint(run).path == run / "best.pth"
    assert open_tokenizer(run).vocab_size > 0


def test_a_hugging_face_directory(hf_dir, tiny_tokenizer):
    assert is_hf_model(hf_dir) and checkpoint_path(hf_dir) == hf_dir
    ckpt = open_checkpoint(hf_dir)
    assert ckpt.source == "huggingface" and ckpt.path == hf_dir
    # Its tokenizer comes from the model directory, not from Tokenizer.from_path's guess.
    assert open_tokenizer(hf_dir).encode(TEXT) == tiny_tokenizer.encode(TEXT)


def test_paths_that_are_no_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist: check the path"):
        checkpoint_path(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="directory with no checkpoint") as e:
        open_checkpoint(tmp_path / "empty")
    assert "\n" not in str(e.value)


# --- tokenizer sources and datasets -------------------------------------------------------------
def test_tokenizer_sources(tmp_path, dataset, tiny_tokenizer):
    ids = tiny_tokenizer.encode(TEXT)
    file = tmp_path / "tok.json"
    tiny_tokenizer.save(file)
    tok_dir = tmp_path / "tokdir"
    tok_dir.mkdir()
    tiny_tokenizer.save(tok_dir / "tokenizer.json")
    vm_dir = tmp_path / "vocab"
    vm_dir.mkdir()
    tiny_tokenizer.backend.model.save(str(vm_dir))  # vocab.json + merges.txt
    for source in (file, tok_dir, vm_dir, dataset):
        assert open_tokenizer(source).encode(TEXT) == ids, source
    assert is_dataset(dataset) and not is_dataset(tok_dir) and not is_dataset(file)


# --- the default checkpoint: the newest run under runs/ -----------------------------------------
def test_the_default_is_the_newest_runs_best(tmp_path, save):
    runs = tmp_path / "runs"
    set_mtime(save(runs / "old" / "best.pth"), 1_000)
    set_mtime(save(runs / "old" / "last.pth"), 2_000)
    set_mtime(save(runs / "new" / "best.pth"), 3_000)
    set_mtime(save(runs / "new" / "last.pth"), 4_000)  # last.pth is newer, but best.pth is preferred
    chosen = default_checkpoint(runs)
    assert chosen == Chosen(runs / "new" / "best.pth", f"the newest run under {runs}/")
    assert str(chosen) == f"{runs / 'new' / 'best.pth'} (the newest run under {runs}/)"
    set_mtime(runs / "old" / "last.pth", 5_000)  # the old run trained on: now it is the newest
    assert default_checkpoint(runs).path == runs / "old" / "best.pth"


def test_the_default_falls_back_to_last_and_ignores_other_files(tmp_path, save):
    runs = tmp_path / "runs"
    set_mtime(save(runs / "a" / "last.pth"), 1_000)
    set_mtime(save(runs / "b" / "step-0000010.pth"), 9_000)  # numbered snapshots do not count
    (runs / "c").mkdir()
    (runs / "c" / "best.pth").mkdir()  # not a file
    assert default_checkpoint(runs).path == runs / "a" / "last.pth"


def test_the_default_is_relative_to_the_working_directory(tmp_path, monkeypatch, save):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "runs" / "demo" / "best.pth")
    chosen = default_checkpoint()
    assert str(chosen) == "runs/demo/best.pth (the newest run under runs/)"
    assert checkpoint_or_default(None) == (chosen.path, chosen)
    assert checkpoint_or_default("x.pth") == (type(chosen.path)("x.pth"), None)


@pytest.mark.parametrize("make", [lambda runs: None, lambda runs: runs.mkdir(), lambda runs: (runs / "empty").mkdir(parents=True)])
def test_no_run_means_train_first(tmp_path, make):
    runs = tmp_path / "runs"
    make(runs)
    with pytest.raises(CheckpointError) as e:
        default_checkpoint(runs)
    message = str(e.value)
    assert "\n" not in message and "gpt2es train" in message and "pass a checkpoint" in message


# --- the dataset a checkpoint was trained on ----------------------------------------------------
def test_the_recorded_dataset_of_last_and_best(tmp_path, save, dataset):
    last = save(tmp_path / "run" / "last.pth", training=TrainingState(step=1, dataset=TrainedOn(str(dataset), "x")))
    best = save(tmp_path / "run" / "best.pth", extra={"dataset": str(dataset), "step": 1})
    for path in (last, best):
        chosen = recorded_dataset(open_checkpoint(path))
        assert chosen == Chosen(dataset, f"the dataset {path} was trained on")


def test_an_unknown_or_gone_dataset_is_one_line(tmp_path, save, dataset):
    with pytest.raises(DataError, match="does not record the dataset it was trained on: pass --data"):
        recorded_dataset(open_checkpoint(save(tmp_path / "plain.pth")))
    gone = save(tmp_path / "gone.pth", extra={"dataset": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="which is no longer there: pass --data DATA_DIR or --text"):
        recorded_dataset(open_checkpoint(gone))
    (dataset / "meta.json").unlink()
    broken = save(tmp_path / "broken.pth", extra={"dataset": str(dataset)})
    with pytest.raises(DataError, match="is no longer a prepared dataset"):
        recorded_dataset(open_checkpoint(broken))
