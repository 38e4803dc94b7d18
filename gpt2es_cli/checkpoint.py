"""Checkpoints: the one place that knows the file format.

A checkpoint is one `.pth` file written by `torch.save` holding only plain containers, strings,
numbers and tensors, so it loads with `torch.load(weights_only=True)` and never unpickles code:

    format            "gpt2es-checkpoint"
    format_version    FORMAT_VERSION
    gpt2es_version    the version that wrote it
    model_config      ModelConfig as a dict
    model             the model's state_dict
    tokenizer         the tokenizer's JSON text (tokenizers library), or None
    training          None, or a `TrainingState` as a dict: what --resume needs (the run's
                      progress, settings, optimizer, data position, RNG states, metrics history)
    extra             free-form plain data (e.g. what dataset it was trained on)
    adapter           only in a LoRA run's checkpoints: an `AdapterRecord` as a dict (the adapter's
                      rank, alpha, dropout and targets, and its base: where it is and its hash);
                      then `model` holds the adapter's tensors alone, named after our modules:
                      h.0.attn.c_attn.lora_A (rank, in_features) and h.0.attn.c_attn.lora_B
                      (out_features, rank), the layer's weight being W + (alpha / rank) B @ A
                      (`merge_adapter`; artifacts.open_checkpoint opens the base and merges)

A sharded checkpoint (an fsdp run's last.pth and step copies) is the same file without the
tensors, `format_version` SHARDED_FORMAT_VERSION, beside a torch.distributed.checkpoint (DCP)
directory that holds them, every process's part written by that process:

    model             {} (the weights are in the directory, under "model.<name>")
    training          the training state, its `optimizer` with every tensor left as None (they are
                      in the directory, under "optimizer.<path>.<in>.<the>.<state_dict>")
    shards            `Shards` as a dict: the directory's name (beside this file), the weight names,
                      where the optimizer's tensors go back, the processes that wrote it

A sharded checkpoint loads whole in one process without a process group (`read_shards`), or
stays on disk for a sharded run to read each process's part, resharded to its process count
(`read_shards_into`). The directory's metadata is unpickled with an allow-list of
DCP's own classes (never arbitrary code); its tensors load with weights_only=True.

`load_checkpoint` reads this format only; `TrainingState.from_dict` is the one reader of a
training state, older layouts included. Whatever else a CHECKPOINT argument may name (a run
directory, a Hugging Face directory, nothing at all) is resolved in artifacts.py; the Hugging
Face format is in hf/, which builds on `clean_state_dict` and `safe_torch_load` here.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from gpt2es_cli import __version__
from gpt2es_cli.chat import template_name
from gpt2es_cli.config import LORA_LAYERS, ModelConfig
from gpt2es_cli.errors import CheckpointError, Gpt2esError, first_line
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.model import GPT2, parameter_counts
from gpt2es_cli.tokenizer import Tokenizer

FORMAT = "gpt2es-checkpoint"
FORMAT_VERSION = 2
"""The newest layout this gpt2es reads: 1, one file; 2, a sharded checkpoint's record beside its DCP directory."""
SINGLE_FILE_VERSION = 1
"""What a single-file checkpoint is written as (so that older versions of gpt2es read it)."""
SHARDED_FORMAT_VERSION = 2
TRAINING_STATE_VERSION = 2
"""The layout of a training state: 1, before it was versioned (some keys may be missing); 2, every field."""


@dataclass
class Progress:
    """How far a run has got: what the training loop counts and tracks from step to step. It is
    the first part of a `TrainingState`, so a new field here is saved and resumed with no other
    change."""

    step: int = 0
    """Optimizer steps done."""
    tokens_seen: int = 0
    lr_scale: float = 1.0
    """Multiplies the scheduled learning rate: halved by each rollback after a non-finite loss."""
    smoothed_loss: float | None = None
    """Exponential moving average of the training loss."""
    best_val_loss: float | None = None
    val_loss: float | None = None
    """The last validation loss."""
    recoveries: int = 0
    """Rollbacks after a non-finite loss, over the whole run."""
    elapsed: float = 0.0
    """Seconds of training in the whole run (every invocation), as of the last save."""


@dataclass(frozen=True)
class TrainedOn:
    """The prepared dataset a run trains on, so a resume can refuse another one."""

    path: str
    train_sha256: str | None = None
    """The checksum of its train.bin."""


