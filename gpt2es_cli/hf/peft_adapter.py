"""Write a LoRA adapter run as a peft adapter directory, for the base model's Hugging Face export.

An adapter checkpoint holds, per adapted Linear layer of our GPT2, two small matrices named after
the layer: `h.0.attn.c_attn.lora_A` (rank, in) and `h.0.attn.c_attn.lora_B` (out, rank); the
layer's weight becomes W + (alpha / rank) * B @ A. peft computes exactly that with the same two
shapes, whether the layer is an nn.Linear or transformers' Conv1D (`fan_in_fan_out`, which only
transposes the product), so the matrices keep their values and get the architecture's names
(`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`); an architecture whose layer orders
its outputs differently (GPT-NeoX's fused q, k, v) reorders B's rows as it reorders the weight's.
Which layer is which, and whether it is a Conv1D, comes from the architecture's adapter
(StateDictAdapter.linear_modules, fan_in_fan_out, output_rows_to_hf); nothing here names one.

The directory: adapter_config.json (as peft writes it), adapter_model.safetensors, the tokenizer
files when the run has a tokenizer, and a README.md (adapter_card.md filled in) saying which base
to load it on. peft itself is needed only to load it, not to write it.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import torch

from gpt2es_cli import __version__
from gpt2es_cli.checkpoint import LORA_PARTS, adapted_modules, adapter_problems, clean_state_dict
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.device import dtype_name, parse_dtype
from gpt2es_cli.errors import CheckpointError
from gpt2es_cli.fileio import replace_dir, temp_dir_for
from gpt2es_cli.hf.adapter import StateDictAdapter
from gpt2es_cli.hf.export import _check_target, _write_json, _write_tokenizer
from gpt2es_cli.hf.registry import adapter_for_config
from gpt2es_cli.hub import is_hub_id, split_id
from gpt2es_cli.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gpt2es_cli.checkpoint import AdapterRecord

ADAPTER_CARD = "adapter_card.md"
"""The README.md template (string.Template), package data beside this module."""
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""What peft puts before the base model's module paths in an adapter's weight names."""
_BLOCK_INDEX = re.compile(r"^(.*?\.)?\d+\.")
"""A module path up to its block index ('transformer.h.0.'), before the block's own part."""


def export_peft_adapter(
    record: AdapterRecord,
    adapter_state: dict[str, torch.Tensor],
    out_dir: str | Path,
    force: bool = False,
    dtype: str | torch.dtype = "float32",
    tokenizer: Tokenizer | None = None,
    exported_from: str = "an in-memory checkpoint",
) -> Path:
    """Write a LoRA adapter (`record`, and `adapter_state`: the lora_A / lora_B tensors named after
    our modules) as a peft adapter directory and return its path.

    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), out_dir)` then computes
    the merged model, where BASE is the base's Hugging Face export (`gpt2es export BASE_SOURCE DIR`,
    or the base itself when it is a Hub id or a Hugging Face directory). `dtype` is the tensors'
    (float32, bfloat16, float16). The directory appears whole or not at all; an existing non-empty
    `out_dir` is replaced only with `force`, and only when it holds a previous export.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    weight_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)
    _check_target(out_dir, force)
    if record.type != "lora":
        raise CheckpointError(f"the adapter is of type {record.type!r}: gpt2es exports LoRA adapters only")
    config = ModelConfig.from_dict(record.base.model_config)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}: "
            "pass the tokenizer the model was trained with"
        )
    architecture = adapter_for_config(config)
    tensors, adapted = peft_state_dict(adapter_state, record, config, architecture, weight_dtype)
    adapter_config = peft_config(record, architecture, target_modules(adapted))

    tmp = temp_dir_for(out_dir)  # a killed export's temp directory goes first
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(tmp / CONFIG_FILE, adapter_config)
        if tokenizer is not None:
            _write_tokenizer(tmp, tokenizer, config.n_positions)
        num_params = sum(t.numel() for t in tensors.values())
        (tmp / "README.md").write_text(
            _adapter_card(record, architecture, dtype_name(weight_dtype), num_params, len(adapted),
                          tokenizer is not None, exported_from),
            encoding="utf-8",
        )
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def peft_state_dict(
    adapter_state: dict[str, torch.Tensor],
    record: AdapterRecord,
    config: ModelConfig,
    architecture: StateDictAdapter,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Our lora_A / lora_B tensors -> peft's names and layout for `architecture`, every key and
    shape checked against the record; also the adapted layers (our module path -> the architecture's)."""
    problems = adapter_problems(config, record, adapter_state)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"the adapter does not fit its record and base: {problems[0]}{more}")
    state = clean_state_dict(adapter_state)
    modules = architecture.linear_modules(config)
    adapted = {ours: modules[ours] for ours in adapted_modules(record.targets, config.n_layer)}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in adapted.items():
        a = state[f"{ours}.lora_A"].detach().to("cpu")  # (rank, in): the same in every layout
        b = architecture.output_rows_to_hf(ours, state[f"{ours}.lora_B"].detach().to("cpu"), config)  # (out, rank)
        for part, t in zip(LORA_PARTS, (a, b)):
            out[f"{PEFT_PREFIX}{theirs}.{part}.weight"] = t.to(dtype or t.dtype).contiguous()
    return out, adapted


