"""Everything decided before the first step: settings resolved, inputs checked, nothing written.

`plan_run` validates the dataset, model, batch and budget against each other and against the
run directory, and returns a `RunPlan`; any problem raises one of our errors before a file is
touched. `resume_config` rebuilds a run's settings from its checkpoint for `--resume`;
`find_resume` picks the checkpoint `--resume auto` continues (`resumable_checkpoints` lists them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gpt2es_cli.artifacts import base_source, open_base, open_checkpoint
from gpt2es_cli.checkpoint import AdapterRecord, Checkpoint, TrainingState, load_checkpoint
from gpt2es_cli.config import ModelConfig, TrainConfig
from gpt2es_cli.data.dataset import PreparedDataset
from gpt2es_cli.data.shards import MergedDataset, open_dataset
from gpt2es_cli.errors import CheckpointError, ConfigError, DataError
from gpt2es_cli.hub import is_hub_id, with_revision
from gpt2es_cli.lora import base_record, require_peft, resolve_base_dtype
from gpt2es_cli.settings import AUTO, duration_text, value_problems
from gpt2es_cli.tokenizer import Tokenizer
from gpt2es_cli.training.budget import Budget, StepPlan, plan_steps, step_budgets
from gpt2es_cli.training.memory import (
    BatchChoice,
    available_memory,
    choose_batch_size,
    estimate_training_memory,
    lora_options,
    pick_parallel,
    sharding_options,
    training_precision,
)
from gpt2es_cli.training.parallel import strategy_problem
from gpt2es_cli.training.rundir import run_files
from gpt2es_cli.training.sizing import SizeChoice, choose_model_size, measure_training_speed

PROBE_BATCH = 8
"""Windows per pass when --preset auto times its candidates under --batch-size auto."""


class RunFinished(ConfigError):
    """The resumed run has already trained its whole budget: there is nothing left to train."""


FIXED_ON_RESUME = (
    "preset", "n_layer", "n_head", "n_embd", "n_positions", "untied_head", "position", "rope_theta", "init_from",
    "revision", "seq_len", "seed", "optimizer", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
)
"""Settings a resumed run must keep: the architecture, the data windows and their order, the optimizer
(its state is the one in the checkpoint), the LoRA adapter's shape."""


@dataclass
class RunPlan:
    """A training run, fully resolved and checked."""

    config: TrainConfig
    """The settings with the defaults that do not depend on the plan filled in (out, seq_len,
    global_batch, min_lr); warmup, evaluations and saves left as given follow the plan."""
    model_config: ModelConfig
    dataset: PreparedDataset | MergedDataset
    """The dataset, or a corpus's shards read as one (data/shards.py)."""
    tokenizer: Tokenizer
    run_dir: Path
    step_plan: StepPlan
    """The step plan: budget, steps and learning-rate schedule (fitted to --max-time as the run goes)."""
    accum_steps: int
    """Micro-batches per optimizer step in each process."""
    world_size: int
    resume: Checkpoint | None = None
    """The checkpoint to continue from (with its training state)."""
    continuing: bool = False
    """The run directory is the resumed checkpoint's own: its files are kept and continued."""
    init_weights: dict[str, Any] | None = None
    """Weights to start from (--init-from)."""
    batch_choice: BatchChoice | None = None
    """What --batch-size auto chose and why (None: the batch size was given)."""
    size_choice: SizeChoice | None = None
    """What --preset auto chose and why (None: a preset, a shape, --init-from or --resume gave the model)."""
    adapter: AdapterRecord | None = None
    """With --lora-rank: the adapter the run trains, on the base in init_weights (which stays frozen)."""
    base_dtype: torch.dtype = torch.float32
    """With --lora-rank: what the frozen weight matrices are held in (--lora-base-dtype resolved)."""

    @property
    def tokens_per_step(self) -> int:
        return self.config.global_batch * self.config.seq_len

    @property
    def total_steps(self) -> int:
        """The steps the schedule plans for now (an upper bound until fitted to --max-time)."""
        return self.step_plan.total_steps

    @property
    def budget(self) -> Budget:
        """Which setting sets total_steps."""
        return self.step_plan.budget

    @property
    def warmup_steps(self) -> int:
        return self.step_plan.warmup_steps


def default_run_dir(data: str) -> Path:
    """runs/<name of the dataset directory>."""
    name = Path(data).resolve().name or "run"
    return Path("runs") / name


