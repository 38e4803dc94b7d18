"""Listening and running: the socket, the model's name in the API, uvicorn.

The socket is bound before uvicorn starts, so that a port in use is a one-line error (not a log
line from inside the server) and port 0 (any free port) is known before the first request.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt2es_cli.artifacts import RUN_DIR_CHECKPOINTS
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.hub import is_hub_id

BACKLOG = 2048
"""Connections that may wait to be accepted (uvicorn's default)."""
GRACE_SECONDS = 5.0
"""On Ctrl-C, requests in flight have this long to finish; then they are ended."""


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free one), for uvicorn to serve."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host}: {e.strerror}; give an address such as 127.0.0.1 or 0.0.0.0 "
                          "with --host") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port left in TIME_WAIT is free
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another server?): choose another with --port, "
                              f"e.g. --port {port + 1 if port < 65535 else 8000}") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(BACKLOG)  # connections wait in the backlog from now on, even before uvicorn accepts them
    return sock


def url(sock: socket.socket) -> str:
    """The http:// address a socket serves (a wildcard host shown as 127.0.0.1, which reaches it from here)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def model_name(checkpoint: str | Path) -> str:
    """A model's name in the API: its run directory's name (runs/demo/best.pth: demo), a file's stem,
    a directory's name, or the Hub model id as given."""
    if is_hub_id(checkpoint):
        return str(checkpoint)
    path = Path(checkpoint).resolve()
    if path.is_file():
        return path.parent.name if path.name in RUN_DIR_CHECKPOINTS else path.stem
    return path.name


def run(app: Any, sock: socket.socket, stop: Callable[[], None] | None = None) -> None:
    """Serve `app` on `sock` until Ctrl-C (or SIGTERM). Then it takes no new connections and gives
    the requests in flight GRACE_SECONDS to finish; past that it calls `stop` (e.g. the engine's
    close: every stream ends at once, each request answers that the server is shutting down), and
    cancels whatever is still left a few seconds later. Raises KeyboardInterrupt after a Ctrl-C
    (uvicorn passes the signal on once it has stopped)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            loop = asyncio.get_running_loop()
            late = None
            if stop is not None:  # on a worker thread: stop may wait for the engine's thread
                late = loop.call_later(GRACE_SECONDS, lambda: loop.run_in_executor(None, stop))
            try:
                await super().shutdown(sockets)
            finally:
                if late is not None:
                    late.cancel()

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACE_SECONDS + 5,
                            server_header=False)
    Server(config).run(sockets=[sock])