@dataclass
class TrainingState(Progress):
    """Everything --resume needs to continue a run exactly, as plain data (so it loads with
    weights_only=True): the run's `Progress`, then its settings and its components' states (the
    optimizer's, the loss scaler's, the data sampler's, ...: their own state_dict()s, which only
    they read)."""

    config: dict[str, Any] = field(default_factory=dict)
    """The run's settings (TrainConfig.to_dict(), every default resolved)."""
    total_steps: int | None = None
    """The steps planned when it was saved."""
    plan: dict[str, Any] | None = None
    """The step plan (budget.StepPlan.state()): schedule segments, time fit, evaluations."""
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    """fp16 loss scaling (None when the run does not scale)."""
    data: dict[str, Any] | None = None
    """Where the window sampler stands."""
    rng: list[dict[str, Any]] = field(default_factory=list)
    """The RNG states of every process, in rank order."""
    world_size: int = 1
    dataset: TrainedOn | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """The metrics record of every event so far (metrics.jsonl's lines)."""
    meter: dict[str, Any] | None = None
    """The log interval in progress."""
    clip: dict[str, Any] | None = None
    """Adaptive gradient clipping's history."""

    @property
    def progress(self) -> Progress:
        """Its Progress fields, as a Progress of their own."""
        return Progress(**{f.name: getattr(self, f.name) for f in fields(Progress)})

    @property
    def resumable(self) -> bool:
        """It holds what a resume starts from: the settings and the optimizer's state."""
        return bool(self.config) and self.optimizer is not None

    def scalars(self) -> dict[str, Any]:
        """Its plain numbers (the progress, the planned steps, the processes), for summaries."""
        return {**asdict(self.progress), "total_steps": self.total_steps, "world_size": self.world_size}

    def to_dict(self) -> dict[str, Any]:
        """The dict saved in the checkpoint."""
        data: dict[str, Any] = {"version": TRAINING_STATE_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = asdict(value) if isinstance(value, TrainedOn) else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        """Read a saved training state of any version gpt2es has written. Version 1 states may lack
        any key (the first ones have no plan, meter, clipping state, recoveries count or dataset
        record): a missing one takes its default, and the recoveries are counted from the metrics
        history."""
        if not isinstance(data, dict):
            raise CheckpointError(f"the training state is a {type(data).__name__}, not a dict")
        version = data.get("version", 1)
        if not isinstance(version, int) or version > TRAINING_STATE_VERSION:
            raise CheckpointError(
                f"its training state has version {version!r}, newer than this gpt2es reads "
                f"({TRAINING_STATE_VERSION}): upgrade with pip install -U gpt2es"
            )
        metrics = list(data.get("metrics") or [])
        progress = {f.name: _plain(data.get(f.name), f.default) for f in fields(Progress)}
        if data.get("recoveries") is None:
            progress["recoveries"] = sum(1 for r in metrics if isinstance(r, dict) and r.get("type") == "recovery")
        dataset = data.get("dataset")
        total = data.get("total_steps")
        return cls(
            **progress,
            config=dict(data.get("config") or {}),
            total_steps=int(total) if total is not None else None,
            plan=data.get("plan") or None,
            optimizer=data.get("optimizer"),
            scaler=data.get("scaler") or None,
            data=data.get("data"),
            rng=list(data.get("rng") or []),
            world_size=int(data.get("world_size") or 1),
            dataset=TrainedOn(str(dataset["path"]), dataset.get("train_sha256"))
            if isinstance(dataset, dict) and isinstance(dataset.get("path"), str) else None,
            metrics=metrics,
            meter=data.get("meter") or None,
            clip=data.get("clip"),
        )


def _plain(value: Any, default: Any) -> Any:
    """A saved number in the type of its field's default (the default when missing)."""
    if value is None:
        return default
    return type(default)(value) if isinstance(default, (int, float)) else value


# --- LoRA adapters ------------------------------------------------------------------------------
ADAPTER_TYPES = ("lora",)
LORA_PARTS = ("lora_A", "lora_B")
"""The two tensors of an adapted layer, after its module path: lora_A (rank, in), lora_B (out, rank)."""


@dataclass(frozen=True)
class AdapterBase:
    """The frozen model an adapter was trained on, and how to find it again."""

    source: str
    """Where it was: the --init-from value (a Hub model id owner/name), or the checkpoint file or
    Hugging Face directory a local path named, made absolute."""
    revision: str | None
    """The Hub revision it was fetched at (None: the main branch, or a local path)."""
    sha256: str
    """`weights_sha256` of its weights as gpt2es loads them: opening another model there is refused."""
    model_config: dict[str, Any]
    """Its ModelConfig as a dict."""


@dataclass(frozen=True)
class AdapterRecord:
    """A LoRA adapter: what a run with --lora-rank trained (its tensors are the checkpoint's
    model state), and the base it adapts."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    """The adapted Linear layers, as --lora-targets named them (c_attn, c_proj, c_fc, attn.c_proj,
    mlp.c_proj): the last parts of their module paths, in every block."""
    base: AdapterBase
    type: str = "lora"

    @property
    def scaling(self) -> float:
        """alpha / rank: what B @ A is multiplied by before it is added to the weight."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
            "targets": list(self.targets), "base": asdict(self.base),
        }

    @classmethod
    def from_dict(cls, data: Any) -> AdapterRecord:
        """Read a saved record; a damaged one is a CheckpointError saying what is wrong."""
        if not isinstance(data, dict):
            raise CheckpointError(f"its adapter record is a {type(data).__name__}, not a dict")
        kind = data.get("type")
        if kind not in ADAPTER_TYPES:
            raise CheckpointError(
                f"its adapter is of type {kind!r}, which this gpt2es does not read (it reads {', '.join(ADAPTER_TYPES)}): "
                "upgrade with pip install -U gpt2es"
            )
        base = data.get("base")
        try:
            rank, alpha, dropout = data["rank"], float(data["alpha"]), float(data["dropout"])
            targets = tuple(str(t) for t in data["targets"])
            record = cls(
                rank=rank, alpha=alpha, dropout=dropout, targets=targets, type=kind,
                base=AdapterBase(
                    source=str(base["source"]),
                    revision=None if base.get("revision") is None else str(base["revision"]),
                    sha256=str(base["sha256"]),
                    model_config=dict(base["model_config"]),
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"its adapter record is incomplete or damaged ({first_line(e)})") from None
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or not targets:
            raise CheckpointError("its adapter record is damaged (the rank must be a positive integer, with targets)")
        return record


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A canonical hash of a model's weights: over the keys sorted (the prefixes of compiled and
    DDP-wrapped models stripped), each key's name, dtype and shape, then its values as float32
    bytes. The same weights hash alike wherever they were loaded from; any change of a value,
    a shape or a name changes it."""
    digest = hashlib.sha256()
    clean = clean_state_dict(state)
    for key in sorted(clean):
        tensor = clean[key].detach()
        dtype = str(tensor.dtype).removeprefix("torch.")
        digest.update(f"{key}\0{dtype}\0{tuple(tensor.shape)}\0".encode())
        values = tensor.to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(memoryview(values.numpy()).cast("B"))
    return digest.hexdigest()


def adapted_modules(targets: Iterable[str], n_layer: int) -> list[str]:
    """The module paths of the layers --lora-targets names (config.LORA_LAYERS; unknown names
    adapt nothing) in a model of `n_layer` blocks, in block order: ['c_attn', 'c_fc'] ->
    ['h.0.attn.c_attn', 'h.0.mlp.c_fc', 'h.1.attn.c_attn', ...]."""
    chosen = {layer for name in targets for layer in LORA_LAYERS.get(name, ())}
    order = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    return [f"h.{i}.{layer}" for i in range(n_layer) for layer in order if layer in chosen]


def adapter_problems(config: ModelConfig, record: AdapterRecord, state: Any) -> list[str]:
    """What is wrong with `state` as the tensors of adapter `record` on a GPT2 with `config`:
    missing, unexpected or non-tensor entries, wrong shapes, non-floating dtypes (empty when it fits)."""
    if not isinstance(state, dict):
        return [f"the adapter's weights are a {type(state).__name__}, not a dict of tensors"]
    state = clean_state_dict(state)
    weights = GPT2.state_shapes(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for module in adapted_modules(record.targets, config.n_layer):
        out_features, in_features = weights[f"{module}.weight"]
        shapes[f"{module}.lora_A"] = (record.rank, in_features)
        shapes[f"{module}.lora_B"] = (out_features, record.rank)
    if not shapes:
        return [f"its targets {', '.join(record.targets)} name no layer of the model"]
    return tensor_problems(state, shapes, "the adapter", "the adapter's rank")


def merge_adapter(base_state: dict[str, torch.Tensor], adapter_state: dict[str, torch.Tensor],
                  record: AdapterRecord) -> dict[str, torch.Tensor]:
    """The full weights of the adapted model, float32: every base weight, and each adapted layer's
    W + (alpha / rank) * B @ A (W as nn.Linear stores it: (out, in))."""
    merged = {k: v.detach().to(torch.float32) for k, v in clean_state_dict(base_state).items()}
    adapter = clean_state_dict(adapter_state)
    for key in sorted(k for k in adapter if k.endswith(".lora_A")):
        module = key.removesuffix(".lora_A")
        a, b = adapter[key].detach().float(), adapter[f"{module}.lora_B"].detach().float()
        weight = f"{module}.weight"
        if weight not in merged:
            raise CheckpointError(f"the adapter adapts {module}, which its base does not have")
        merged[weight] = merged[weight] + record.scaling * (b.to(merged[weight].device) @ a.to(merged[weight].device))
    return merged


@dataclass
class Checkpoint:
    """Everything one checkpoint holds, loaded into memory."""

    model_config: ModelConfig
    model_state: dict[str, torch.Tensor]
    tokenizer_json: str | None = None
    training: TrainingState | None = None
    """What --resume needs (last.pth); None for weights only (best.pth, exports, Hugging Face models)."""
    extra: dict[str, Any] = field(default_factory=dict)
    gpt2es_version: str = __version__
    format_version: int = FORMAT_VERSION
    source: str = "gpt2es"
    """'gpt2es' for our .pth files, 'huggingface' for a Hugging Face directory."""
    path: Path | None = None
    adapter: AdapterRecord | None = None
    """A LoRA run's adapter (None: a full model). As read from the file (`load_checkpoint`),
    model_state holds the adapter's tensors alone; opened (artifacts.open_checkpoint), the
    weights merged onto its base, the tensors kept in `adapter_state`."""
    adapter_state: dict[str, torch.Tensor] | None = None
    """The adapter's own tensors beside the merged weights (None until merged)."""
    shards: Shards | None = None
    """A sharded checkpoint's DCP directory (None: a single file). While `shards.loaded` is False
    its tensors are on disk only: model_state is empty and the training state's optimizer holds
    None for each tensor (`load_checkpoint(keep_sharded=True)`, for a sharded run to read its part)."""

    @property
    def unread_shards(self) -> Shards | None:
        """The shards whose tensors this checkpoint has not loaded (None: it holds all its tensors)."""
        return self.shards if self.shards is not None and not self.shards.loaded else None

    @property
    def adapter_only(self) -> bool:
        """model_state is an adapter's tensors, not a model's weights (a LoRA checkpoint as saved)."""
        return self.adapter is not None and self.adapter_state is None

    def build_model(self, device: torch.device | str = "cpu") -> GPT2:
        """The model with these weights, in eval mode, on `device`."""
        if self.adapter_only:
            raise CheckpointError(
                f"{self.path} holds a LoRA adapter without its base: open it with artifacts.open_checkpoint, "
                "which merges it onto the base"
            )
        model = GPT2(self.model_config)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as e:
            raise CheckpointError(f"{self.path}: weights do not match its config ({first_line(e)})") from None
        return model.to(device).eval()

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the model."""
        if self.tokenizer_json is None:
            raise CheckpointError(
                f"{self.path} carries no tokenizer: pass one with --tokenizer, or re-save it with one"
            )
        return Tokenizer.from_json(self.tokenizer_json)

    @property
    def trained_on(self) -> str | None:
        """The dataset directory this model was trained on, as recorded (None when unknown): the
        training state's in last.pth, extra['dataset'] in best.pth."""
        if self.training is not None and self.training.dataset is not None:
            return self.training.dataset.path
        recorded = (self.extra or {}).get("dataset")
        return recorded if isinstance(recorded, str) else None

    def summary(self) -> dict[str, Any]:
        """What `inspect` shows: plain data (JSON-serialisable), nothing printed."""
        groups = parameter_counts(((k, v.numel()) for k, v in self.model_state.items()),
                                  tied=self.model_config.tie_word_embeddings)
        tokenizer = None
        if self.tokenizer_json is not None:
            tok = self.tokenizer()
            tokenizer = {
                "type": f"byte-level {tok.kind}",
                "vocab_size": tok.vocab_size,
                "special_tokens": tok.special_tokens,
                "eos_id": tok.eos_id,
                "chat_template": template_name(tok.chat_template),  # 'none' for a base model
            }
        training = _training_summary(self.training) if self.training else None
        first = next(iter(self.model_state.values()), None)
        size = _size_on_disk(self.path) if self.path else None
        if size is not None and self.shards is not None and self.shards.directory.is_dir():
            size += _size_on_disk(self.shards.directory)
        return {
            "path": str(self.path) if self.path else None,
            "source": self.source,
            "file_bytes": size,
            "sharded": {"directory": str(self.shards.directory), "world_size": self.shards.world_size}
            if self.shards is not None else None,
            "format_version": self.format_version,
            "gpt2es_version": self.gpt2es_version,
            "model_config": self.model_config.to_dict(),
            "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
            "parameters": {**groups, "total": sum(groups.values())},
            "tokenizer": tokenizer,
            "training": training,
            "extra": self.extra,
            "adapter": self._adapter_summary(),
        }

    def _adapter_summary(self) -> dict[str, Any] | None:
        if self.adapter is None:
            return None
        tensors = self.adapter_state if self.adapter_state is not None else self.model_state
        record = self.adapter.to_dict()
        return {**record, "trainable_parameters": sum(t.numel() for t in tensors.values()),
                "layers": len(tensors) // 2, "scaling": self.adapter.scaling}

    def to_dict(self) -> dict[str, Any]:
        """The dict saved in the file. A merged adapter checkpoint saves as the full model it is
        (no adapter record); one holding the adapter's tensors alone saves as a LoRA checkpoint."""
        shards = self.unread_shards
        data = {
            "format": FORMAT,
            "format_version": SINGLE_FILE_VERSION if shards is None else SHARDED_FORMAT_VERSION,
            "gpt2es_version": __version__,
            "model_config": self.model_config.to_dict(),
            "model": clean_state_dict(self.model_state) if shards is None else {},
            "tokenizer": self.tokenizer_json,
            "training": self.training.to_dict() if self.training is not None else None,
            "extra": self.extra,
        }
        if shards is not None:  # the record of a sharded checkpoint: its tensors are in the directory
            data["shards"] = shards.to_dict()
        if self.adapter_only:
            assert self.adapter is not None
            data["adapter"] = self.adapter.to_dict()
        return data


def _training_summary(training: TrainingState) -> dict[str, Any]:
    """Scalars of a training state (optimizer and RNG states skipped) plus its metrics history."""
    summary: dict[str, Any] = training.scalars()
    if training.dataset is not None:
        summary["dataset"] = training.dataset.path
    records = training.metrics
    train = [(r["step"], r["loss"]) for r in records if r.get("type") == "train" and r.get("loss") is not None]
    evals = [r for r in records if r.get("type") == "eval" and r.get("val_loss") is not None]
    summary["train_loss"] = [{"step": step, "loss": loss} for step, loss in train]
    summary["evals"] = [
        {k: r.get(k) for k in ("step", "tokens", "val_loss", "val_perplexity", "elapsed") if k in r} for r in evals
    ]
    config = training.config
    if config:  # how it was trained: the recipe's settings, resolved
        plan = training.plan if isinstance(training.plan, dict) else {}
        summary["recipe"] = {
            **{k: config.get(k) for k in ("optimizer", "lr", "muon_lr", "min_lr", "schedule", "weight_decay",
                                         "grad_clip", "batch_size", "global_batch", "seq_len", "max_time")},
            "warmup_steps": plan.get("warmup_steps", config.get("warmup_steps")),
        }
    if evals:
        best = min(evals, key=lambda r: r["val_loss"])
        summary["best_val"] = {"val_loss": best["val_loss"], "step": best["step"], "tokens": best.get("tokens")}
    return summary


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to keys."""
    clean = {}
    for key, value in state.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Save atomically: a crash mid-save leaves the previous file intact."""
    data = checkpoint.to_dict()
    atomic_write(path, lambda f: torch.save(data, f))


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    config: ModelConfig,
    tokenizer: Tokenizer | None,
    training: TrainingState | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Convenience: save a live model (compiled or DDP-wrapped is fine) with its tokenizer."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    ckpt = Checkpoint(
        model_config=config,
        model_state=state,
        tokenizer_json=tokenizer.to_json() if tokenizer is not None else None,
        training=training,
        extra=extra or {},
    )
    save_checkpoint(path, ckpt)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    keep_sharded: bool = False) -> Checkpoint:
    """Load a gpt2es .pth file (for run or Hugging Face directories: artifacts.open_checkpoint).

    A sharded checkpoint's tensors load whole, here, without a process group; with `keep_sharded`
    they stay on disk (checked to be there and to fit the model) for a sharded run to read its part.
    A run still training may replace the file while it is read (and delete the shards the old one
    named): then the new file is read.
    """
    path = Path(path)
    for attempt in range(3):
        stamp = _stamp(path)
        try:
            return _read_checkpoint(path, map_location, keep_sharded)
        except CheckpointError:
            if attempt == 2 or stamp is None or _stamp(path) == stamp:
                raise
    raise AssertionError("unreachable")


