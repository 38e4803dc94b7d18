"""Configuration: ModelConfig (architecture) with named presets, TrainConfig (training), validation."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from gpt2es_cli.errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_new")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only GPT-2."""

    vocab_size: int = 50257
    """Number of token ids the embedding and output projection cover."""
    n_positions: int = 1024
    """Context length: the most tokens the model attends over (learned positions)."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 768
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 disables)."""
    activation: str = "gelu_new"
    """Feed-forward activation: 'gelu' (exact) or 'gelu_new' (tanh approximation, OpenAI GPT-2)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    def problems(self) -> list[str]:
        """Every problem with this config, in words a user can act on (empty when valid)."""
        found = []
        for name in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                found.append(f"{name} must be a positive integer (got {value!r})")
        if (
            isinstance(self.n_embd, int)
            and isinstance(self.n_head, int)
            and self.n_head > 0
            and self.n_embd > 0
            and self.n_embd % self.n_head
        ):
            found.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            found.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if self.activation not in ACTIVATIONS:
            found.append(f"activation must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            found.append(f"layer_norm_eps must be positive (got {self.layer_norm_eps!r})")
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
        """A named preset (see PRESETS), with fields overridden one by one."""
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

SCHEDULES = ("cosine", "linear", "constant", "wsd")
MODEL_OVERRIDES = ("n_layer", "n_head", "n_embd", "n_positions", "dropout")
"""TrainConfig fields that override the preset's ModelConfig."""

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number (seconds) or a string like '90s', '30m', '1.5h', '2d', '1h30m'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    if not text or not re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", text):
        raise ConfigError(f"invalid duration {value!r}: use seconds or e.g. 90s, 30m, 1.5h, 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION.findall(text))


@dataclass(frozen=True)
class TrainConfig:
    """Everything `gpt2es train` needs; the CLI flags and a --config file set these fields."""

    data: str = "data/demo"
    """Prepared dataset directory (from `gpt2es prepare`)."""
    out: str | None = None
    """Run directory; default runs/<name of the data directory>."""
    preset: str = "small"
    """Model preset (see PRESETS); ignored with init_from."""
    n_layer: int | None = None
    """Override the preset's number of blocks."""
    n_head: int | None = None
    """Override the preset's attention heads."""
    n_embd: int | None = None
    """Override the preset's width."""
    n_positions: int | None = None
    """Override the preset's context length."""
    dropout: float | None = None
    """Override the preset's dropout (also allowed with init_from)."""
    init_from: str | None = None
    """Start from this checkpoint, run directory or Hugging Face GPT-2 directory."""
    seq_len: int | None = None
    """Tokens per training window; default the model's context."""
    batch_size: int = 8
    """Windows per forward pass, per process (micro-batch)."""
    global_batch: int | None = None
    """Windows per optimizer step over all processes (gradient accumulation fills the gap);
    default batch_size x processes."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    max_tokens: int | None = None
    """Stop after this many training tokens."""
    epochs: float | None = None
    """Stop after this many passes over train.bin (default 1 when no other step budget is set)."""
    max_time: float | None = None
    """Stop after this many seconds of training in this invocation (the schedule still follows
    the step budget)."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr: float | None = None
    """Learning-rate floor at the end of the decay; default lr / 10."""
    schedule: str = "cosine"
    """cosine, linear, constant or wsd (warmup-stable-decay); all after a linear warmup."""
    warmup_steps: int | None = None
    """Linear warmup steps; default 5% of the steps (at most 1000)."""
    decay_fraction: float = 0.2
    """wsd: the last fraction of the steps that decays to min_lr."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices (weights, embeddings) only."""
    beta1: float = 0.9
    """AdamW's first-moment decay."""
    beta2: float = 0.95
    """AdamW's second-moment decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 disables)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    amp: bool = False
    """Mixed precision: bf16 where supported, else fp16 with loss scaling."""
    dtype: str | None = None
    """Force the autocast dtype: float32, bfloat16 or float16."""
    compile: bool = False
    """torch.compile the model."""
    seed: int = 1337
    """Seed for the initial weights, the data order and dropout."""
    log_interval: int = 10
    """Report training progress every this many steps."""
    eval_interval: int = 200
    """Validation loss and a sample every this many steps, and at the end (0 disables)."""
    eval_batches: int = 20
    """Fixed validation batches per evaluation."""
    sample_prompt: str = "Había una vez"
    """Prompt of the sample shown at each evaluation."""
    sample_tokens: int = 40
    """New tokens in that sample (0 disables it)."""
    save_interval: int = 500
    """Write last.pth every this many steps (and always at the end)."""
    keep_last: int = 0
    """Also keep the newest N numbered checkpoints step-NNNNNNN.pth (0: none)."""
    nan_retries: int = 3
    """How many times a non-finite loss may roll back to the last good state before stopping."""
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device for MFU; default a table of known GPUs."""

    def problems(self) -> list[str]:
        """Every problem with these settings, in words a user can act on."""
        found = []
        if isinstance(self.preset, str) and self.preset not in PRESETS:
            found.append(f"preset must be one of {', '.join(PRESETS)} (got {self.preset!r})")
        positive_ints = ("batch_size", "log_interval", "eval_batches")
        optional_positive_ints = (
            "n_layer", "n_head", "n_embd", "n_positions", "seq_len", "global_batch", "max_steps", "max_tokens",
        )
        non_negative_ints = ("eval_interval", "save_interval", "keep_last", "nan_retries", "sample_tokens")
        for name in positive_ints + optional_positive_ints + non_negative_ints:
            value = getattr(self, name)
            if value is None and name in optional_positive_ints:
                continue
            low = 0 if name in non_negative_ints else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                found.append(f"{name} must be {kind} integer (got {value!r})")
        if self.warmup_steps is not None and (
            not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0
        ):
            found.append(f"warmup_steps must be a non-negative integer (got {self.warmup_steps!r})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            found.append(f"seed must be a non-negative integer (got {self.seed!r})")
        for name in ("epochs", "max_time", "peak_tflops"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                found.append(f"{name} must be positive (got {value!r})")
        if not _is_number(self.lr) or self.lr <= 0:
            found.append(f"lr must be positive (got {self.lr!r})")
        if self.min_lr is not None and (not _is_number(self.min_lr) or self.min_lr < 0):
            found.append(f"min_lr must be >= 0 (got {self.min_lr!r})")
        elif self.min_lr is not None and _is_number(self.lr) and self.min_lr > self.lr:
            found.append(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.schedule not in SCHEDULES:
            found.append(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if not _is_number(self.decay_fraction) or not 0 < self.decay_fraction <= 1:
            found.append(f"decay_fraction must be in (0, 1] (got {self.decay_fraction!r})")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            found.append(f"weight_decay must be >= 0 (got {self.weight_decay!r})")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                found.append(f"{name} must be in [0, 1) (got {value!r})")
        if not _is_number(self.grad_clip) or self.grad_clip < 0:
            found.append(f"grad_clip must be >= 0 (got {self.grad_clip!r}); 0 disables clipping")
        if self.dropout is not None and (not _is_number(self.dropout) or not 0 <= self.dropout < 1):
            found.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if (
            isinstance(self.global_batch, int)
            and isinstance(self.batch_size, int)
            and self.batch_size > 0
            and self.global_batch > 0
            and self.global_batch % self.batch_size
        ):
            low = max(self.batch_size, self.global_batch // self.batch_size * self.batch_size)
            found.append(
                f"global_batch ({self.global_batch}) must be a multiple of batch_size ({self.batch_size}), "
                f"e.g. {low} or {low + self.batch_size}"
            )
        for name in ("data", "sample_prompt", "device", "preset"):
            if not isinstance(getattr(self, name), str):
                found.append(f"{name} must be a string (got {getattr(self, name)!r})")
        for name in ("out", "init_from", "dtype"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                found.append(f"{name} must be a string (got {getattr(self, name)!r})")
        for name in ("amp", "compile"):
            if not isinstance(getattr(self, name), bool):
                found.append(f"{name} must be true or false (got {getattr(self, name)!r})")
        return found

    def validate(self) -> TrainConfig:
        """Raise ConfigError listing every problem at once; return self when valid."""
        found = self.problems()
        if found:
            raise ConfigError("invalid training config: " + "; ".join(found))
        return self

    def model_overrides(self) -> dict[str, Any]:
        """The model fields this config sets (None ones left out)."""
        return {k: getattr(self, k) for k in MODEL_OVERRIDES if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from defaults plus `data` (keys may use dashes); unknown keys are an error."""
        return cls().updated(data, source)

    def updated(self, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """A copy with the fields in `data` replaced (keys may use dashes), validated."""
        known = {f.name for f in fields(self)}
        clean = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown training setting(s) {', '.join(unknown)}; "
                "see `gpt2es train --help` for the names"
            )
        if clean.get("max_time") is not None:
            clean["max_time"] = parse_duration(clean["max_time"])
        for name in ("lr", "min_lr", "epochs", "dropout", "weight_decay", "grad_clip", "peak_tflops"):
            if isinstance(clean.get(name), int) and not isinstance(clean.get(name), bool):
                clean[name] = float(clean[name])
        return replace(self, **clean).validate()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Training settings from a TOML (.toml) or YAML (.yaml/.yml) file, as a flat dict.

    A `[train]` table (TOML) or `train:` mapping (YAML) is read if present, else the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the path")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({e})") from None
    if suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML ({e})") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"{path} is not valid YAML ({first})") from None
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings (key = value)")
    if isinstance(data.get("train"), dict) and len(data) == 1:
        data = data["train"]
    return data
