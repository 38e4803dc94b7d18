"""Serve a model over HTTP: an OpenAI-compatible API with batched decoding, and a playground page.

- engine.py: continuous batching. One thread decodes a token for every running request per step,
  admitting waiting requests into free places between steps; each request streams its tokens.
- api.py: the FastAPI app (`create_app`): /v1/completions, /v1/models, /tokenize, /detokenize,
  /health, /metrics, and the page at / (static/).
- schemas.py: what a request may hold, checked field by field, and the errors in OpenAI's shape.
- asgi.py: the middleware (request counts, the API key), the event-stream response, merging streams.
- scoring.py: the log-probabilities of a prompt's own tokens (`echo` with `logprobs`).
- metrics.py: the Prometheus metrics.
- server.py: the listening socket, the model's name in the API, and uvicorn (Ctrl-C stops it cleanly).

This package needs the `serve` extra (fastapi, uvicorn, prometheus-client); `require_serve_extra`
says so in one line when it is missing. Importing the package itself needs none of them.
"""

from __future__ import annotations

import importlib.util

from gpt2es_cli.errors import Gpt2esError

SERVE_EXTRA = ("fastapi", "uvicorn", "prometheus_client")
"""The modules the `serve` extra installs."""


class MissingExtra(Gpt2esError):
    """An optional extra that a feature needs is not installed."""


def require_serve_extra() -> None:
    """Raise a one-line MissingExtra when fastapi, uvicorn or prometheus-client is not installed."""
    missing = [name for name in SERVE_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra("gpt2es serve needs the serve extra: pip install 'gpt2es[serve]'")
