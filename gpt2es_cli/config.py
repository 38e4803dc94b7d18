"""The settings dataclasses: ModelConfig (architecture) with named presets, TrainConfig (`train`),
PrepareConfig (`prepare`). Each setting is declared once, as a field (see settings.py)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from gpt2es_cli.errors import ConfigError, GenerationError
from gpt2es_cli.settings import Settings, build, field_problems, parse_duration, parse_size, setting

ACTIVATIONS = ("gelu", "gelu_new")
POSITIONS = ("learned", "sinusoidal", "rope")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only GPT-2."""

    vocab_size: int = setting(50257, ge=1, le=2**32)
    """Number of token ids the embedding and output projection cover."""
    n_positions: int = setting(1024, ge=1, le=1 << 20)
    """Context length: the most tokens the model attends over (learned positions)."""
    n_layer: int = setting(12, ge=1, le=1024)
    """Number of transformer blocks."""
    n_head: int = setting(12, ge=1, le=1024)
    """Attention heads per block; must divide n_embd."""
    n_embd: int = setting(768, ge=1, le=1 << 16)
    """Width of the residual stream."""
    dropout: float = setting(0.0, ge=0, lt=1)
    """Dropout on embeddings, attention weights and residual branches (0 disables)."""
    activation: str = setting("gelu_new", choices=ACTIVATIONS)
    """Feed-forward activation: 'gelu' (exact) or 'gelu_new' (tanh approximation, OpenAI GPT-2)."""
    layer_norm_eps: float = setting(1e-5, gt=0, le=1)
    """Epsilon of every LayerNorm."""
    tie_word_embeddings: bool = setting(True)
    """The output projection is the token embedding (GPT-2); false: a separate output matrix."""
    position: str = setting("learned", choices=POSITIONS)
    """How tokens know their position: learned (GPT-2's trained table), sinusoidal (the original
    Transformer's fixed table, computed, not saved) or rope (rotary embeddings on queries and keys)."""
    rope_theta: float = setting(10000.0, gt=1, le=1e9)
    """RoPE's base (--position rope): the longest wavelength is about 2 pi theta tokens."""

    def problems(self) -> list[str]:
        """Every problem with this config, in words a user can act on (empty when valid)."""
        found = field_problems(self, label=lambda f: f.name)  # not options: named as in config.json
        if (
            isinstance(self.n_embd, int)
            and isinstance(self.n_head, int)
            and self.n_head > 0
            and self.n_embd > 0
            and self.n_embd % self.n_head
        ):
            found.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        elif self.position == "rope" and isinstance(self.n_embd, int) and isinstance(self.n_head, int) and (
            self.n_head > 0 and (self.n_embd // self.n_head) % 2
        ):
            found.append(f"rope needs an even head width, but n_embd / n_head is {self.n_embd // self.n_head}")
        return found

    def validate(self) -> ModelConfig:
        """Raise ConfigError listing every problem at once; return self when valid."""
        found = self.problems()
        if found:
            raise ConfigError("invalid model config: " + "; ".join(found))
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. a checkpoint's); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data).validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see PRESETS), with fields overridden one by one; 'auto' starts from small
        (training/sizing.py resolves auto before a model is built, as explicit overrides)."""
        if name == "auto":
            name = "small"
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(PRESETS[name], **given).validate()


PRESETS: dict[str, ModelConfig] = {
    # For tests: a forward pass takes about a millisecond.
    "tiny": ModelConfig(n_positions=64, n_layer=2, n_head=2, n_embd=32),
    # Trains on a laptop CPU in minutes to hours.
    "small": ModelConfig(n_positions=256, n_layer=6, n_head=6, n_embd=384),
    # The OpenAI GPT-2 family (124M, 355M, 774M, 1.5B with the GPT-2 vocabulary).
    "gpt2": ModelConfig(n_positions=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": ModelConfig(n_positions=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": ModelConfig(n_positions=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": ModelConfig(n_positions=1024, n_layer=48, n_head=25, n_embd=1600),
}


# --- training -----------------------------------------------------------------------------------

SCHEDULES = ("cosine", "linear", "constant", "wsd", "onecycle")
DEFAULT_LR = 6e-4
"""GPT-2's peak learning rate, for --lr when it is not given (and --preset auto does not size the model)."""
OPTIMIZERS = ("adamw", "muon")
PARALLEL_CHOICES = ("ddp", "fsdp", "auto")
"""--parallel: a replica per process, sharded (FSDP2), or fsdp only when a replica would not fit."""
MODEL_OVERRIDES = ("n_layer", "n_head", "n_embd", "n_positions", "dropout", "position", "rope_theta")
"""TrainConfig fields that override the preset's ModelConfig."""



def parse_loggers(value: object, option: str = "--log-to") -> str:
    """'tensorboard, csv' -> 'tensorboard,csv': names of registered loggers, each once, in the order given."""
    from gpt2es_cli.training.subscribers.registry import OPTIONAL  # imports nothing; here, once config is loaded

    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIONAL]
    if unknown:
        raise ConfigError(f"{option}: unknown logger(s) {', '.join(unknown)}: choose from {', '.join(OPTIONAL)}")
    return ",".join(dict.fromkeys(names))


