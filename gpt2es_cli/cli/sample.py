"""`gpt2es sample`: generate text from a checkpoint, streamed as it comes; `--chat` talks with a
model fine-tuned on instructions, through its chat template (chat.py)."""

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

from gpt2es_cli.chat import end_of_turn_id, fit_conversation
from gpt2es_cli.cli.app import CHECKPOINT_HELP, command, console, err_console, note, warn
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.config import GenerationConfig, InferenceConfig
from gpt2es_cli.errors import ConfigError, GenerationError
from gpt2es_cli.generate import Generation
from gpt2es_cli.inference import Purpose, load_model
from gpt2es_cli.tokenizer import StreamDecoder, Tokenizer

DEFAULT_CHECKPOINT_HELP = CHECKPOINT_HELP + " Default: the newest run's best.pth (else last.pth) under runs/."
DEFAULT_PROMPT = "Había una vez"


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


@command("sample", epilog='Examples:\n\n  gpt2es sample --prompt "Había una vez"\n\n  gpt2es sample runs/demo -n 4 --temperature 0.7 --top-p 0.9\n\n  gpt2es sample DeepESP/gpt2-spanish --quantize int8 -i\n\n  gpt2es sample runs/demo-instructions --chat')
@settings_options(GenerationConfig)
@settings_options(InferenceConfig, into="inference")
def sample(
    given: dict[str, Any],
    inference: dict[str, Any],
    checkpoint: Annotated[Path | None, typer.Argument(metavar="CHECKPOINT", help=DEFAULT_CHECKPOINT_HELP, show_default=False)] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", show_default=False,  # None: --chat asks; else DEFAULT_PROMPT
                                 help=f"Text to continue (with --chat: the one message to answer). \\[default: {DEFAULT_PROMPT}]")
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option(help="Read the prompt from a UTF-8 file (overrides --prompt).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", metavar="", help="Re-encode the whole context each step (slow; for checks).")] = False,
    json_output: Annotated[bool, typer.Option("--json", metavar="", help="Print the samples as JSON instead of streaming.")] = False,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", metavar="", help="Ask for prompts in a loop (Ctrl-D quits).")] = False,
    chat: Annotated[bool, typer.Option("--chat", metavar="", help="Chat with a model fine-tuned on data from `prepare --format instructions`: each line you type is a message, the reply streams until the model ends its turn, the conversation is kept within the context (Ctrl-D quits). With --prompt: answer that one message.")] = False,
) -> None:
    """Generate text from a checkpoint (default: the newest run under runs/), streamed token by token."""
    config = GenerationConfig.from_dict(given)
    settings = InferenceConfig.from_dict(inference)
    if settings.compile and no_cache:
        raise ConfigError("--compile compiles the cached one-token step: drop --no-cache")
    if chat and config.num_samples > 1:
        raise ConfigError("--chat answers with one reply: drop --num-samples")
    if chat and interactive:
        raise ConfigError("--chat is interactive already (with --prompt it answers one message): drop --interactive")
    if prompt_file is not None:
        prompt = read_prompt_file(prompt_file)
    ready = load_model(checkpoint, settings, purpose=Purpose.GENERATE)
    if ready.default is not None:
        note(f"using {ready.default}")
    model, tokenizer, precision = ready.model, ready.tokenizer, ready.precision
    if chat:
        if tokenizer.chat_template is None:
            raise GenerationError(
                f"{ready.checkpoint.path} has no chat template (a base model continues text): fine-tune it on data "
                "prepared with `gpt2es prepare --format instructions`, or drop --chat"
            )
        _chat(ready, config, prompt, use_cache=not no_cache, compile=settings.compile, json_output=json_output)
        return
    prompt = DEFAULT_PROMPT if prompt is None else prompt

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
    _read_lines("Interactive mode: type a prompt and press Enter; Ctrl-D to quit.", "prompt>", run)


def _read_lines(banner: str, label: str, handle: Any) -> None:
    """Read lines at a `label` prompt until Ctrl-D (or Ctrl-C), passing each non-blank one to `handle`."""
    err_console.print(f"[dim]{banner}[/]")
    while True:
        try:
            text = console.input(f"[bold cyan]{label}[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()  # end the prompt's line where it was printed (stdout)
            return
        if text.strip():
            handle(text)


def _chat(ready: Any, config: GenerationConfig, prompt: str | None, *, use_cache: bool, compile: bool,
          json_output: bool) -> None:
    """The chat loop (or, with a prompt, one reply): each message is a user turn, each reply is
    streamed until the end-of-turn token, and the conversation is cut to fit the context."""
    model, tokenizer = ready.model, ready.tokenizer
    context = model.config.n_positions
    limit = max(1, context - min(config.max_new_tokens, context // 2))  # room for the reply
    stop = end_of_turn_id(tokenizer)
    messages: list[dict[str, str]] = []

    def reply(text: str) -> None:
        messages.append({"role": "user", "content": text.strip()})
        ids, dropped = fit_conversation(tokenizer, messages, limit)
        if dropped:
            del messages[:dropped]
            note(f"the conversation outgrew the context ({context} tokens): its {dropped} oldest messages were dropped")
        gen = Generation(model, ids, config, tokenizer.eos_id, use_cache=use_cache, compile=compile, stop_ids=(stop,))
        if gen.truncated:
            warn(f"the message is longer than the context: its first {gen.truncated} tokens were dropped")
        decoder = StreamDecoder(tokenizer)
        start = time.perf_counter()
        for step in gen:
            if step[0] is not None and not json_output:
                console.print(decoder.push(step[0]), end="", markup=False, highlight=False, soft_wrap=True)
        answer = tokenizer.decode(gen.samples[0])
        messages.append({"role": "assistant", "content": answer.strip()})
        if json_output:
            console.print_json(json.dumps({
                "messages": messages, "reply": answer, "tokens": len(gen.samples[0]),
                "finish_reason": _finish_reason(gen, 0), "precision": ready.precision,
                "seconds": round(time.perf_counter() - start, 4),
            }))
        else:
            console.print(decoder.flush(), markup=False, highlight=False, soft_wrap=True)
            if not gen.samples[0]:
                note("the model ended its turn without a word (a small or briefly tuned model may; try --temperature)")

    if prompt is not None:
        reply(prompt)
        return
    _read_lines("Chat: type a message and press Enter; Ctrl-D to quit.", "you>", reply)


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
