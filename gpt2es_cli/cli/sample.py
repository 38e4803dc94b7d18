"""`gpt2es sample`: generate text from a checkpoint, streamed as it comes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from gpt2es_cli.cli.app import CHECKPOINT_HELP, command, console, err_console, note, warn
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.config import GenerationConfig, InferenceConfig
from gpt2es_cli.errors import ConfigError, GenerationError
from gpt2es_cli.generate import Generation
from gpt2es_cli.inference import Purpose, load_model
from gpt2es_cli.tokenizer import StreamDecoder, Tokenizer

DEFAULT_CHECKPOINT_HELP = CHECKPOINT_HELP + " Default: the newest run's best.pth (else last.pth) under runs/."


def read_prompt_file(path: Path) -> str:
    """The text of a prompt file; one-line errors for missing or non-UTF-8 files."""
    if not path.is_file():
        raise GenerationError(f"prompt file {path} does not exist: check the path")
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except UnicodeDecodeError as e:
        raise GenerationError(
            f"prompt file {path} is not UTF-8 text (bad byte at offset {e.start}): convert it to UTF-8"
        ) from None


@command("sample", epilog='Examples:\n\n  gpt2es sample --prompt "Había una vez"\n\n  gpt2es sample runs/demo -n 4 --temperature 0.7 --top-p 0.9\n\n  gpt2es sample DeepESP/gpt2-spanish --quantize int8 -i')
@settings_options(GenerationConfig)
@settings_options(InferenceConfig, into="inference")
def sample(
    given: dict[str, Any],
    inference: dict[str, Any],
    checkpoint: Annotated[Path | None, typer.Argument(metavar="CHECKPOINT", help=DEFAULT_CHECKPOINT_HELP, show_default=False)] = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")] = "Había una vez",
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from a UTF-8 file (overrides --prompt).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", metavar="", help="Re-encode the whole context each step (slow; for checks).")] = False,
    json_output: Annotated[bool, typer.Option("--json", metavar="", help="Print the samples as JSON instead of streaming.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", metavar="", help="Ask for prompts in a loop (Ctrl-D quits).")] = False,
) -> None:
    """Generate text from a checkpoint (default: the newest run under runs/), streamed token by token."""
    config = GenerationConfig.from_dict(given)
    settings = InferenceConfig.from_dict(inference)
    if settings.compile and no_cache:
        raise ConfigError("--compile compiles the cached one-token step: drop --no-cache")
    if prompt_file is not None:
        prompt = read_prompt_file(prompt_file)
    ready = load_model(checkpoint, settings, purpose=Purpose.GENERATE)
    if ready.default is not None:
        note(f"using {ready.default}")
    model, tokenizer, precision = ready.model, ready.tokenizer, ready.precision

    def run(text: str) -> None:
        gen = Generation(
            model,
            tokenizer.encode(text),
            config,
            tokenizer.eos_id,
            use_cache=not no_cache,
            compile=settings.compile,
        )
        if gen.truncated:
            warn(f"the prompt is longer than the context: its first {gen.truncated} tokens were dropped")
        if json_output:
            start = time.perf_counter()
            for _ in gen:
                pass
            elapsed = time.perf_counter() - start
            console.print_json(json.dumps(_as_json(text, gen, tokenizer, elapsed, precision)))
        else:
            _stream(text, gen, tokenizer, precision)

    if not interactive:
        run(prompt)
        return
    err_console.print("[dim]Interactive mode: type a prompt and press Enter; Ctrl-D to quit.[/]")
    while True:
        try:
            text = console.input("[bold cyan]prompt>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()  # end the prompt's line where it was printed (stdout)
            return
        if text.strip():
            run(text)


def _finish_reason(gen: Generation, i: int) -> str:
    return "eos" if gen.finished[i] else "length"


def _as_json(prompt: str, gen: Generation, tokenizer: Tokenizer, elapsed: float, precision: str) -> dict:
    new_tokens = sum(len(s) for s in gen.samples)
    return {
        "prompt": prompt,
        "prompt_tokens": len(gen.prompt_ids),
        "samples": [
            {"text": tokenizer.decode(s), "tokens": len(s), "finish_reason": _finish_reason(gen, i)}
            for i, s in enumerate(gen.samples)
        ],
        "precision": precision,
        "seconds": round(elapsed, 4),
        "tokens_per_second": round(new_tokens / elapsed, 2) if elapsed > 0 else None,
    }


def _stream(prompt: str, gen: Generation, tokenizer: Tokenizer, precision: str) -> None:
    """Show each sample in a panel, prompt highlighted, text appearing as it is generated."""
    n = gen.num_samples
    bodies = [Text(prompt, style="bold cyan") for _ in range(n)]
    decoders = [StreamDecoder(tokenizer) for _ in range(n)]

    def panels(done: bool, elapsed: float) -> Group:
        items = []
        for i, body in enumerate(bodies):
            subtitle = None
            if done:
                reason = "ended at <|endoftext|>" if gen.finished[i] else "reached --max-new-tokens"
                subtitle = f"{len(gen.samples[i])} tokens · {reason}"
            title = f"sample {i + 1}/{n}" if n > 1 else None
            items.append(Panel(body, title=title, subtitle=subtitle, title_align="left", subtitle_align="right"))
        if done:
            total = sum(len(s) for s in gen.samples)
            rate = total / elapsed if elapsed > 0 else 0.0
            items.append(Text(f"{total} tokens in {elapsed:.2f} s ({rate:.1f} tokens/s, {precision})", style="dim"))
        return Group(*items)

    start = time.perf_counter()
    with Live(panels(False, 0.0), console=console, refresh_per_second=15, transient=False) as live:
        for step in gen:
            for i, token in enumerate(step):
                if token is not None:
                    bodies[i].append(decoders[i].push(token))
            live.update(panels(False, time.perf_counter() - start))
        for body, decoder in zip(bodies, decoders, strict=True):
            body.append(decoder.flush())
        live.update(panels(True, time.perf_counter() - start))
    if not console.is_terminal:
        console.line()  # Live ends its last line only on a terminal; keep piped output line-ended
