"""Open whatever path the user gave: the one place that decides what a path on the command line is.

    CHECKPOINT        a gpt2es .pth file, a run directory (its best.pth, else last.pth), a
                      local Hugging Face GPT-2 directory (config.json), or a Hub model id
                      (owner/name[@revision], hub.py); none given means the newest run under
                      runs/ (`default_checkpoint`). A LoRA run's checkpoint holds an adapter
                      alone: it opens merged onto its base (`open_base`, which finds the base
                      where the record says and checks its hash)
    tokenizer source  a tokenizer.json, a tokenizer directory (tokenizer.json or vocab.json +
                      merges.txt), a prepared dataset, or anything a CHECKPOINT may be
    data directory    a prepared dataset (meta.json); for `eval` with none given, the dataset
                      the checkpoint was trained on (`recorded_dataset`)

This module sits above checkpoint.py, hf/ and data/: it only dispatches to them. Defaults
come back as a `Chosen` (the path and why), so the CLI can say which file it picked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gpt2es_cli import hub
from gpt2es_cli.checkpoint import AdapterRecord, Checkpoint, load_checkpoint
from gpt2es_cli.data.shards import is_shard_set, open_dataset
from gpt2es_cli.errors import CheckpointError, ConfigError, DataError
from gpt2es_cli.hf import load_hf_checkpoint
from gpt2es_cli.hub import is_hub_id, split_id, with_revision
from gpt2es_cli.lora import check_base, merge
from gpt2es_cli.tokenizer import Tokenizer

RUNS_DIR = Path("runs")
"""Where `gpt2es train` writes runs by default (runs/<dataset name>), relative to the working directory."""
RUN_DIR_CHECKPOINTS = ("best.pth", "last.pth")
"""What a run directory stands for, in order of preference."""


@dataclass(frozen=True)
class Chosen:
    """A path the user did not give, and why it was picked."""

    path: Path
    reason: str
    """E.g. 'the newest run under runs/'."""

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


# --- what a path is -------------------------------------------------------------------------
def is_dataset(path: str | Path) -> bool:
    """Whether `path` is a prepared dataset directory (it holds meta.json)."""
    path = Path(path)
    return path.is_dir() and (path / "meta.json").is_file()


def is_hf_model(path: str | Path) -> bool:
    """Whether `path` is a Hugging Face model directory (it holds config.json)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()


def run_checkpoint(run_dir: Path) -> Path | None:
    """A run directory's best.pth, else its last.pth; None when it has neither."""
    for name in RUN_DIR_CHECKPOINTS:
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def checkpoint_path(path: str | Path) -> Path:
    """The .pth file or Hugging Face directory a CHECKPOINT argument names (a Hub model id, such as
    DeepESP/gpt2-spanish[@revision], names its snapshot in the local cache, fetched if need be)."""
    if is_hub_id(path):
        return hub.snapshot(str(path))
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    if not path.is_dir() or is_hf_model(path):
        return path
    found = run_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"{path} is a directory with no checkpoint: expected a Hugging Face model "
            f"(config.json) or a run directory ({' or '.join(RUN_DIR_CHECKPOINTS)})"
        )
    return found


