"""Hugging Face in both directions: one adapter per transformers architecture, picked by a registry.

    export_hf(checkpoint, out_dir)  -> a directory AutoModelForCausalLM / AutoTokenizer load offline
    export_peft_adapter(record, adapter_state, out_dir)
                                    -> a LoRA run as a peft adapter directory for its base's export
    load_hf_checkpoint(directory)   -> a Checkpoint (artifacts.open_checkpoint calls it for
                                       directories holding config.json)

The modules:

    adapter.py      StateDictAdapter, the interface every architecture implements
    gpt2.py         GPT2LMHeadModel (learned and sinusoidal positions), with the weight map key_map
    neox.py         GPTNeoXForCausalLM configured as our blocks (rope)
    registry.py     ADAPTERS, and which one serves a ModelConfig (export) or a config.json (import)
    export.py       export_hf: weights, config.json, generation config, tokenizer files, README.md
    peft_adapter.py export_peft_adapter: adapter_config.json, adapter_model.safetensors, README.md
    load.py         load_hf_checkpoint: config.json, weight files or shards, tokenizer
    model_card.md   the README.md template export.py fills in (adapter_card.md: peft_adapter.py's)

Adding an architecture is one module here with a StateDictAdapter subclass (its model_type,
architecture class name and label; `supports(config)`; the config and the state dict each way;
where each of our Linear layers is, for LoRA adapters: `linear_modules`, `fan_in_fan_out`)
and one entry in registry.ADAPTERS; export and import then pick it by ModelConfig and by
config.json's model_type. Export uses the first adapter in ADAPTERS that supports a config.

This package sits above checkpoint.py (it builds on its Checkpoint, clean_state_dict and
safe_torch_load); checkpoint.py never imports it. transformers and safetensors are imported
only by the functions that need them.
"""

from gpt2es_cli.hf.export import export_hf
from gpt2es_cli.hf.gpt2 import key_map
from gpt2es_cli.hf.load import load_hf_checkpoint
from gpt2es_cli.hf.peft_adapter import export_peft_adapter

__all__ = ["export_hf", "export_peft_adapter", "key_map", "load_hf_checkpoint"]