def target_modules(adapted: dict[str, str]) -> list[str]:
    """peft's target_modules for these layers (our path -> the architecture's), which are the same
    in every block: their paths after the block index ('attn.c_attn'). peft adapts each layer
    whose path ends with a listed name."""
    return sorted({theirs[_BLOCK_INDEX.match(theirs).end():] for theirs in adapted.values()})


def base_location(record: AdapterRecord) -> tuple[str, str | None]:
    """The base as transformers names it, and its revision: a Hub id's repo and revision, else the
    recorded source as it is (a path)."""
    source, revision = str(record.base.source), record.base.revision
    if is_hub_id(source):
        source, own = split_id(source)
        revision = revision or own
    return source, revision


def loads_directly(source: str) -> bool:
    """Whether transformers loads the base at `source` as it is (a Hub model id, or a Hugging Face
    directory); else (a gpt2es checkpoint or run) it needs `gpt2es export SOURCE DIR` first."""
    return is_hub_id(source) or (Path(source) / "config.json").is_file()


def peft_config(record: AdapterRecord, architecture: StateDictAdapter, targets: list[str]) -> dict[str, Any]:
    """adapter_config.json, with the fields peft has written since it had LoRA on causal LMs (a
    newer peft fills in the ones it added with their defaults)."""
    source, revision = base_location(record)
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": source,
        "bias": "none",
        "fan_in_fan_out": architecture.fan_in_fan_out,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": record.alpha,
        "lora_dropout": record.dropout,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": record.rank,
        "rank_pattern": {},
        "revision": revision,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def _adapter_card(
    record: AdapterRecord,
    architecture: StateDictAdapter,
    dtype: str,
    num_params: int,
    n_layers: int,
    has_tokenizer: bool,
    exported_from: str,
) -> str:
    """README.md: the adapter card template filled in for this export."""
    source, revision = base_location(record)
    if is_hub_id(record.base.source):
        base_name = source
        base_load = json.dumps(source) + (f", revision={json.dumps(revision)}" if revision else "")
        base_step = f"Its base is the Hub model `{source}`" + (f" at revision `{revision}`" if revision else "") + "."
        front_base = f"base_model: {source}\n"
    elif loads_directly(source):
        base_name = source
        base_load = json.dumps(source)
        base_step = f"Its base is the Hugging Face model directory `{source}`."
        front_base = ""
    else:
        base_name = "base-hf"
        base_load = json.dumps(base_name)
        base_step = (
            f"Its base is the gpt2es checkpoint `{source}`; export it for transformers first:\n\n"
            f"```bash\ngpt2es export {source} {base_name}\n```"
        )
        front_base = ""
    template = Template(files(__package__).joinpath(ADAPTER_CARD).read_text(encoding="utf-8"))
    return template.substitute(
        front_base=front_base,
        rank=record.rank,
        alpha=f"{record.alpha:g}",
        scale=f"{record.alpha / record.rank:g}",
        n_layers=n_layers,
        targets=", ".join(f"`{t}`" for t in record.targets),
        num_params=f"{num_params:,}",
        dtype=dtype,
        architecture=architecture.architecture,
        base_step=base_step,
        base_load=base_load,
        tokenizer_from=json.dumps("path/to/this/directory" if has_tokenizer else base_name),
        version=__version__,
        exported_from=exported_from,
        base_source=source,
        base_revision=f" at revision `{revision}`" if revision else "",
        base_sha256=record.base.sha256,
    )