LORA_LAYERS = {
    "c_attn": ("attn.c_attn",), "attn.c_attn": ("attn.c_attn",), "c_proj": ("attn.c_proj", "mlp.c_proj"),
    "attn.c_proj": ("attn.c_proj",), "c_fc": ("mlp.c_fc",), "mlp.c_fc": ("mlp.c_fc",), "mlp.c_proj": ("mlp.c_proj",),
}
"""What each --lora-targets name adapts in every block: the attention's fused q, k, v (c_attn), its output
projection (attn.c_proj), the MLP's two layers (c_fc, mlp.c_proj); c_proj names both projections."""
DEFAULT_LORA_TARGETS = "c_attn,c_proj,c_fc"
LORA_BASE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def parse_lora_targets(value: object, option: str = "--lora-targets") -> str:
    """'c_attn, c_proj' -> 'c_attn,c_proj': names of the blocks' Linear layers (LORA_LAYERS), each once."""
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    problem = lora_targets_problem(names, option)
    if problem:
        raise ConfigError(problem)
    return ",".join(dict.fromkeys(names))


def lora_targets_problem(names: list[str], option: str = "--lora-targets") -> str | None:
    if not names:
        return f"{option} must name at least one layer, e.g. {DEFAULT_LORA_TARGETS}"
    unknown = [n for n in names if n not in LORA_LAYERS]
    if unknown:
        return (
            f"{option}: {', '.join(unknown)} is not a Linear layer of the blocks: choose from c_attn (attention's "
            "q, k, v), c_proj (both output projections), attn.c_proj, c_fc (the MLP's first layer), mlp.c_proj"
        )
    return None


# The --help sections of `gpt2es train`.
DATA, MODEL, FINETUNE, BUDGET, OPTIM, DEVICE, WATCH = (
    "Data and run", "Model", "Fine-tuning", "Budget", "Optimizer", "Device and precision",
    "Evaluation, logs, checkpoints",
)
_BIG = 10**12