def run_directory(config: TrainConfig) -> Path:
    """Where the run's files go: --out, else runs/<name of the dataset directory>."""
    return Path(config.out) if config.out else default_run_dir(config.data)


def resolve_resume_path(path: str | Path) -> Path:
    """A run directory means its last.pth; a file means itself."""
    path = Path(path)
    if path.is_dir():
        last = path / "last.pth"
        if not last.is_file():
            raise CheckpointError(f"{path} holds no last.pth to resume: pass a run directory or a checkpoint file")
        return last
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a run directory or a checkpoint file")
    return path


def load_resume_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint `--resume` names, checked to carry a training state (a sharded one's tensors stay on
    disk, checked: the run reads them, each process its part)."""
    ckpt = load_checkpoint(resolve_resume_path(path), keep_sharded=True)
    training_state(ckpt)
    return ckpt


def resumable_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints a run can continue from, newest first: last.pth, then the numbered copies
    step-NNNNNNN.pth (--keep-last) by their step (each is named after the step it holds)."""
    run_dir = Path(run_dir)
    numbered = {}
    for path in run_dir.glob("step-*.pth"):
        match = re.fullmatch(r"step-(\d+)\.pth", path.name)
        if match and path.is_file():
            numbered[path] = int(match.group(1))
    last = run_dir / "last.pth"
    return ([last] if last.is_file() else []) + sorted(numbered, key=numbered.__getitem__, reverse=True)


@dataclass(frozen=True)
class AutoResume:
    """What `--resume auto` found in a run directory."""

    run_dir: Path
    checkpoint: Checkpoint | None
    """The newest checkpoint that loads with a training state; None: no run to continue, start one."""
    passed_over: tuple[str, ...] = ()
    """Why each newer checkpoint could not be used (one line each: truncated, corrupt, ...)."""
    restart: tuple[str, ...] = ()
    """The files of a run killed before its first last.pth (best.pth, config.yaml, ...): it has no
    state to continue, so it starts again, its files set aside until the new run saves (as --force)."""


def find_resume(run_dir: str | Path) -> AutoResume:
    """The checkpoint `--resume auto` continues the run in `run_dir` from: the first of
    `resumable_checkpoints` that loads. Reads files only, so every process of a run, reading the
    same directory, chooses the same one. Raises when the directory holds checkpoints with a
    training state and none of them loads (a new run there would replace them)."""
    run_dir = Path(run_dir)
    passed_over: list[str] = []
    for path in resumable_checkpoints(run_dir):
        try:
            return AutoResume(run_dir, load_resume_checkpoint(path), tuple(passed_over))
        except CheckpointError as e:
            passed_over.append(str(e))
    fix = "start a new run with another --out, or replace this one with --force instead of --resume auto"
    if passed_over:
        more = f" (and {len(passed_over) - 1} older one(s) fail to load too)" if len(passed_over) > 1 else ""
        raise CheckpointError(f"cannot resume {run_dir}: {passed_over[0]}{more}; {fix}")
    existing = run_files(run_dir)  # no last.pth or step copy was ever written: killed before its first save
    return AutoResume(run_dir, None, restart=tuple(existing))


def training_state(checkpoint: Checkpoint) -> TrainingState:
    """The training state a resume continues; a one-line error when `checkpoint` holds weights only."""
    if checkpoint.training is None or not checkpoint.training.resumable:
        raise CheckpointError(
            f"{checkpoint.path} holds weights but no training state (best.pth and exported models do not): "
            f"resume from the run's last.pth, or start a new run from it with --init-from {checkpoint.path}"
        )
    return checkpoint.training


def resume_config(checkpoint: Checkpoint, explicit: dict[str, Any]) -> TrainConfig:
    """The settings of the run `checkpoint` belongs to, updated with the ones given now.

    Budgets, intervals, learning rate, device and precision may change; the architecture, the
    window length and the seed may not (they define the model and the data order).
    """
    saved = TrainConfig.from_dict(training_state(checkpoint).config, source=f"{checkpoint.path}")
    given = {k.replace("-", "_"): v for k, v in explicit.items()}
    problems = value_problems(TrainConfig, given)  # a bad value is named as such, before any comparison
    if problems:
        raise ConfigError("invalid training settings: " + "; ".join(problems))
    changed = [k for k in FIXED_ON_RESUME if k in given and given[k] != getattr(saved, k)]
    if changed:
        model = checkpoint.model_config  # what a preset's unset shape fields resolved to
        was = ", ".join(
            f"{k}={getattr(model, k) if getattr(saved, k) is None and hasattr(model, k) else getattr(saved, k)!r}"
            for k in changed
        )
        options = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(
            f"cannot change {options} when resuming {checkpoint.path} (the run has {was}): "
            f"drop those options, or start a new run from it with --init-from {checkpoint.path}"
        )
    if "out" not in given:
        given["out"] = str(checkpoint.path.parent)
    return saved.updated(given, source="resume")


