"""A real `gpt2es serve` app on 127.0.0.1 for the serve tests: uvicorn in a thread, stopped by itself."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from gpt2es_cli.serve import server

TIMEOUT = 20


@contextlib.contextmanager
def running(app, timeout: float = TIMEOUT) -> Iterator[str]:
    """`app` served by uvicorn in a thread on a free port of 127.0.0.1; yields its base URL."""
    sock = server.bind("127.0.0.1", 0)
    instance = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield server.url(sock)
    finally:
        instance.should_exit = True
        thread.join(timeout)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"
