"""Hugging Face in both directions: to and from `GPT2LMHeadModel`, through one explicit weight map.

Our GPT2 and transformers' GPT-2 compute the same function; they differ only in names and in
layout: transformers' `Conv1D` stores a projection's weight as (in, out) where our `nn.Linear`
stores (out, in), so those four matrices per block are transposed on the way. The output
projection is tied to the token embedding on both sides (tie_word_embeddings), so
`lm_head.weight` is written only for a model trained with --untied-head, as its own matrix.

    export_hf(checkpoint, out_dir)  -> a directory AutoModelForCausalLM / AutoTokenizer load offline
    load_hf_checkpoint(directory)   -> a Checkpoint (artifacts.open_checkpoint calls it for
                                       directories holding config.json)

This module sits above checkpoint.py (it builds on its Checkpoint, clean_state_dict and
safe_torch_load); checkpoint.py never imports it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from gpt2es_cli import __version__
from gpt2es_cli.checkpoint import Checkpoint, clean_state_dict, safe_torch_load
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.device import dtype_name, parse_dtype
from gpt2es_cli.errors import CheckpointError, ConfigError, Gpt2esError, first_line
from gpt2es_cli.fileio import read_json_object, replace_dir, temp_dir_for
from gpt2es_cli.hf_neox import from_neox_state_dict, model_config_from_neox, neox_config_dict, to_neox_state_dict
from gpt2es_cli.model import GPT2, sinusoidal_table
from gpt2es_cli.tokenizer import EOS_TOKEN, Tokenizer

# --- the weight map -------------------------------------------------------------------------
# (our key, Hugging Face GPT2LMHeadModel key, transposed). "{i}" is the block index.
# Our lm_head.weight is the same tensor as wte.weight; transformers ties it the same way
# (GPT2LMHeadModel._tied_weights_keys), so it is not in the map.
TOP_LEVEL_MAP: tuple[tuple[str, str, bool], ...] = (
    ("wte.weight", "transformer.wte.weight", False),  # (vocab, C)
    ("wpe.weight", "transformer.wpe.weight", False),  # (n_positions, C)
    ("ln_f.weight", "transformer.ln_f.weight", False),
    ("ln_f.bias", "transformer.ln_f.bias", False),
)
BLOCK_MAP: tuple[tuple[str, str, bool], ...] = (
    ("h.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight", False),
    ("h.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias", False),
    ("h.{i}.attn.c_attn.weight", "transformer.h.{i}.attn.c_attn.weight", True),  # ours (3C, C), HF (C, 3C)
    ("h.{i}.attn.c_attn.bias", "transformer.h.{i}.attn.c_attn.bias", False),
    ("h.{i}.attn.c_proj.weight", "transformer.h.{i}.attn.c_proj.weight", True),  # (C, C)
    ("h.{i}.attn.c_proj.bias", "transformer.h.{i}.attn.c_proj.bias", False),
    ("h.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight", False),
    ("h.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias", False),
    ("h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_fc.weight", True),  # ours (4C, C), HF (C, 4C)
    ("h.{i}.mlp.c_fc.bias", "transformer.h.{i}.mlp.c_fc.bias", False),
    ("h.{i}.mlp.c_proj.weight", "transformer.h.{i}.mlp.c_proj.weight", True),  # ours (C, 4C), HF (4C, C)
    ("h.{i}.mlp.c_proj.bias", "transformer.h.{i}.mlp.c_proj.bias", False),
)
HF_PREFIX = "transformer."
TIED_KEY = "lm_head.weight"
# Buffers older transformers saved with every block (the causal mask): not weights, skipped.
_HF_BUFFER = re.compile(r"^h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")

# Our activation -> transformers' activation_function, and back.
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_new": "gelu_new"}
ACTIVATION_FROM_HF = {
    "gelu": "gelu",  # exact erf GELU
    "gelu_new": "gelu_new",  # tanh approximation (OpenAI GPT-2)
    "gelu_pytorch_tanh": "gelu_new",  # the same tanh approximation, computed by torch
    "gelu_fast": "gelu_new",  # the same tanh approximation, factored differently
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def key_map(n_layer: int) -> list[tuple[str, str, bool]]:
    """Every (our key, Hugging Face key, transposed) for a model with n_layer blocks."""
    rows = list(TOP_LEVEL_MAP)
    for i in range(n_layer):
        rows += [(ours.format(i=i), hf.format(i=i), t) for ours, hf, t in BLOCK_MAP]
    return rows


def to_hf_state_dict(
    state: dict[str, torch.Tensor], config: ModelConfig, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Our state_dict -> GPT2LMHeadModel's (without the tied lm_head), contiguous, in `dtype`.

    A sinusoidal model's fixed table becomes GPT-2's `wpe` (exactly the values it adds); rotary
    positions have no GPT-2 equivalent and are refused."""
    state = clean_state_dict(state)
    if config.position == "rope":
        raise CheckpointError(
            "a --position rope model cannot be written as GPT2LMHeadModel, whose positions are a learned "
            "table: export_hf writes it as GPTNeoXForCausalLM"
        )
    if config.position == "sinusoidal":
        table = sinusoidal_table(torch.arange(config.n_positions), config.n_embd)
        state = {**state, "wpe.weight": table}
    rows = key_map(config.n_layer)
    if not config.tie_word_embeddings:  # an untied head is a weight of its own in GPT2LMHeadModel too
        rows = [*rows, (TIED_KEY, TIED_KEY, False)]
    expected = {ours for ours, _, _ in rows} | {TIED_KEY}
    missing = sorted(expected - set(state))
    unknown = sorted(set(state) - expected)
    if missing or unknown:
        raise CheckpointError(
            "the checkpoint's weights do not match a GPT-2 of its config"
            + (f"; missing: {_few(missing)}" if missing else "")
            + (f"; unexpected: {_few(unknown)}" if unknown else "")
        )
    if config.tie_word_embeddings and TIED_KEY in state and not torch.equal(state[TIED_KEY], state["wte.weight"]):
        raise CheckpointError("the checkpoint's lm_head.weight differs from wte.weight: gpt2es ties them")
    out = {}
    for ours, hf, transposed in rows:
        t = state[ours].detach().to("cpu")
        if transposed:
            t = t.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        out[hf] = t.to(dtype or t.dtype).contiguous()
    return out