def _architecture(model: ModelConfig) -> str:
    return ", ".join(
        f"{k}={getattr(model, k)}"
        for k in ("n_layer", "n_head", "n_embd", "n_positions", "tie_word_embeddings", "position", "rope_theta")
    )


def _tokenizers_match(a: Tokenizer, b: Tokenizer) -> bool:
    return a.backend.get_vocab(with_added_tokens=True) == b.backend.get_vocab(with_added_tokens=True)


def _model_config(config: TrainConfig, dataset: PreparedDataset | MergedDataset, tokenizer: Tokenizer,
                  resume: Checkpoint | None) -> tuple[ModelConfig, Checkpoint | None]:
    """The model the run trains, and the --init-from checkpoint it starts from (None: from scratch or resumed)."""
    overrides = config.model_overrides()
    dropout = overrides.pop("dropout", None)
    if resume is not None:
        model = resume.model_config
        if config.init_from:
            wanted = replace(model, **overrides)
        else:
            wanted = ModelConfig.from_preset(config.preset, vocab_size=model.vocab_size, **overrides)
        if _architecture(wanted) != _architecture(model):
            raise CheckpointError(
                f"cannot resume {resume.path}: its model has {_architecture(model)} but this run asks for "
                f"{_architecture(wanted)}; resume with the run's settings or start a new run with --init-from"
            )
        return (replace(model, dropout=dropout) if dropout is not None else model), None
    if config.init_from:
        if overrides:
            raise ConfigError(
                f"--{next(iter(overrides)).replace('_', '-')} cannot change the architecture of the "
                f"--init-from model {config.init_from}: drop it (only --dropout may change)"
            )
        # a .pth, a run directory, a Hugging Face directory or a Hub id (at --revision)
        init = open_checkpoint(with_revision(config.init_from, config.revision))
        model = init.model_config
        if init.tokenizer_json is not None:
            init_tokenizer = init.tokenizer()
            if not _tokenizers_match(init_tokenizer, tokenizer):
                raise DataError(
                    f"{config.data} was tokenized with another tokenizer ({tokenizer.vocab_size} ids) than the "
                    f"--init-from model {config.init_from} ({init_tokenizer.vocab_size} ids): prepare the data "
                    "again with that model's tokenizer (gpt2es prepare --tokenizer)"
                )
        elif model.vocab_size < dataset.vocab_size:
            raise DataError(
                f"{config.data} has {dataset.vocab_size} token ids but the --init-from model "
                f"{config.init_from} has only {model.vocab_size}: prepare the data with the model's tokenizer"
            )
        if dropout is not None:
            model = replace(model, dropout=dropout)
        return model, init
    return ModelConfig.from_preset(config.preset, vocab_size=dataset.vocab_size, dropout=dropout, **overrides), None