# --- opening --------------------------------------------------------------------------------
def open_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a gpt2es .pth, a run directory's checkpoint, or a local Hugging Face GPT-2 directory.
    A LoRA adapter comes merged onto its base (float32 weights; `adapter` and `adapter_state` say
    what it was), so it serves wherever a full model does."""
    path = checkpoint_path(path)
    if path.is_dir():
        return load_hf_checkpoint(path)
    checkpoint = load_checkpoint(path, map_location)
    if checkpoint.adapter_only:
        return merged(checkpoint)
    return checkpoint


_OPENING: list[str] = []
"""The bases being opened (an adapter's base may be another adapter run): a loop is an error."""


def open_base(record: AdapterRecord, adapter: str | Path | None = None) -> Checkpoint:
    """The base model of a LoRA adapter, opened where `record` says (a Hub id at its revision, or
    a local file or directory) and checked to be the one it was trained on (its weights' hash).
    `adapter` (the adapter's file) names it in the one-line errors."""
    owner = f"{adapter}: " if adapter is not None else ""
    source = record.base.source
    target = with_revision(source, record.base.revision) if record.base.revision and is_hub_id(source) else source
    if target in _OPENING:
        raise CheckpointError(f"{owner}this LoRA adapter's base {target} is, through its own base, the adapter itself")
    _OPENING.append(target)
    try:
        base = open_checkpoint(target)
    except CheckpointError as e:
        raise CheckpointError(
            f"{owner}cannot open the base model of this LoRA adapter ({e}): put the model it was fine-tuned from "
            f"back at {source}"
        ) from None
    finally:
        _OPENING.pop()
    check_base(record, base, adapter)
    return base


def merged(adapter: Checkpoint) -> Checkpoint:
    """A LoRA checkpoint as read from its file (the adapter's tensors alone) merged onto its base:
    the full weights, float32, the adapter's tensors kept in `adapter_state`, the tokenizer the
    adapter's or else the base's."""
    if not adapter.adapter_only:
        return adapter
    assert adapter.adapter is not None
    base = open_base(adapter.adapter, adapter.path)
    return replace(
        adapter,
        model_state=merge(base.model_state, adapter.model_state, adapter.adapter),
        adapter_state=adapter.model_state,
        tokenizer_json=adapter.tokenizer_json if adapter.tokenizer_json is not None else base.tokenizer_json,
    )


def base_source(init_from: str, revision: str | None = None, opened: Checkpoint | None = None) -> tuple[str, str | None]:
    """Where an adapter's base is, for its record: a Hub model id as (owner/name, revision: the one
    given, else the commit of the snapshot `opened` was read from, so the record names exactly that
    model); a local path as the absolute path of the checkpoint file or Hugging Face directory it
    names (a run directory: its best.pth, else last.pth), so the record holds wherever it is read from."""
    if is_hub_id(init_from):
        repo, own = split_id(str(with_revision(init_from, revision)))
        snapshot = opened.path if opened is not None else None
        if own is None and snapshot is not None and snapshot.parent.name == "snapshots":
            own = snapshot.name  # the Hugging Face cache's snapshots/<commit>
        return repo, own
    return str(checkpoint_path(init_from).resolve()), None


def open_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of anything that has one: a tokenizer.json or tokenizer directory, a
    prepared dataset, a gpt2es checkpoint or run directory, a Hugging Face directory, or a Hub model
    id (only its tokenizer files are fetched)."""
    if is_hub_id(path):
        path = hub.snapshot(str(path), hub.TOKENIZER_FILES)
    path = Path(path)
    if is_dataset(path) or is_shard_set(path):
        return open_dataset(path).tokenizer()
    if path.is_file() and path.suffix == ".json":
        return Tokenizer.from_path(path)
    if path.is_dir() and ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        return Tokenizer.from_path(path)  # a tokenizer directory, or a Hugging Face model's own files
    found = checkpoint_path(path)
    if found.is_file():  # a gpt2es checkpoint's own tokenizer: a LoRA adapter's base is opened only if it has none
        checkpoint = load_checkpoint(found)
        if checkpoint.tokenizer_json is not None or not checkpoint.adapter_only:
            return checkpoint.tokenizer()
    return open_checkpoint(found).tokenizer()


# --- defaults -------------------------------------------------------------------------------
def default_checkpoint(runs_dir: str | Path = RUNS_DIR) -> Chosen:
    """The checkpoint to use when none is given: the newest run's best.pth, else its last.pth.

    The newest run is the one holding the most recently modified best.pth or last.pth among
    runs_dir/*/. Raises a one-line CheckpointError when there is none.
    """
    runs_dir = Path(runs_dir)
    found = [p for name in RUN_DIR_CHECKPOINTS for p in runs_dir.glob(f"*/{name}") if p.is_file()]
    if not found:
        raise CheckpointError(
            f"no checkpoint given and none found under {runs_dir}/: train a model first "
            "(gpt2es train) or pass a checkpoint (.pth, run directory or Hugging Face directory)"
        )
    newest = max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    chosen = run_checkpoint(newest.parent)
    assert chosen is not None  # newest itself is there
    return Chosen(chosen, f"the newest run under {runs_dir}/")


def checkpoint_or_default(
    path: str | Path | None, runs_dir: str | Path = RUNS_DIR, revision: str | None = None
) -> tuple[Path, Chosen | None]:
    """The CHECKPOINT argument as given (a Hub id at `revision`, --revision), or the default one
    (then also returned as a Chosen)."""
    if path is not None:
        return Path(hub.with_revision(path, revision)), None
    if revision is not None:
        raise ConfigError("--revision is for a Hugging Face Hub model id given as CHECKPOINT: name one")
    chosen = default_checkpoint(runs_dir)
    return chosen.path, chosen


def recorded_dataset(checkpoint: Checkpoint) -> Chosen:
    """The dataset `checkpoint` was trained on, as its training state records it, if it is still
    there. Raises a one-line DataError when it is unknown or gone."""
    recorded = checkpoint.trained_on
    name = checkpoint.path if checkpoint.path is not None else "the checkpoint"
    if recorded is None:
        raise DataError(
            f"{name} does not record the dataset it was trained on: pass --data DATA_DIR or --text FILE_OR_DIR"
        )
    path = Path(recorded)
    if not (is_dataset(path) or is_shard_set(path)):
        why = "is no longer there" if not path.exists() else "is no longer a prepared dataset (no meta.json)"
        raise DataError(
            f"{name} was trained on {path}, which {why}: pass --data DATA_DIR or --text FILE_OR_DIR"
        )
    return Chosen(path, f"the dataset {name} was trained on")