def from_hf_state_dict(
    state: dict[str, torch.Tensor], config: ModelConfig, source: Any = "the weights"
) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel (or GPT2Model) state_dict -> ours, in float32, shapes checked.

    Accepts keys with or without the 'transformer.' prefix and skips the old causal-mask buffers.
    With tied embeddings (config.tie_word_embeddings) an lm_head.weight must equal the token
    embedding; untied, it is required and becomes our separate head.
    """
    plain: dict[str, torch.Tensor] = {}
    lm_head = None
    for key, value in state.items():
        if key == TIED_KEY:
            lm_head = value
            continue
        key = key.removeprefix(HF_PREFIX)
        if _HF_BUFFER.match(key):
            continue
        plain[key] = value
    rows = key_map(config.n_layer)
    wanted = {hf.removeprefix(HF_PREFIX) for _, hf, _ in rows}
    missing = sorted(wanted - set(plain))
    unknown = sorted(set(plain) - wanted)
    if missing or unknown:
        raise CheckpointError(
            f"{source} do not match a GPT-2 of its config.json"
            + (f"; missing: {_few(missing)}" if missing else "")
            + (f"; unexpected: {_few(unknown)}" if unknown else "")
        )
    shapes = GPT2.state_shapes(config)
    out: dict[str, torch.Tensor] = {}
    for ours, hf, transposed in rows:
        t = plain[hf.removeprefix(HF_PREFIX)]
        if transposed and t.dim() == 2:
            t = t.t()  # Conv1D (in, out) -> nn.Linear (out, in)
        if t.shape != shapes[ours]:
            raise CheckpointError(
                f"{source}: {hf} has shape {tuple(t.shape)} but config.json implies "
                f"{tuple(shapes[ours][::-1] if transposed else shapes[ours])}"
            )
        out[ours] = t.to(torch.float32).contiguous()
    if not config.tie_word_embeddings:  # an untied head: its own matrix
        if lm_head is None:
            raise CheckpointError(
                f"{source}: config.json sets tie_word_embeddings false but there is no lm_head.weight"
            )
        if lm_head.shape != out["wte.weight"].shape:
            raise CheckpointError(
                f"{source}: lm_head.weight has shape {tuple(lm_head.shape)} but config.json implies "
                f"{tuple(out['wte.weight'].shape)}"
            )
        out[TIED_KEY] = lm_head.to(torch.float32).contiguous()
        return out
    if lm_head is not None and (lm_head.shape != out["wte.weight"].shape or not torch.equal(
        lm_head.to(torch.float32), out["wte.weight"]
    )):
        raise CheckpointError(
            f"{source}: lm_head.weight differs from the token embedding although config.json ties them "
            "(tie_word_embeddings true): the files come from different models"
        )
    out[TIED_KEY] = out["wte.weight"]  # the same tensor, as in GPT2.state_dict()
    return out


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# --- configs --------------------------------------------------------------------------------
def hf_config_dict(config: ModelConfig, eos_id: int, dtype: str = "float32") -> dict[str, Any]:
    """The GPT2Config (as a dict for config.json) equivalent to our ModelConfig."""
    from transformers import GPT2Config

    hf = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,  # 4 * n_embd, as ours
        activation_function=ACTIVATION_TO_HF[config.activation],
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        summary_first_dropout=config.dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=config.tie_word_embeddings,
        architectures=["GPT2LMHeadModel"],
        dtype=dtype,
    )
    return hf.to_dict()


# transformers' GPT2Config defaults, for fields a config.json leaves out.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
# Names newer configs may use instead (GPT2Config.attribute_map).
_HF_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


def model_config_from_hf(data: dict[str, Any], source: Any = "config.json") -> ModelConfig:
    """Our ModelConfig from a GPT-2 config.json; every unsupported setting reported at once."""
    model_type = data.get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(
            f"{source} describes a {model_type!r} model, not GPT-2: gpt2es loads Hugging Face models with "
            "model_type 'gpt2' (and 'gpt_neox' configured as its rope models)"
        )
    cfg = dict(_HF_DEFAULTS)
    cfg.update({_HF_ALIASES.get(k, k): v for k, v in data.items()})
    problems = []
    activation = ACTIVATION_FROM_HF.get(cfg["activation_function"])
    if activation is None:
        problems.append(
            f"activation_function {cfg['activation_function']!r} is not supported "
            f"(gpt2es runs {', '.join(sorted(ACTIVATION_FROM_HF))})"
        )
    n_embd = cfg["n_embd"]
    if cfg["n_inner"] is not None and cfg["n_inner"] != 4 * n_embd:
        problems.append(
            f"n_inner {cfg['n_inner']} is not 4 * n_embd ({4 * n_embd}), which gpt2es requires"
        )
    if not cfg["scale_attn_weights"]:
        problems.append("scale_attn_weights false is not supported")
    if cfg["scale_attn_by_inverse_layer_idx"]:
        problems.append("scale_attn_by_inverse_layer_idx is not supported")
    if cfg["add_cross_attention"]:
        problems.append("add_cross_attention (an encoder-decoder GPT-2) is not supported")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    try:
        return ModelConfig(
            vocab_size=cfg["vocab_size"],
            n_positions=cfg["n_positions"],
            n_layer=cfg["n_layer"],
            n_head=cfg["n_head"],
            n_embd=n_embd,
            dropout=float(cfg["resid_pdrop"]),
            activation=activation,
            layer_norm_eps=float(cfg["layer_norm_epsilon"]),
            tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
        ).validate()
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None


# --- export ---------------------------------------------------------------------------------
def export_hf(
    checkpoint: Checkpoint,
    out_dir: str | Path,
    force: bool = False,
    dtype: str | torch.dtype = "float32",
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write `checkpoint` as a Hugging Face GPT-2 directory and return its path.

    The directory holds config.json, generation_config.json, model.safetensors, the tokenizer
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json) and a README.md model card;
    `AutoModelForCausalLM.from_pretrained(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)`
    load it offline. `dtype` is float32, bfloat16 or float16 (or fp32/bf16/fp16, or a torch
    dtype). `tokenizer` overrides the checkpoint's; without either, no tokenizer files
    are written. The directory appears whole or not at all (written beside it, then renamed); an
    existing non-empty `out_dir` is refused unless `force`, and even then unless it holds a
    previous export (config.json).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    weight_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)
    dtype = dtype_name(weight_dtype)
    _check_target(out_dir, force)
    config = checkpoint.model_config
    if tokenizer is None and checkpoint.tokenizer_json is not None:
        tokenizer = checkpoint.tokenizer()
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}: "
            "pass the tokenizer the model was trained with"
        )
    eos_id = tokenizer.eos_id if tokenizer is not None else None
    if config.position == "rope":  # rotary embeddings: GPT-NeoX configured as our blocks (hf_neox.py)
        tensors = to_neox_state_dict(clean_state_dict(checkpoint.model_state), config, weight_dtype)
        config_json = neox_config_dict(config, eos_id, dtype)
    else:
        tensors = to_hf_state_dict(checkpoint.model_state, config, weight_dtype)
        config_json = hf_config_dict(config, eos_id, dtype)

    tmp = temp_dir_for(out_dir)  # a killed export's temp directory goes first
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config_json)
        _write_json(tmp / "generation_config.json", _generation_config(eos_id))
        if tokenizer is not None:
            _write_tokenizer(tmp, tokenizer, config.n_positions)
        num_params = sum(t.numel() for t in tensors.values())
        (tmp / "README.md").write_text(
            _model_card(checkpoint, dtype, num_params, tokenizer), encoding="utf-8"
        )
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"cannot export to {out_dir}: it is a file; give a directory path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise CheckpointError(f"{out_dir} already exists and is not empty: pass --force to replace it")
        if not (out_dir / "config.json").is_file():  # --force must not wipe an unrelated directory
            raise CheckpointError(
                f"{out_dir} is not empty and holds no model (no config.json): refusing to replace it "
                "even with --force; choose another directory"
            )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _generation_config(eos_id: int | None) -> dict[str, Any]:
    # pad = eos, as GPT-2 has no padding token: generate() then does not warn and pads with it.
    return {
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "transformers_version": _transformers_version(),
    }


def _write_tokenizer(directory: Path, tokenizer: Tokenizer, n_positions: int) -> None:
    """tokenizer.json as is, plus the two small files transformers reads beside it.

    tokenizer_class PreTrainedTokenizerFast (TokenizersBackend in transformers 5) loads
    tokenizer.json verbatim; GPT2Tokenizer would rebuild the pipeline from vocab and merges.
    """
    (directory / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
            "model_max_length": n_positions,
        },
    )
    _write_json(directory / "special_tokens_map.json", special)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _model_card(checkpoint: Checkpoint, dtype: str, num_params: int, tokenizer: Tokenizer | None) -> str:
    c = checkpoint.model_config
    rows = "\n".join(f"| {k} | {v} |" for k, v in c.to_dict().items())
    notes = {
        k: v
        for section in (checkpoint.training or {}, checkpoint.extra or {})
        for k, v in section.items()
        if isinstance(v, (str, int, float, bool))
    }
    notes_text = "".join(f"- {k}: {v}\n" for k, v in notes.items())
    tok = (
        f"Byte-level BPE, {tokenizer.vocab_size} ids, `{EOS_TOKEN}` (id {tokenizer.eos_id}) as "
        "bos/eos/unk."
        if tokenizer is not None
        else "No tokenizer was exported with this model."
    )
    origin = (
        "converted from a Hugging Face GPT-2"
        if checkpoint.source == "huggingface"
        else f"made with gpt2es {checkpoint.gpt2es_version}"
    )
    return f"""---
