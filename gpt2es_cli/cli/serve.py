"""`gpt2es serve`: serve a model over HTTP (an OpenAI-compatible API and a playground page)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from gpt2es_cli.cli.app import command, console, err_console, note
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.cli.sample import DEFAULT_CHECKPOINT_HELP
from gpt2es_cli.config import InferenceConfig, ServeConfig
from gpt2es_cli.serve import require_serve_extra

API_KEY_VARIABLE = "GPT2ES_API_KEY"
LOADING = ("device", "dtype", "quantize", "revision")
"""The loading settings serve offers (the engine's steps change shape as requests come and go: no --compile)."""


@command("serve", epilog="Examples:\n\n  gpt2es serve\n\n  gpt2es serve runs/demo --port 8080\n\n"
                         "  GPT2ES_API_KEY=secret gpt2es serve runs/demo --host 0.0.0.0")
@settings_options(ServeConfig)
@settings_options(InferenceConfig, into="inference", only=LOADING)
def serve(
    given: dict[str, Any],
    inference: dict[str, Any],
    checkpoint: Annotated[Path | None, typer.Argument(metavar="CHECKPOINT", help=DEFAULT_CHECKPOINT_HELP, show_default=False)] = None,
) -> None:
    """Serve a model over HTTP: an OpenAI-compatible API (/v1/completions, streamed, batched) and a playground page at /."""
    require_serve_extra()
    config = ServeConfig.from_dict(given)
    settings = InferenceConfig.from_dict(inference)
    from gpt2es_cli.inference import Purpose, load_model
    from gpt2es_cli.serve import server
    from gpt2es_cli.serve.api import create_app
    from gpt2es_cli.serve.engine import Engine

    api_key = config.api_key or os.environ.get(API_KEY_VARIABLE) or None
    sock = server.bind(config.host, config.port)  # before loading: a port in use fails at once
    try:
        ready = load_model(checkpoint, settings, purpose=Purpose.GENERATE)
        if ready.default is not None:
            note(f"using {ready.default}")
        name = config.model_name or server.model_name(ready.default.path if ready.default else checkpoint)
        engine = Engine(ready.model, ready.tokenizer, max_batch=config.max_batch, max_queue=config.max_queue)
        app = create_app(engine, ready.tokenizer, name, context=engine.context, api_key=api_key,
                         cors_origins=config.cors_origin or (), model=ready.model)
        engine.start()
    except BaseException:
        sock.close()
        raise
    base = server.url(sock)
    console.print(f"serving [bold]{escape(name)}[/] ({ready.precision}, {engine.context} tokens of context, "
                  f"{config.max_batch} requests at once) on {base}", soft_wrap=True)
    console.print(f"  playground: {base}/", soft_wrap=True)
    console.print(f"  API:        {base}/v1  (OpenAI-compatible: /v1/completions, /v1/models)", soft_wrap=True)
    if api_key:
        err_console.print("[dim]  an API key is required on /v1, /tokenize and /detokenize[/]", soft_wrap=True)
    err_console.print("[dim]Ctrl-C to stop[/]", soft_wrap=True)
    try:
        server.run(app, sock, stop=engine.close)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a server stops: not an error
    finally:
        engine.close()
        sock.close()
    err_console.print("stopped", soft_wrap=True)