def _stamp(path: Path) -> tuple[int, int] | None:
    """What changes when a file is replaced (by an atomic rename) or rewritten."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _read_checkpoint(path: Path, map_location: str | torch.device, keep_sharded: bool) -> Checkpoint:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a gpt2es checkpoint file (.pth)")
    data = safe_torch_load(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and any(isinstance(v, torch.Tensor) for v in data.values()):
            hint = " (it looks like a bare state_dict, which carries no config or tokenizer)"
        raise CheckpointError(f"{path} is not a gpt2es checkpoint{hint}")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} is not a gpt2es checkpoint (no format version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer gpt2es ({data.get('gpt2es_version')}, format {version}; "
            f"this is {__version__}, format {FORMAT_VERSION}): upgrade with pip install -U gpt2es"
        )
    try:
        config = ModelConfig.from_dict(data["model_config"])
        adapter = AdapterRecord.from_dict(data["adapter"]) if data.get("adapter") is not None else None
        shards = Shards.from_dict(data["shards"], path) if data.get("shards") is not None else None
        if shards is not None:
            problems = shard_problems(config, shards)
            what = "its shards do not fit its model config"
        elif adapter is not None:
            problems = adapter_problems(config, adapter, data["model"])
            what = "its adapter's tensors do not fit its rank and model config"
        else:
            problems = weight_problems(config, data["model"])
            what = "its weights do not fit its model config"
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckpointError(
                f"{path} is a damaged gpt2es checkpoint: {what}: "
                f"{problems[0]}{more}; use another checkpoint (a run's last.pth or best.pth)"
            )
        training = data.get("training")
        model_state = data["model"]
        if shards is not None and not keep_sharded:
            optimizer = training.get("optimizer") if isinstance(training, dict) else None
            model_state, optimizer = read_shards(shards, optimizer)
            if isinstance(training, dict):
                training = {**training, "optimizer": optimizer}
            shards = replace(shards, loaded=True)
        return Checkpoint(
            model_config=config,
            model_state=model_state,
            tokenizer_json=data.get("tokenizer"),
            training=TrainingState.from_dict(training) if training is not None else None,
            extra=data.get("extra") or {},
            gpt2es_version=str(data.get("gpt2es_version")),
            format_version=version,
            path=path,
            adapter=adapter,
            shards=shards,
        )
    except (KeyError, TypeError, Gpt2esError) as e:
        raise CheckpointError(f"{path} is a damaged gpt2es checkpoint ({e})") from None


# --- sharded checkpoints (torch.distributed.checkpoint) -------------------------------------------
MODEL_KEY, OPTIMIZER_KEY = "model", "optimizer"
"""The prefixes of the weights' and the optimizer state's tensors in a DCP directory."""
TreePath = tuple[str | int, ...]


@dataclass(frozen=True)
class Shards:
    """Where a sharded checkpoint's tensors are, and how they go back into a state."""

    directory: Path
    """The DCP directory (a sibling of the record file)."""
    model_keys: tuple[str, ...]
    """The weights' names (state_dict keys) the directory holds, under "model.<name>"."""
    optimizer_paths: tuple[TreePath, ...] = ()
    """Where each tensor of the optimizer's state_dict goes (keys and list indices from its root)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Weights saved once under another name: {"lm_head.weight": "wte.weight"} for a tied head."""
    world_size: int = 1
    """How many processes wrote it (any number can read it)."""
    loaded: bool = False
    """Its tensors were read into the Checkpoint that holds this (not only on disk)."""

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory.name, "model": list(self.model_keys),
                "optimizer": [list(p) for p in self.optimizer_paths], "aliases": dict(self.aliases),
                "world_size": self.world_size}

    @classmethod
    def from_dict(cls, data: Any, record: Path) -> Shards:
        """Read a record's `shards` (the directory taken beside the record file `record`)."""
        name = data.get("directory") if isinstance(data, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError("its shards record is damaged: no directory name beside the file")
        return cls(
            directory=record.parent / data["directory"],
            model_keys=tuple(str(k) for k in data["model"]),
            optimizer_paths=tuple(tuple(p) for p in data.get("optimizer") or ()),
            aliases={str(k): str(v) for k, v in (data.get("aliases") or {}).items()},
            world_size=int(data.get("world_size") or 1),
        )

    def model_key(self, name: str) -> str:
        return f"{MODEL_KEY}.{name}"

    def optimizer_key(self, path: TreePath) -> str:
        return ".".join([OPTIMIZER_KEY, *map(str, path)])

    def keys(self) -> list[str]:
        """Every tensor's key in the directory."""
        return [self.model_key(k) for k in self.model_keys] + [self.optimizer_key(p) for p in self.optimizer_paths]


def split_tensors(tree: Any, path: TreePath = ()) -> tuple[Any, list[TreePath], list[torch.Tensor]]:
    """`tree` (nested dicts and lists) with every tensor replaced by None, the tensors' paths, the tensors."""
    if isinstance(tree, torch.Tensor):
        return None, [path], [tree]
    paths: list[TreePath] = []
    tensors: list[torch.Tensor] = []
    if isinstance(tree, dict):
        skeleton: Any = {}
        for key, value in tree.items():
            skeleton[key], p, t = split_tensors(value, (*path, key))
            paths += p
            tensors += t
        return skeleton, paths, tensors
    if isinstance(tree, (list, tuple)):
        items = []
        for i, value in enumerate(tree):
            item, p, t = split_tensors(value, (*path, i))
            items.append(item)
            paths += p
            tensors += t
        return type(tree)(items) if isinstance(tree, list) else tuple(items), paths, tensors
    return tree, paths, tensors


def join_tensors(skeleton: Any, paths: Iterable[TreePath], tensors: Iterable[torch.Tensor]) -> Any:
    """The inverse of `split_tensors`: a copy of `skeleton` with each tensor put back at its path."""
    def copy(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: copy(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [copy(v) for v in node]  # lists while filled in; the tuples come back below
        return node

    tree = copy(skeleton)
    for path, tensor in zip(paths, tensors, strict=True):
        node = tree
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = tensor
    return _tuples_back(tree, skeleton)


def _tuples_back(tree: Any, skeleton: Any) -> Any:
    if isinstance(skeleton, dict):
        return {k: _tuples_back(tree[k], v) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        items = [_tuples_back(t, v) for t, v in zip(tree, skeleton, strict=True)]
        return tuple(items) if isinstance(skeleton, tuple) else items
    return tree


def tensor_at(tree: Any, path: TreePath) -> Any:
    """The value at `path` in nested dicts and lists (None where there is none)."""
    for key in path:
        try:
            tree = tree[key]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP directory's .metadata (a pickle), allowing DCP's own metadata classes only."""

    MODULES = ("torch.distributed.checkpoint.metadata",)
    NAMES = frozenset({("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
             ("torch", "Size"), ("collections", "OrderedDict"), ("pathlib", "PosixPath"),
             ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")})

    def find_class(self, module: str, name: str) -> Any:
        allowed = module in self.MODULES or (module, name) in self.NAMES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        if not allowed:
            raise CheckpointError(f"its shards' metadata refers to {module}.{name}, which gpt2es does not load")
        return super().find_class(module, name)


def _reader(directory: Path) -> Any:
    """A DCP reader of `directory` whose metadata is read through `_MetadataUnpickler`."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(directory / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(directory)


def shard_shapes(shards: Shards) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each tensor's key in the directory: its whole shape and dtype (from the metadata alone)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    where = shards.directory
    if not (where / ".metadata").is_file():
        raise CheckpointError(
            f"its shards {where} are missing or incomplete, a save that never finished; use another checkpoint "
            "of the run: a numbered step-NNNNNNN.pth, or best.pth for its weights"
        )
    try:
        metadata = _reader(where).read_metadata()
    except CheckpointError:
        raise
    except Exception as e:  # a truncated or foreign pickle: anything it raises is one damaged file
        raise CheckpointError(f"cannot read the metadata of its shards {where} ({first_line(e, 120)})") from None
    return {key: (tuple(m.size), m.properties.dtype) for key, m in metadata.state_dict_metadata.items()
            if isinstance(m, TensorStorageMetadata)}


def shard_problems(config: ModelConfig, shards: Shards) -> list[str]:
    """What is wrong with the shards as the weights (and optimizer state) of a GPT2 with `config`."""
    found = shard_shapes(shards)
    names = [*shards.model_keys, *shards.aliases]
    model = {k: torch.empty(found[shards.model_key(k)][0], device="meta", dtype=found[shards.model_key(k)][1])
             for k in shards.model_keys if shards.model_key(k) in found}
    model.update({alias: model[target] for alias, target in shards.aliases.items() if target in model})
    problems = [f"{shards.model_key(k)} is missing from {shards.directory.name}"
                for k in shards.model_keys if shards.model_key(k) not in found]
    problems += tensor_problems({k: model[k] for k in names if k in model}, GPT2.state_shapes(config),
                                "the model", "the config")
    problems += [f"{shards.optimizer_key(p)} is missing from {shards.directory.name}"
                 for p in shards.optimizer_paths if shards.optimizer_key(p) not in found]
    return problems


def read_shards(shards: Shards, optimizer: Any = None) -> tuple[dict[str, torch.Tensor], Any]:
    """A sharded checkpoint's weights and optimizer state whole, on the CPU, read in this process alone
    (no process group needed, any number of processes wrote it). `optimizer` is the record's
    optimizer state with None for each tensor; it comes back filled in (None stays None)."""
    import torch.distributed.checkpoint as dcp

    shapes = shard_shapes(shards)
    targets = {key: torch.empty(shapes[key][0], dtype=shapes[key][1]) for key in shards.keys()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is", category=UserWarning)
            dcp.load(targets, storage_reader=_reader(shards.directory), no_dist=True)
    except Exception as e:  # a missing or truncated shard file
        raise CheckpointError(f"cannot read its shards {shards.directory} ({first_line(e, 160)})") from None
    weights = {k: targets[shards.model_key(k)] for k in shards.model_keys}
    weights.update({alias: weights[target] for alias, target in shards.aliases.items()})
    if optimizer is not None:
        optimizer = join_tensors(optimizer, shards.optimizer_paths,
                                 [targets[shards.optimizer_key(p)] for p in shards.optimizer_paths])
    return weights, optimizer


def read_shards_into(shards: Shards, targets: dict[str, torch.Tensor]) -> None:
    """Read the tensors of `shards` into `targets` in place (keys as in `Shards.keys`), every process of a
    sharded run together: each reads the part of each DTensor it holds, however many processes wrote them."""
    import torch.distributed.checkpoint as dcp

    missing = sorted(set(targets) - set(shard_shapes(shards)))
    if missing:
        raise CheckpointError(f"its shards {shards.directory} lack {missing[0]} (and {len(missing) - 1} more)")
    try:
        dcp.load(targets, storage_reader=_reader(shards.directory))
    except Exception as e:
        raise CheckpointError(f"cannot read its shards {shards.directory} ({first_line(e, 160)})") from None


def write_shards(directory: Path, tensors: dict[str, torch.Tensor], process_group: Any = None,
                 asynchronous: bool = False) -> Any:
    """Write `tensors` (each process its part of each DTensor; plain tensors once) as a DCP directory, every
    process together. Asynchronous: return once they are copied to CPU memory, with a Future that is done
    when the directory is whole (on the main process: every process's part and the metadata written)."""
    import torch.distributed.checkpoint as dcp

    if asynchronous:
        return dcp.async_save(tensors, checkpoint_id=directory, process_group=process_group)
    dcp.save(tensors, checkpoint_id=directory, process_group=process_group)
    return None


def record_shards(path: str | Path) -> str | None:
    """The name of the DCP directory a checkpoint file's record points to (None: a single file, or unreadable).
    Reads no tensor (memory-mapped)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    shards = data.get("shards") if isinstance(data, dict) else None
    return shards.get("directory") if isinstance(shards, dict) and isinstance(shards.get("directory"), str) else None


def consolidate(source: str | Path, out: str | Path) -> Checkpoint:
    """Write the checkpoint `source` (a sharded one read whole) as one single-file checkpoint `out`
    (atomically), training state included: it loads and resumes wherever a .pth does. Returns it."""
    checkpoint = load_checkpoint(source)
    save_checkpoint(out, checkpoint)  # its shards are loaded: written whole
    return checkpoint


def tensor_problems(state: dict[str, Any], shapes: dict[str, Any], owner: str, implied_by: str) -> list[str]:
    """What is wrong with `state` against the expected `shapes`: missing, unexpected (not part of `owner`) or
    non-tensor entries, shapes other than `implied_by` implies, non-floating dtypes."""
    problems = [f"{key} is missing" for key in shapes if key not in state]
    problems += [f"{key} is not part of {owner}" for key in state if key not in shapes]
    for key, shape in shapes.items():
        value = state.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(shape):
            problems.append(f"{key} has shape {tuple(value.shape)}, {implied_by} implies {tuple(shape)}")
        elif not value.is_floating_point():
            problems.append(f"{key} holds {value.dtype} values, not floating point")
    return problems


def weight_problems(config: ModelConfig, state: Any) -> list[str]:
    """What is wrong with `state` as the weights of a GPT2 with `config`: missing, unexpected or
    non-tensor entries, wrong shapes, non-floating dtypes (empty when it fits)."""
    if not isinstance(state, dict):
        return [f"the weights are a {type(state).__name__}, not a dict of tensors"]
    state = clean_state_dict(state)
    return tensor_problems(state, GPT2.state_shapes(config), "the model", "the config")


def safe_torch_load(path: Path, map_location: str | torch.device) -> Any:
    """torch.load(weights_only=True), with its failures turned into one-line messages."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: the file is truncated or was never written")
    if not zipfile.is_zipfile(path):
        # Our checkpoints are torch zip archives; anything else is never handed to the unpickler.
        raise CheckpointError(f"cannot read {path}: not a gpt2es checkpoint, or the file is truncated or corrupt")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused a global: the file holds arbitrary Python objects. Never retry
        # with weights_only=False: unpickling can run any code the file's author chose.
        raise CheckpointError(
            f"refused to load {path}: it contains arbitrary Python objects that could run code, "
            "and gpt2es only loads plain tensors and data"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({first_line(e, 120)})"
        ) from None