def plan_run(config: TrainConfig, world_size: int = 1, resume: Checkpoint | None = None,
             force: bool = False) -> RunPlan:
    """Resolve and check a run without writing anything (raises on the first blocking problem)."""
    config.validate(world_size)
    dataset = open_dataset(config.data)  # one dataset, or a directory of shards checked to belong together
    tokenizer = dataset.tokenizer()
    size_choice = None
    shape = set(config.model_overrides()) - {"dropout", "tie_word_embeddings", "position", "rope_theta"}
    if resume is None and not config.init_from and config.preset == AUTO and not shape:
        size_choice = _choose_size(config, dataset.vocab_size, world_size)
        chosen = size_choice.model
        config = replace(config, n_layer=chosen.n_layer, n_head=chosen.n_head, n_embd=chosen.n_embd,
                         n_positions=chosen.n_positions, lr=config.lr if config.lr is not None else size_choice.lr)
    config = replace(config, lr=config.peak_lr)
    if config.min_lr is not None and config.min_lr > config.lr:
        raise ConfigError(f"--min-lr ({config.min_lr:g}) must not exceed the learning rate ({config.lr:g}): lower it")
    base_dtype = torch.float32
    if config.lora_rank is not None:  # the adapters train with AdamW; alpha resolved
        config = replace(config, optimizer="adamw", lora_alpha=config.lora_scale)
        base_dtype = _lora_base_dtype(config)
    model_config, init = _model_config(config, dataset, tokenizer, resume)
    config = _parallel(config, model_config, world_size)
    init_weights = init.model_state if init is not None else None
    adapter = None
    if config.lora_rank is not None:
        adapter, init_weights = _adapter(config, init, resume)
    training = training_state(resume) if resume is not None else None
    if resume is not None and training is not None:
        trained_on = training.dataset.train_sha256 if training.dataset is not None else None
        if trained_on and trained_on != dataset.meta["splits"]["train"]["sha256"]:
            raise DataError(
                f"{config.data} is not the dataset {resume.path} was trained on (its train tokens differ): "
                "resume with the run's dataset (--data), or start a new run with --init-from"
            )

    seq_len = config.seq_len or model_config.n_positions
    if seq_len > model_config.n_positions:
        raise ConfigError(
            f"--seq-len {seq_len} is longer than the model's context of {model_config.n_positions} tokens: "
            f"use --seq-len {model_config.n_positions} or less"
        )
    train_tokens = dataset.num_tokens("train")
    if train_tokens < seq_len + 1:
        raise DataError(
            f"{dataset.label('train')} has {train_tokens} tokens, fewer than one window of --seq-len {seq_len}: "
            "lower --seq-len or prepare more text"
        )
    if config.eval_interval != 0 and dataset.num_tokens("val") < seq_len + 1:
        raise DataError(
            f"{dataset.label('val')} has {dataset.num_tokens('val')} tokens, fewer than one window of "
            f"--seq-len {seq_len}: lower --seq-len, prepare a bigger validation split, or pass --eval-interval 0"
        )

    batch_choice = None
    if config.batch_size == AUTO:  # the largest micro-batch that fits (and divides --global-batch)
        batch_choice = choose_batch_size(config, model_config, seq_len, train_tokens, world_size)
        config = replace(config, batch_size=batch_choice.batch_size)
    per_pass = config.batch_size * world_size
    global_batch = config.global_batch or per_pass  # a multiple of per_pass: config.validate(world_size)
    tokens_per_step = global_batch * seq_len
    windows = (train_tokens - 1) // seq_len
    if global_batch > windows:
        option = "--global-batch" if config.global_batch else "--batch-size"
        raise ConfigError(
            f"{option} asks for {global_batch:,} windows per step but {dataset.label('train')} holds only "
            f"{windows:,} windows of {seq_len} tokens: lower {option} (or --seq-len), or prepare more text"
        )
    if batch_choice is None:
        _check_batch_fits(config, model_config, seq_len, world_size)
    budgets = step_budgets(config, train_tokens, tokens_per_step)
    steps = plan_steps(config, budgets, train_tokens, tokens_per_step, training)

    if resume is not None and training is not None:
        done, trained = training.step, training.elapsed
        if steps.fit_time and config.max_time is not None and trained >= config.max_time:
            raise RunFinished(
                f"{resume.path} already trained {duration_text(trained)}, its whole --max-time "
                f"{duration_text(config.max_time)}: raise --max-time to train further"
            )
        bound = steps.cap if steps.fit_time else steps.total_steps
        if bound is not None and done >= bound:
            budget = steps.cap_budget if steps.fit_time else steps.budget
            raise RunFinished(
                f"{resume.path} already finished its budget ({budget}: {bound} steps, it is at step {done}): "
                "raise --max-steps, --max-tokens, --epochs or --max-time to train further"
            )

    run_dir = run_directory(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file: choose a directory for the run")
    if (run_dir / "meta.json").is_file() or (run_dir / "train.bin").exists():
        raise ConfigError(f"--out {run_dir} holds a prepared dataset: choose another directory for the run")
    existing = run_files(run_dir)
    continuing = resume is not None and resume.path is not None and resume.path.parent.resolve() == run_dir.resolve()
    if adapter is not None and not is_hub_id(adapter.base.source) and run_dir.resolve() in Path(adapter.base.source).parents:
        raise ConfigError(
            f"the --init-from model {adapter.base.source} is inside --out {run_dir}, and a LoRA run's checkpoints "
            "need their base to stay: choose another --out"
        )
    if existing and not continuing and not force:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(existing[:3])}): resume it with --resume {run_dir}, "
            "choose another --out, or pass --force to replace it"
        )

    resolved = replace(
        config, out=str(run_dir), seq_len=seq_len, global_batch=global_batch, min_lr=config.floor_lr
    )
    return RunPlan(
        config=resolved,
        model_config=model_config,
        dataset=dataset,
        tokenizer=tokenizer,
        run_dir=run_dir,
        step_plan=steps,
        accum_steps=global_batch // per_pass,
        world_size=world_size,
        resume=resume,
        continuing=continuing,
        init_weights=init_weights,
        batch_choice=batch_choice,
        size_choice=size_choice,
        adapter=adapter,
        base_dtype=base_dtype,
    )