language: es
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, gpt2es]
---

# GPT-2 (Spanish), exported by gpt2es

A decoder-only GPT-2 with {num_params:,} parameters, {origin}, exported by gpt2es {__version__}
as a `{"GPTNeoXForCausalLM" if c.position == "rope" else "GPT2LMHeadModel"}` ({dtype} weights, {"tied" if c.tie_word_embeddings else "separate"} input and output embeddings).

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
print(generate("Había una vez", max_new_tokens=40)[0]["generated_text"])
```

## Architecture

| field | value |
|---|---|
{rows}

## Tokenizer

{tok}

## Provenance

- exported from: `{checkpoint.path.name if checkpoint.path is not None else "an in-memory checkpoint"}`
- source format: {checkpoint.source}
{notes_text}"""


# --- import ---------------------------------------------------------------------------------
def load_hf_checkpoint(path: str | Path) -> Checkpoint:
    """Load a local Hugging Face GPT-2 directory (config.json + model.safetensors or
    pytorch_model.bin, optionally sharded, + optional tokenizer) as a Checkpoint."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: it is not a Hugging Face model directory")
    data = read_json_object(config_file, CheckpointError, "download or export the model again")
    state_source = f"the weights in {path}"
    if data.get("model_type") == "gpt_neox":  # a rope model (hf_neox.py)
        config = model_config_from_neox(data, config_file)
        model_state = from_neox_state_dict(_read_hf_weights(path), config, GPT2.state_shapes(config), state_source)
    else:
        config = model_config_from_hf(data, config_file)
        model_state = from_hf_state_dict(_read_hf_weights(path), config, source=state_source)
    tokenizer_json = None
    if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        try:
            tokenizer = Tokenizer.from_path(path)
        except Gpt2esError as e:
            raise CheckpointError(f"{path}: its tokenizer cannot be used ({e})") from None
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{config.vocab_size}: the directory mixes files from different models"
            )
        tokenizer_json = tokenizer.to_json()
    return Checkpoint(
        model_config=config,
        model_state=model_state,
        tokenizer_json=tokenizer_json,
        source="huggingface",
        path=path,
    )


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the directory's weights: one file or shards listed in an index."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _read_weight_file(path / name)
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise CheckpointError(f"{index} is not a valid weight index: the file is damaged") from None
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise CheckpointError(f"{path} lacks {shard}, listed in {index.name}: copy it there")
                state.update(_read_weight_file(path / shard))
            return state
    raise CheckpointError(f"{path} has config.json but no weights: expected {' or '.join(WEIGHT_FILES)}")


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if file.stat().st_size == 0:
            raise CheckpointError(f"{file} is empty: the file is truncated or was never written")
        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"cannot read {file}: not a valid safetensors file ({first_line(e, 120)})"
            ) from None
    state = safe_torch_load(file, "cpu")  # weights_only=True: never unpickles code
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a state_dict of tensors")
    return state
