"""`gpt2es export [CHECKPOINT] OUT_DIR`, and `gpt2es export CHECKPOINT --consolidate FILE`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from gpt2es_cli.cli import fmt
from gpt2es_cli.cli.app import CHECKPOINT_HELP, command, console, note, warn
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.config import InferenceConfig, ModelConfig


@command("export", epilog='Examples:\n\n  gpt2es export demo-hf\n\n  gpt2es export runs/demo/best.pth demo-hf --dtype bf16\n\n  gpt2es export runs/demo demo-hf --push-to-hub you/gpt2es-demo\n\n  gpt2es export runs/lora lora-adapter\n\n  gpt2es export runs/lora lora-merged --merge\n\n  gpt2es export runs/big --consolidate big.pth')
@settings_options(InferenceConfig, into="inference", only=("dtype", "revision"))
def export(
    inference: dict[str, Any],
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="CHECKPOINT",
            help=CHECKPOINT_HELP + " Leave it out (give OUT_DIR alone) to export the newest run's "
            "best.pth (else last.pth) under runs/.",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="OUT_DIR",
            help="Directory to write the Hugging Face model into (required).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="Replace OUT_DIR if it holds a previous export.")
    ] = False,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer to export instead of the checkpoint's (tokenizer.json, or a directory "
            "with it or vocab.json + merges.txt).",
        ),
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option("--push-to-hub", metavar="OWNER/NAME",
                     help="Also upload the export to this Hub model repo (created if needed; needs a token)."),
    ] = None,
    private: Annotated[bool, typer.Option("--private", metavar="", help="With --push-to-hub: create the repo private.")] = False,
    merge: Annotated[
        bool,
        typer.Option("--merge", metavar="", help="For a LoRA run: merge the adapter into its base and export the "
                     "whole model, instead of a peft adapter directory."),
    ] = False,
    consolidate: Annotated[
        Path | None,
        typer.Option("--consolidate", metavar="FILE",
                     help="Instead of a Hugging Face export, write CHECKPOINT as one gpt2es .pth file: a sharded "
                     "checkpoint (train --parallel fsdp) read whole, training state included, so it samples, "
                     "evaluates and resumes anywhere. A run directory means its last.pth."),
    ] = None,
) -> None:
    """Export a checkpoint as a Hugging Face GPT-2 (transformers' AutoModelForCausalLM).

    `gpt2es export CHECKPOINT OUT_DIR` exports CHECKPOINT into OUT_DIR; `gpt2es export OUT_DIR` exports the newest run's checkpoint under runs/.
    A LoRA run (train --lora-rank) exports as a peft adapter directory for its base's export; with --merge, as the whole model with the adapter merged in.
    `gpt2es export CHECKPOINT --consolidate FILE` writes a sharded checkpoint (train --parallel fsdp) as one .pth file.
    """
    from gpt2es_cli.artifacts import checkpoint_or_default, checkpoint_path, open_checkpoint
    from gpt2es_cli.checkpoint import load_checkpoint
    from gpt2es_cli.errors import ConfigError
    from gpt2es_cli.hf import export_hf, export_peft_adapter
    from gpt2es_cli.inference import check_export_dtype, export_dtype
    from gpt2es_cli.tokenizer import Tokenizer

    if consolidate is not None:
        consolidate_checkpoint(checkpoint, out_dir, consolidate, force)
        return
    settings = InferenceConfig.from_dict(inference)
    check_export_dtype(settings)  # before any file is read
    if push_to_hub is not None:
        from gpt2es_cli.hub import check_push_target

        check_push_target(push_to_hub)  # no token, offline, a bad id: said before any work
    if out_dir is None:  # one positional: it is OUT_DIR
        checkpoint, out_dir = None, checkpoint
    if out_dir is None:
        raise typer.BadParameter("missing: give the directory to export into (export [CHECKPOINT] OUT_DIR)", param_hint="OUT_DIR")
    path, chosen = checkpoint_or_default(checkpoint, revision=settings.revision)
    if chosen is not None:
        note(f"using {chosen}")
    resolved = checkpoint_path(path)
    # A LoRA checkpoint as saved (its adapter alone) is all an adapter export needs: no base is opened.
    ckpt = load_checkpoint(resolved) if resolved.is_file() else open_checkpoint(resolved)
    if merge and ckpt.adapter is None:
        raise ConfigError(f"--merge is for a LoRA run (trained with --lora-rank), and {path} holds a whole model: drop --merge")
    if merge:
        ckpt = open_checkpoint(resolved)  # the adapter merged onto its base
    dtype = export_dtype(settings, ckpt)
    tok = Tokenizer.from_path(tokenizer) if tokenizer is not None else None
    if ckpt.adapter is not None and not merge:
        if tok is None and ckpt.tokenizer_json is not None:
            tok = ckpt.tokenizer()
        written = export_peft_adapter(ckpt.adapter, ckpt.model_state, out_dir, force=force, dtype=dtype,
                                      tokenizer=tok, exported_from=str(path))
        render_adapter(written, dtype, json.loads((written / "adapter_config.json").read_text()))
    else:
        written = export_hf(ckpt, out_dir, force=force, dtype=dtype, tokenizer=tok)
        render(written, dtype, ckpt.model_config, json.loads((written / "config.json").read_text())["architectures"][0])
    if not (written / "tokenizer.json").is_file():
        warn(f"{path} carries no tokenizer, so none was exported: pass --tokenizer to add one")
    if push_to_hub is not None:
        from gpt2es_cli.hub import push_folder

        url = push_folder(written, push_to_hub, private=private, message=f"Export of {path} by gpt2es")
        console.print(f"uploaded to {escape(url)}")


def consolidate_checkpoint(checkpoint: Path | None, extra: Path | None, out: Path, force: bool) -> None:
    """`--consolidate FILE`: CHECKPOINT (a run directory: its last.pth) written whole as FILE."""
    from gpt2es_cli.artifacts import checkpoint_path
    from gpt2es_cli.checkpoint import consolidate
    from gpt2es_cli.errors import ConfigError

    if checkpoint is None or extra is not None:
        raise ConfigError("--consolidate FILE takes the CHECKPOINT alone: gpt2es export RUN_OR_CHECKPOINT --consolidate FILE")
    source = checkpoint / "last.pth" if (checkpoint / "last.pth").is_file() else checkpoint_path(checkpoint)
    if source.is_dir():
        raise ConfigError(f"{checkpoint} is a Hugging Face directory, which is one model already: nothing to consolidate")
    if out.is_dir() or (out.exists() and not force):
        raise ConfigError(f"{out} already exists: choose another file, or pass --force to replace it")
    if out.resolve() == source.resolve():
        raise ConfigError(f"--consolidate {out} would replace the checkpoint it reads: choose another file")
    written = consolidate(source, out)
    what = "weights, tokenizer and training state" if written.training is not None else "weights and tokenizer"
    console.print(f"consolidated {escape(str(source))} -> {escape(str(out))} ({fmt.size(out.stat().st_size)}: {what})")


def render_files(out_dir: Path, dtype: str) -> None:
    """The files written and their sizes."""
    table = Table(title=f"Exported to {escape(str(out_dir))} ({dtype})", title_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right")
    total = 0
    for file in sorted(out_dir.iterdir()):
        size = file.stat().st_size
        total += size
        table.add_row(escape(file.name), fmt.size(size))
    table.add_row("[bold]total[/]", f"[bold]{fmt.size(total)}[/]")
    console.print(table)


def render(out_dir: Path, dtype: str, config: ModelConfig, architecture: str) -> None:
    """The files written, their sizes, and how to load the export."""
    render_files(out_dir, dtype)
    console.print(
        f"{architecture}: {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads, "
        f"context {config.n_positions}, vocabulary {config.vocab_size}, {config.activation}"
    )
    where = repr(str(out_dir))
    console.print("Load it with transformers:")
    console.print(
        escape(
            "    from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"    model = AutoModelForCausalLM.from_pretrained({where})\n"
            f"    tokenizer = AutoTokenizer.from_pretrained({where})"
        ),
        soft_wrap=True,
    )


def render_adapter(out_dir: Path, dtype: str, adapter_config: dict[str, Any]) -> None:
    """The files written, their sizes, the adapter, and how to load it on its base."""
    render_files(out_dir, dtype)
    from gpt2es_cli.hf.peft_adapter import loads_directly

    base = adapter_config["base_model_name_or_path"]
    console.print(
        escape(f"LoRA adapter: rank {adapter_config['r']}, alpha {adapter_config['lora_alpha']:g}, on "
               f"{', '.join(adapter_config['target_modules'])}; its base: {base}"),
        soft_wrap=True,
    )
    where = repr(str(out_dir))
    if loads_directly(base):
        console.print("Load it with transformers and peft on its base:")
    else:
        console.print(escape(f"Load it with transformers and peft on its base's export (gpt2es export {base} base-hf):"),
                      soft_wrap=True)
        base = "base-hf"
    console.print(
        escape(
            "    from peft import PeftModel\n"
            "    from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"    base = AutoModelForCausalLM.from_pretrained({base!r})\n"
            f"    model = PeftModel.from_pretrained(base, {where})\n"
            f"    tokenizer = AutoTokenizer.from_pretrained({where})"
        ),
        soft_wrap=True,
    )