@dataclass(frozen=True)
class TrainConfig:
    """Everything `gpt2es train` needs. Each field is one setting: the CLI option, its --help,
    the --config file key and the check all come from its declaration (see settings.py)."""

    data: str = setting("data/demo", short="-d", panel=DATA)
    """Prepared dataset directory (from `gpt2es prepare`), or a directory of its shards (from `prepare --shard`),
    trained on as one dataset."""
    out: str | None = setting(None, short="-o", panel=DATA, default_text="runs/<dataset name>")
    """Run directory for checkpoints and metrics."""
    seq_len: int | None = setting(None, ge=1, le=1 << 20, panel=DATA, default_text="the model's context")
    """Tokens per training window."""
    batch_size: int | str = setting(8, ge=1, le=1 << 16, auto=True, short="-b", panel=DATA)
    """Windows per forward pass in each process (micro-batch), or auto: the largest that fits in memory
    (the global batch is kept by accumulating gradients)."""
    global_batch: int | None = setting(None, ge=1, le=1 << 24, panel=DATA, default_text="--batch-size x processes")
    """Windows per optimizer step over all processes; gradient accumulation makes up the difference."""
    seed: int = setting(1337, ge=0, le=2**63 - 1, panel=DATA)
    """Seed of the initial weights, the data order and dropout."""
    preset: str = setting("auto", choices=("auto", *PRESETS), short="-p", panel=MODEL)
    """Model preset, or auto: with --max-time the size that trains best in that time on the device used (timed
    in the first seconds), else small. Ignored with --init-from."""
    n_layer: int | None = setting(None, ge=1, le=1024, panel=MODEL)
    """Override the preset's number of blocks."""
    n_head: int | None = setting(None, ge=1, le=1024, panel=MODEL)
    """Override the preset's attention heads."""
    n_embd: int | None = setting(None, ge=1, le=1 << 16, panel=MODEL)
    """Override the preset's width."""
    n_positions: int | None = setting(None, ge=1, le=1 << 20, panel=MODEL)
    """Override the preset's context length."""
    dropout: float | None = setting(None, ge=0, lt=1, panel=MODEL)
    """Override the preset's dropout (also allowed with --init-from)."""
    position: str | None = setting(None, choices=POSITIONS, panel=MODEL, default_text="learned")
    """Position encoding: learned (GPT-2), sinusoidal (fixed, not trained) or rope (rotary); sinusoidal and
    rope evaluate and sample past the trained context."""
    rope_theta: float | None = setting(None, gt=1, le=1e9, panel=MODEL, default_text="10000")
    """RoPE's base, with --position rope."""
    untied_head: bool = setting(False, panel=MODEL)
    """A separate output projection instead of sharing the token embedding (exported with
    tie_word_embeddings false); it adds vocabulary x width parameters."""
    init_from: str | None = setting(None, panel=FINETUNE)
    """Start from a checkpoint, run directory, Hugging Face GPT-2 directory or Hub model id (fine-tuning)."""
    revision: str | None = setting(None, panel=FINETUNE, metavar="REV", default_text="main")
    """Branch, tag or commit of a Hub model id given to --init-from."""
    lora_rank: int | None = setting(None, ge=1, le=4096, panel=FINETUNE, metavar="R", default_text="none: every weight trains")
    """Fine-tune the --init-from model with LoRA adapters of this rank (8 to 64 is usual): its weights stay frozen
    and only two small matrices per adapted layer train, so a model several times larger fits in memory. The
    run's checkpoints hold the adapters alone and name their base (it must stay where it is: a changed base is
    refused); sample, eval, inspect, serve and export open them merged onto it. Needs pip install 'gpt2es[lora]'."""
    lora_alpha: float | None = setting(None, gt=0, le=1e6, panel=FINETUNE, default_text="2 x --lora-rank")
    """LoRA's scale: each adapted weight becomes W + (alpha / rank) B A."""
    lora_dropout: float = setting(0.05, ge=0, lt=1, panel=FINETUNE)
    """Dropout on the adapters' input while training."""
    lora_targets: str = setting(DEFAULT_LORA_TARGETS, parse=parse_lora_targets, panel=FINETUNE, metavar="LAYERS")
    """The Linear layers adapted in every block, comma-separated: c_attn (attention's q, k, v), c_proj (both
    output projections; attn.c_proj or mlp.c_proj for one), c_fc (the MLP's first layer)."""
    lora_base_dtype: str = setting("auto", choices=LORA_BASE_DTYPES, panel=FINETUNE)
    """The dtype the frozen weight matrices are held in: auto is the run's compute dtype (bfloat16 or float16 with
    --amp or --dtype, else float32); half precision halves their memory (the adapters stay float32)."""
    max_steps: int | None = setting(None, ge=1, le=_BIG, panel=BUDGET)
    """Stop after this many optimizer steps."""
    max_tokens: int | None = setting(None, ge=1, le=10**18, panel=BUDGET)
    """Stop after this many training tokens."""
    epochs: float | None = setting(None, gt=0, le=1e6, panel=BUDGET, default_text="1 when no other step budget is set")
    """Stop after this many passes over train.bin."""
    max_time: float | None = setting(
        None, gt=0, le=366 * 86400, parse=parse_duration, metavar="DURATION", panel=BUDGET
    )
    """Train for this long, e.g. 90s, 30m, 2h: the steps (and the schedule, annealed at the end) are fitted to it
    from the measured speed, evaluations and final save included; the run's time, summed over resumes."""
    lr: float | None = setting(None, gt=0, le=10, panel=OPTIM, default_text="6e-4; with --preset auto, by width")
    """Peak learning rate (the AdamW groups'; see --muon-lr). By default GPT-2's 6e-4, or, when --preset auto
    sizes the model, 6e-4 x 768 / width (at most 4e-3)."""
    min_lr: float | None = setting(None, ge=0, le=10, panel=OPTIM, default_text="lr / 10")
    """Learning-rate floor at the end of the decay."""
    schedule: str = setting("cosine", choices=SCHEDULES, panel=OPTIM)
    """Learning-rate schedule after a linear warmup, reaching --min-lr at the planned last step (wsd:
    warmup-stable-decay; onecycle: torch's OneCycleLR, a cosine up from lr/25 over the warmup, then
    a cosine down)."""
    warmup_steps: int | None = setting(
        None, ge=0, le=_BIG, panel=OPTIM, default_text="5% of the planned steps, at most 1000; onecycle: 30%"
    )
    """Warmup steps (linear; onecycle's rising phase)."""
    decay_fraction: float = setting(0.2, gt=0, le=1, panel=OPTIM)
    """wsd: the final fraction of the planned steps that decays to --min-lr."""
    weight_decay: float = setting(0.1, ge=0, le=10, panel=OPTIM)
    """AdamW weight decay, on matrices (weights, embeddings) only."""
    beta1: float = setting(0.9, ge=0, lt=1, panel=OPTIM)
    """AdamW's first-moment decay."""
    beta2: float = setting(0.95, ge=0, lt=1, panel=OPTIM)
    """AdamW's second-moment decay."""
    optimizer: str = setting("muon", choices=OPTIMIZERS, panel=OPTIM)
    """muon: Muon for the blocks' weight matrices and AdamW for embeddings, the tied head, norms and biases
    (benchmarks/bench_quality.py compares the two at a fixed time); or adamw for every parameter. With
    --lora-rank the adapters always train with AdamW (Muon is made for full weight matrices, not their
    low-rank factors)."""
    muon_lr: float = setting(3e-3, gt=0, le=10, panel=OPTIM)
    """Peak learning rate of the Muon group (--optimizer muon), on AdamW's scale (each matrix's update is sized
    like AdamW's); it follows the same schedule as --lr."""
    grad_clip: float | str = setting(1.0, ge=0, le=1e6, auto=True, panel=OPTIM)
    """Clip the global gradient norm at this value (0 disables), or auto: at twice the moving average
    of the recent norms (adaptive; each report says how often it fired)."""
    nan_retries: int = setting(3, ge=0, le=1000, panel=OPTIM)
    """Rollbacks to the last good state allowed after a non-finite loss before stopping."""
    device: str = setting("auto", panel=DEVICE)
    """auto, cpu, cuda, cuda:N or mps."""
    amp: bool = setting(False, panel=DEVICE)
    """Mixed precision: bf16 where supported (CPUs with native bf16, Ampere+ GPUs), else fp16 with loss scaling."""
    dtype: str | None = setting(None, panel=DEVICE)
    """Force the compute dtype: float32, bfloat16 or float16 (fp32, bf16, fp16)."""
    compile: bool = setting(False, panel=DEVICE)
    """torch.compile the model (slower to start, faster steps)."""
    activation_checkpointing: bool = setting(False, panel=DEVICE)
    """Recompute each block's activations in the backward pass: far less memory, about a third more compute."""
    parallel: str = setting("ddp", choices=PARALLEL_CHOICES, panel=DEVICE)
    """How the processes torchrun starts share the model: ddp (a whole replica in each), fsdp (FSDP2: weights,
    gradients and optimizer state sharded across them, checkpoints saved sharded) or auto (fsdp when a replica
    would not fit on the GPU). In one process fsdp runs as a group of one: nothing is sharded, but --cpu-offload
    and its sharded checkpoints apply."""
    cpu_offload: bool = setting(False, panel=DEVICE)
    """With --parallel fsdp: keep the sharded weights, gradients and optimizer state in CPU memory (the optimizer
    steps there): slower, for models whose training state does not fit on the GPUs."""
    peak_tflops: float | None = setting(None, gt=0, le=1e6, panel=DEVICE, default_text="known GPUs only")
    """Peak TFLOP/s of one device, for MFU."""
    log_interval: int = setting(10, ge=1, le=_BIG, panel=WATCH)
    """Report training progress every N steps."""
    eval_interval: int | None = setting(None, ge=0, le=_BIG, panel=WATCH, default_text="20 spread over the plan")
    """Validation loss and a sample every N steps and at the end; 0 disables. Unset: 20 evaluations spread
    evenly over the planned steps; with --max-time, 10 to 20 as about a tenth of the time allows (fewer, with a
    warning, when 10 would take half of it)."""
    eval_batches: int | None = setting(
        None, ge=1, le=1 << 20, panel=WATCH, default_text="20; with --max-time as many as 10 evaluations afford"
    )
    """Validation batches per evaluation, the same windows every time."""
    sample_prompt: str = setting("Había una vez", panel=WATCH)
    """Prompt of the sample shown at each evaluation."""
    sample_tokens: int = setting(40, ge=0, le=1 << 16, panel=WATCH)
    """New tokens in that sample; 0 disables it."""
    save_interval: int | None = setting(None, ge=0, le=_BIG, panel=WATCH, default_text="every 10 minutes")
    """Write last.pth every N steps (and always at the end); 0: only at the end."""
    keep_last: int = setting(0, ge=0, le=1 << 20, panel=WATCH)
    """Also keep the newest N numbered checkpoints step-NNNNNNN.pth; 0: none."""
    push_to_hub: str | None = setting(None, panel=WATCH, metavar="OWNER/NAME")
    """At the end, export the best checkpoint (RUN/hf) and upload it to this Hub model repo, created if
    needed (a token with write access is checked before training starts)."""
    push_every_save: bool = setting(False, panel=WATCH)
    """With --push-to-hub: upload at every save of last.pth too, not only at the end."""
    plot_scale: str = setting("linear", choices=("linear", "log"), panel=WATCH)
    """Axes of loss.png: linear, or log (tokens and loss both; loss curves are near-straight lines there)."""
    log_to: str = setting("", parse=parse_loggers, panel=WATCH,
                          default_text="metrics.jsonl and loss.png only")
    """More loggers beside metrics.jsonl and loss.png, comma-separated: tensorboard (event files in
    RUN/tensorboard; pip install 'gpt2es[tensorboard]'), wandb (Weights & Biases; WANDB_MODE=offline logs
    to RUN/wandb; pip install 'gpt2es[wandb]'), csv (RUN/metrics.csv)."""
    wandb_project: str | None = setting(None, panel=WATCH, default_text="gpt2es")
    """With --log-to wandb: the W&B project."""
    wandb_name: str | None = setting(None, panel=WATCH, default_text="the run directory's name")
    """With --log-to wandb: the W&B run's display name."""

    def problems(self, world_size: int = 1) -> list[str]:
        """Every problem with these settings, in words a user can act on (fields, then cross-field rules)."""
        found = field_problems(self)
        if (
            isinstance(self.min_lr, float)
            and isinstance(self.lr, float)
            and math.isfinite(self.min_lr)
            and self.min_lr > self.lr
        ):
            found.append(f"--min-lr ({self.min_lr:g}) must not exceed --lr ({self.lr:g})")
        if self.revision is not None and not self.init_from:
            found.append("--revision is for a Hub model id given to --init-from: add --init-from owner/name or drop it")
        if self.lora_rank is not None and not self.init_from:
            found.append(
                "--lora-rank fine-tunes an existing model: add --init-from (a checkpoint, run directory, Hugging Face "
                "directory or Hub id), or drop --lora-rank to train every weight"
            )
        if self.lora_rank is None:
            unused = [o for o, v in (("--lora-alpha", self.lora_alpha is not None),
                                     ("--lora-base-dtype", self.lora_base_dtype != "auto")) if v]
            if unused:
                found.append(f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} for LoRA: add --lora-rank R or drop {'it' if len(unused) == 1 else 'them'}")
        if isinstance(self.lora_targets, str):
            problem = lora_targets_problem([n.strip() for n in self.lora_targets.split(",") if n.strip()])
            if problem:
                found.append(problem)
        if self.cpu_offload and self.parallel == "ddp":
            found.append("--cpu-offload offloads the shards of --parallel fsdp: add --parallel fsdp, or drop it")
        if self.parallel == "fsdp" and self.lora_rank is not None:
            found.append("--lora-rank trains small adapters on a frozen model, which --parallel fsdp does not shard: "
                         "use --parallel ddp")
        per_pass = self.batch_size * world_size if isinstance(self.batch_size, int) and self.batch_size > 0 else None
        if isinstance(self.global_batch, int) and self.global_batch > 0 and per_pass and self.global_batch % per_pass:
            fit = max(per_pass, self.global_batch // per_pass * per_pass)
            procs = f" x {world_size} processes = {per_pass}" if world_size > 1 else ""
            found.append(
                f"--global-batch ({self.global_batch}) must be a multiple of --batch-size ({self.batch_size}){procs}, "
                f"e.g. {fit} or {fit + per_pass}"
            )
        return found

    def validate(self, world_size: int = 1) -> TrainConfig:
        """Raise ConfigError listing every problem at once; return self when valid."""
        found = self.problems(world_size)
        if found:
            raise ConfigError("invalid training settings: " + "; ".join(found))
        return self

    @property
    def peak_lr(self) -> float:
        """--lr, or its default when not given (plan_run resolves --preset auto's first)."""
        return self.lr if self.lr is not None else DEFAULT_LR

    @property
    def lora_scale(self) -> float:
        """--lora-alpha, or its default: twice --lora-rank."""
        if self.lora_alpha is not None:
            return self.lora_alpha
        return 2.0 * (self.lora_rank or 0)

    @property
    def floor_lr(self) -> float:
        """--min-lr, or its default: the peak rate / 10."""
        return self.min_lr if self.min_lr is not None else self.peak_lr / 10

    def model_overrides(self) -> dict[str, Any]:
        """The model fields this config sets (None ones left out; --untied-head as tie_word_embeddings)."""
        found = {k: getattr(self, k) for k in MODEL_OVERRIDES if getattr(self, k) is not None}
        if self.untied_head:
            found["tie_word_embeddings"] = False
        return found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Defaults plus `data`, whose keys must be field names; unknown keys are an error listing the valid ones."""
        return build(cls, data, source)

    def updated(self, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """A copy with the fields in `data` replaced, validated."""
        return build(type(self), data, source, base=self)


# --- prepare ------------------------------------------------------------------------------------

DEMO_MAX_BYTES = 4_000_000
"""Default size of the demo corpus in UTF-8 bytes (about 3,000 tales: minutes of CPU training)."""

DEFAULT_VOCAB_SIZE = 8192
"""A trained tokenizer's vocabulary unless --vocab-size is given. Small: the small models that laptop and
consumer-GPU budgets train best spend most of their compute in the vocabulary x width output head
(benchmarks/bench_quality.py compares vocabularies at a fixed time budget)."""


def parse_weighted(value: str) -> tuple[str, float | None]:
    """'wikipedia:0.6' -> ('wikipedia', 0.6); 'books/' -> ('books/', None). A suffix after the
    last ':' is a weight only if it is a number (so C:\\corpus and owner/name stay names)."""
    name, sep, tail = value.rpartition(":")
    if not sep or not name:
        return value, None
    try:
        weight = float(tail)
    except ValueError:
        return value, None
    if not math.isfinite(weight) or weight <= 0:
        raise ConfigError(f"--dataset {value}: the weight must be a finite number > 0 (got {tail})")
    return name, weight


MAX_SHARDS = 9999
"""The most parts --shard splits a corpus into (shard directories are named with 4 digits)."""


def parse_shard(value: str | int, option: str = "--shard") -> str:
    """'3/8' -> '3/8' (checked: the part I of N, 0 <= I < N <= 9999), for --shard I/N."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
    if not m:
        raise ConfigError(f"{option} {value!r} is not I/N: write e.g. 3/8 (the part 3 of 8, counted from 0)")
    index, count = int(m.group(1)), int(m.group(2))
    if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
        raise ConfigError(
            f"{option} {text}: I counts from 0 to N-1 and N from 1 to {MAX_SHARDS} "
            f"(e.g. --shard $SLURM_ARRAY_TASK_ID/8 with --array=0-7)"
        )
    return f"{index}/{count}"


TXT_MODES = ("blank", "line", "file")
FORMATS = ("text", "instructions")
SOURCE, TOKENIZER, HYGIENE, OUTPUT = "Source", "Tokenizer", "Cleaning and split", "Output"


@dataclass(frozen=True)
class PrepareConfig(Settings):
    """Everything `gpt2es prepare` needs: where the text comes from, how it is cleaned, split and tokenized.

    Like TrainConfig, each field is one setting (option, --help, check)."""

    WHAT = "prepare settings"

    dataset: tuple[str, ...] = setting(("demo",), short="-d", panel=SOURCE, metavar="SRC[:WEIGHT]")
    """demo, wikipedia, oscar, a Hub dataset owner/name, or a local file, glob or directory (see above).
    Repeat it to mix sources in proportions of bytes, e.g. -d wikipedia:0.7 -d libros/:0.3."""
    out: Path | None = setting(None, short="-o", panel=OUTPUT, default_text="data/<dataset name>")
    """Output directory."""
    subset: str | None = setting(None, aliases=("--config",), panel=SOURCE)
    """Hub dataset configuration (subset), e.g. 20231101.es for wikipedia."""
    split: str | None = setting(None, panel=SOURCE, default_text="train")
    """Split to read from a Hub or save_to_disk dataset."""
    text_column: str | None = setting(None, panel=SOURCE, default_text="'text', else 'content'")
    """Column or field that holds the text."""
    txt_mode: str = setting("blank", choices=TXT_MODES, panel=SOURCE)
    """How .txt files split into documents: 'blank' (a blank line ends a document), 'line' (one per line)
    or 'file' (one per file; best for books)."""
    format: str = setting("text", choices=FORMATS, panel=SOURCE)
    """text: documents to continue; instructions: examples to fine-tune on, from .jsonl or .json files (one
    {"instruction", "input", "output"} or {"messages": [{"role", "content"}, ...]} object each) or demo (questions
    about the demo tales); only the answers are learned (a loss mask) and the tokenizer gets a chat template."""
    context: int = setting(1024, ge=2, le=1 << 20, panel=SOURCE)
    """--format instructions: the context of the model to fine-tune, in tokens; longer examples are dropped
    (counted in the summary)."""
    strict: bool = setting(False, panel=SOURCE)
    """--format instructions: stop at the first bad example (not an object, a missing field, an empty answer,
    too long) with an error naming its line, instead of counting and skipping it."""
    max_docs: int | None = setting(None, ge=1, le=10**15, panel=SOURCE)
    """Take at most this many documents."""
    max_bytes: int | None = setting(
        None, ge=1, le=10**15, parse=parse_size, metavar="SIZE", panel=SOURCE, default_text=f"demo: {DEMO_MAX_BYTES // 10**6}MB, else all"
    )
    """Take at most this much text, e.g. 500MB."""
    tokenizer: str = setting("train", panel=TOKENIZER)
    """'train' a byte-level BPE on the train split, 'gpt2' (Hub cache), a tokenizer.json / a directory with
    tokenizer.json or vocab.json + merges.txt, or a checkpoint or dataset whose tokenizer to reuse (e.g. to
    fine-tune that checkpoint with --init-from)."""
    vocab_size: int = setting(DEFAULT_VOCAB_SIZE, ge=257, le=2**32, panel=TOKENIZER)
    """Vocabulary size of a trained tokenizer (at least 257: 256 bytes + <|endoftext|>)."""
    tokenizer_revision: str | None = setting(None, panel=TOKENIZER, metavar="REV", default_text="main")
    """Branch, tag or commit of a Hub model id given to --tokenizer."""
    tokenizer_sample_bytes: int = setting(
        100_000_000, ge=1, le=10**15, parse=parse_size, metavar="SIZE", panel=TOKENIZER, default_text="100MB"
    )
    """Train the tokenizer on at most this much of the train split, e.g. 100MB."""
    gpt2_tokenizer: Path | None = setting(None, panel=TOKENIZER, default_text="the Hugging Face cache")
    """GPT-2's tokenizer (a directory or tokenizer.json) to compare fertility with."""
    min_chars: int = setting(1, ge=0, le=10**9, panel=HYGIENE)
    """Drop documents shorter than this after cleaning."""
    dedup: bool = setting(True, panel=HYGIENE)
    """Drop exact duplicate documents."""
    val_fraction: float = setting(0.01, gt=0, lt=1, panel=HYGIENE)
    """Share of documents for validation, between 0 and 1; at least one document."""
    seed: int = setting(0, ge=0, le=2**63 - 1, panel=HYGIENE)
    """Seed for the train/validation split (and the demo tales)."""
    num_proc: int | None = setting(None, ge=1, le=1024, panel=OUTPUT, default_text="1 for small inputs, else one per CPU")
    """Tokenizer worker processes."""
    force: bool = setting(False, panel=OUTPUT)
    """Replace an existing dataset at --out."""
    shard: str | None = setting(None, parse=parse_shard, metavar="I/N", panel=OUTPUT, default_text="the whole corpus")
    """Prepare only part I of N (I counted from 0, as Slurm's $SLURM_ARRAY_TASK_ID with --array=0-7), into
    --out/shard-000I-of-000N: the documents whose text's fingerprint modulo N is I. Run it once for each I (on
    as many machines), with a fixed --tokenizer; `gpt2es train -d OUT` trains on the N parts as one dataset."""

    def __post_init__(self) -> None:
        if isinstance(self.dataset, str):  # PrepareConfig(dataset="books/"): one source
            object.__setattr__(self, "dataset", (self.dataset,))
        elif isinstance(self.dataset, list):  # PrepareConfig(dataset=["a/", "b/"]) from Python
            object.__setattr__(self, "dataset", tuple(self.dataset))

    def problems(self) -> list[str]:
        """Every problem with these settings (fields, then the rules of --shard)."""
        found = field_problems(self)
        if isinstance(self.shard, str):
            try:
                parse_shard(self.shard)
            except ConfigError as e:
                found.append(str(e))
            if self.tokenizer == "train":
                found.append(
                    "--shard needs a fixed --tokenizer, the same for every shard: train one once on a sample "
                    "(gpt2es prepare -d SRC --max-bytes 100MB -o data/tok), then pass --tokenizer data/tok"
                )
            if self.format != "text":
                found.append("--shard prepares text datasets: prepare --format instructions in one run, without it")
        return found

    @property
    def shard_parts(self) -> tuple[int, int] | None:
        """--shard as (index, count), or None for the whole corpus."""
        if self.shard is None:
            return None
        index, count = parse_shard(self.shard).split("/")
        return int(index), int(count)

    @property
    def output_dir(self) -> Path:
        """--out, or data/<a name derived from the dataset> (names joined by '-' for a mixture; '-instructions'
        added for --format instructions)."""
        if self.out is not None:
            return Path(self.out)
        stems = []
        for value in self.dataset:
            name = parse_weighted(value)[0]  # without its weight
            base = re.split(r"[*?\[]", name)[0].rstrip("/")  # a glob: the folder it searches
            stems.append(re.sub(r"[^\w-]+", "-", Path(base).name.split(".")[0]) or "dataset")
        return Path("data") / ("-".join(stems) + ("-instructions" if self.format == "instructions" else ""))

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# --- sampling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationConfig(Settings):
    """How `gpt2es sample` (and the sample shown while training) picks each next token.

    Like TrainConfig, each field is one setting (option, --help, check)."""

    WHAT = "generation settings"
    ERROR = GenerationError

    max_new_tokens: int = setting(200, ge=1, le=1 << 20)
    """New tokens per sample at most."""
    temperature: float = setting(0.8, ge=0, le=100)
    """Softmax temperature; 0 is greedy (always the most likely token)."""
    top_k: int | None = setting(50, ge=0, le=1 << 24)
    """Sample among the k most likely tokens; 0 disables."""
    top_p: float | None = setting(0.95, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens with probability >= p; 1 disables."""
    repetition_penalty: float = setting(1.0, gt=0, le=100)
    """>1 makes tokens already in the text less likely (CTRL-style); 1 disables."""
    stop_at_eos: bool = setting(True, flag="--stop-at-eos/--ignore-eos")
    """End a sample at <|endoftext|> (--ignore-eos: keep going)."""
    seed: int | None = setting(None, ge=0, le=2**63 - 1, default_text="a fresh random seed")
    """Seed for reproducible samples."""
    num_samples: int = setting(1, ge=1, le=4096, short="-n")
    """Samples, generated as one batch."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# --- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig(Settings):
    """How `gpt2es eval` scores text. Like TrainConfig, each field is one setting."""

    WHAT = "evaluation settings"

    split: str = setting("val", choices=("val", "train"))
    """Which split of the dataset: val or train."""
    stride: int | None = setting(None, ge=1, le=1 << 20, default_text="half the context")
    """Sliding-window step in tokens (at most the context: every token is scored once)."""
    batch_size: int = setting(8, ge=1, le=1 << 16)
    """Windows per forward pass."""
    max_tokens: int | None = setting(None, ge=2, le=10**15)
    """Score at most this many tokens."""
    context: int | None = setting(None, ge=2, le=1 << 20, default_text="the model's context")
    """Tokens per scored window; beyond the trained context only for sinusoidal and rope positions."""
    amp: bool = setting(False)
    """Score faster in the fast dtype: short for --dtype auto (bfloat16 on CUDA and on CPUs with native bf16)."""


# --- inspection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InspectConfig(Settings):
    """What `gpt2es inspect` shows beside a summary. Like TrainConfig, each field is one setting."""

    WHAT = "inspect settings"

    text: str = setting("Había una vez una niña que soñaba con el mar.")
    """Text for --tokenizer."""
    seed: int = setting(0, ge=0, le=2**63 - 1)
    """Seed for the random window shown from a dataset."""


# --- inference ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceConfig(Settings):
    """How `sample`, `eval`, `export` and `inspect` load a model: where it runs, in which precision,
    from which revision. Like TrainConfig, each field is one setting; each command offers those
    that apply to it (inference.py resolves them)."""

    WHAT = "inference settings"

    device: str = setting("auto")
    """auto, cpu, cuda, cuda:N or mps."""
    dtype: str | None = setting(None, default_text="auto; float32 for eval (exact scores) and export")
    """Precision of the weights (and activations): auto, float32, bfloat16 or float16 (bf16, fp16, fp32 too).
    auto is bfloat16 on CUDA and on CPUs with native bf16, float32 elsewhere; for export, the checkpoint's own."""
    quantize: str = setting("none")
    """none, or int8: int8 weights (per channel, bfloat16 activations), about 4x less to read per token."""
    compile: bool = setting(False)
    """torch.compile the one-token step (fixed shapes: compiled once, then no recompiles; CUDA graphs on a GPU).
    Seconds to a minute to start; the same text."""
    revision: str | None = setting(None, metavar="REV", default_text="main")
    """Branch, tag or commit of a Hub model id given as CHECKPOINT."""


# --- serving ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig(Settings):
    """How `gpt2es serve` serves a model over HTTP: where it listens, how many requests it decodes
    together and how many wait, who may call it. Like TrainConfig, each field is one setting."""

    WHAT = "serve settings"

    host: str = setting("127.0.0.1")
    """Address to listen on: 127.0.0.1 serves this computer only; 0.0.0.0 every network it is on (set --api-key then)."""
    port: int = setting(8000, ge=0, le=65535)
    """Port to listen on (0: any free port, printed at start)."""
    max_batch: int = setting(8, ge=1, le=1024)
    """Requests decoded together, one token each per step (each holds a KV cache of the model's context)."""
    max_queue: int = setting(64, ge=0, le=1 << 20)
    """Requests that may wait for a free place in the batch; past that the API answers 429 (retry later)."""
    api_key: str | None = setting(None, metavar="KEY", default_text="$GPT2ES_API_KEY, else none")
    """Require this key (Authorization: Bearer KEY) on /v1/*, /tokenize and /detokenize. Prefer the
    GPT2ES_API_KEY environment variable: a command line is visible to other users of the computer."""
    cors_origin: tuple[str, ...] | None = setting(None, metavar="ORIGIN", default_text="none")
    """Let web pages from this origin (e.g. http://localhost:3000, or * for any) call the API from a browser.
    Repeat it for several."""
    model_name: str | None = setting(None, default_text="the run directory's name, or the Hub model id")
    """The model's name in the API (the `model` field of requests and /v1/models)."""