def _parallel(config: TrainConfig, model: ModelConfig, world_size: int) -> TrainConfig:
    """--parallel resolved (auto: fsdp when a replica would not fit, memory.pick_parallel; LoRA: ddp), checked."""
    precision = training_precision(config)
    if config.parallel == AUTO:
        chosen = "ddp" if config.lora_rank is not None else pick_parallel(model, config, world_size, precision.device)
        config = replace(config, parallel=chosen)
    problem = strategy_problem(config, precision)
    if problem:
        raise ConfigError(problem)
    return config


def _lora_base_dtype(config: TrainConfig) -> torch.dtype:
    """--lora-base-dtype for this run's compute dtype (a one-line error when they do not go together)."""
    require_peft()  # said before anything is loaded
    return resolve_base_dtype(config.lora_base_dtype, training_precision(config).autocast_dtype)


def _adapter(config: TrainConfig, init: Checkpoint | None,
             resume: Checkpoint | None) -> tuple[AdapterRecord, dict[str, Any]]:
    """The adapter a LoRA run trains and the base weights under it: a new one on the --init-from
    model, or the resumed checkpoint's on its base (found again and checked)."""
    assert config.lora_rank is not None and config.init_from
    if resume is not None:
        if resume.adapter is None:
            raise CheckpointError(
                f"{resume.path} holds a full model, not a LoRA adapter: resume it without --lora-rank, or start a "
                f"LoRA run from it with --init-from {resume.path}"
            )
        return resume.adapter, open_base(resume.adapter, resume.path).model_state
    assert init is not None
    source, revision = base_source(config.init_from, config.revision, init)
    record = base_record(init, source, revision, rank=config.lora_rank, alpha=config.lora_scale,
                         dropout=config.lora_dropout, targets=config.lora_targets)
    return record, init.model_state


def _check_batch_fits(config: TrainConfig, model: ModelConfig, seq_len: int, world_size: int) -> None:
    """Refuse a micro-batch whose estimated training step needs more memory than the device has
    (free RAM on the CPU and MPS, the whole GPU on CUDA): it could only fail, after a long start."""
    precision = training_precision(config)
    device = precision.device
    needed = estimate_training_memory(
        model, seq_len, config.batch_size, autocast_dtype=precision.autocast_dtype,
        activation_checkpointing=config.activation_checkpointing, optimizer=config.optimizer,
        device_type=device.type, world_size=world_size, **lora_options(config, precision.autocast_dtype),
        **sharding_options(config, model, world_size, device),  # a sharded run's share
    ).total
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"the {device} GPU's"
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))  # processes sharing this machine's RAM
        have, where = available_memory(device) // max(1, local), "the free"
    if needed > have:
        raise ConfigError(
            f"--batch-size {config.batch_size} x --seq-len {seq_len} needs about {needed / 2**30:.1f} GB for a "
            f"training step, more than {where} {have / 2**30:.1f} GB: lower --batch-size (the global batch can stay, "
            "by gradient accumulation), use --batch-size auto or --activation-checkpointing"
        )


def _choose_size(config: TrainConfig, vocab_size: int, world_size: int) -> SizeChoice:
    """--preset auto: time each candidate model on this run's device, batch and sequence length."""
    precision = training_precision(config)
    batch = config.batch_size if isinstance(config.batch_size, int) else PROBE_BATCH
    dropout = config.dropout if config.dropout is not None else 0.0

    def measure(model: ModelConfig) -> float | None:
        return measure_training_speed(model, config, config.seq_len or model.n_positions, batch, precision)

    return choose_model_size(config, vocab_size, dropout, measure, world_size)
