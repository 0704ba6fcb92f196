"""Serving the console: bind a socket (so port 0 yields a real port to print), and run uvicorn on it —
in the foreground for the CLI, or on a thread for tests and benchmarks."""

from __future__ import annotations

import errno
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from tdev_state.command import CommandLineError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or CommandLineError saying why the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise CommandLineError(f"{host}:{port} {why}: pick another --port (0 picks a free one)") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, ending with exit code 0 on SIGTERM or Ctrl-C: for a console those are the normal
    way to stop (uvicorn itself re-raises the signal after its graceful shutdown, which exits 143/130)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open connections
        self.should_exit = True


def server(app: ASGIApp) -> uvicorn.Server:
    """uvicorn with our logging left alone (no access log: the console logs what matters itself)."""
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
    )
    return _Server(config)


@contextmanager
def console_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` on a thread while the block runs; yields its base URL."""
    sock = bind(host, port)
    running = server(app)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not running.started and thread.is_alive():
            threading.Event().wait(0.02)
        yield url_of(sock)
    finally:
        running.should_exit = True
        thread.join(10)
        sock.close()
