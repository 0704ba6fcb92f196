"""/healthz, /readyz and /metrics for one replica, served from a daemon thread.

- /healthz — liveness: 200 while the worker's loop turns (a turn started or ended within three poll
  intervals plus a minute, whatever DynamoDB answers). An orchestrator restarts a process that fails it, so
  it must not fail on an outage a restart cannot fix.
- /readyz — readiness: 200 when DynamoDB answers a DescribeTable of the sessions table *now* (one attempt,
  one-second timeouts), 503 otherwise.
- /metrics — prometheus_client's own WSGI app over the worker's registry, with the process, platform and GC
  collectors registered: content negotiation (text or OpenMetrics), gzip, `name[]` filters.

Every path answers HEAD as GET without the body. The server is the stdlib's WSGI server in
prometheus_client's threading variant: no framework for three paths, and no hand-written HTTP either.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import GC_COLLECTOR, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from tdev_recovery.worker import RecoveryWorker
from tdev_state import StateError

StartResponse = Callable[[str, list[tuple[str, str]]], Any]

#: How long past three poll intervals a turn may take before the loop counts as stuck: a sweep during an
#: outage spends up to its retries (8 attempts with backoff and 10 s read timeouts) before it gives up.
TURN_ALLOWANCE_SECONDS = 60.0


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the worker's own structured log says what matters."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def register_process_collectors(registry: CollectorRegistry) -> None:
    """Add the process (CPU, memory, fds), platform (Python version) and GC collectors to `registry`, once."""
    if getattr(registry, "_tdev_process_collectors", False):
        return
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if GC_COLLECTOR is not None:  # absent on interpreters without gc.get_stats
        GCCollector(registry=registry)
    registry._tdev_process_collectors = True  # type: ignore[attr-defined]


class OpsServer:
    """Serves the three endpoints for `worker` on `host:port` (port 0 picks a free one).

    With `port_file`, the bound port is written there on start (and the file removed on stop), so the
    container's HEALTHCHECK probes the port actually used, whatever `--http-port` said.
    """

    def __init__(
        self,
        worker: RecoveryWorker,
        *,
        host: str = "0.0.0.0",  # noqa: S104 - a container's probes come from outside its loopback
        port: int = 8080,
        port_file: Path | None = None,
    ) -> None:
        self.worker = worker
        register_process_collectors(worker.metrics.registry)
        self._metrics_app = make_wsgi_app(worker.metrics.registry)
        self.httpd = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port: int = self.httpd.server_address[1]
        self.port_file = port_file
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="tdev-ops")

    def start(self) -> OpsServer:
        self._thread.start()
        if self.port_file is not None:
            self.port_file.write_text(f"{self.port}\n")
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.port_file is not None:
            with contextlib.suppress(OSError):
                self.port_file.unlink()

    def alive(self) -> tuple[bool, float]:
        """Whether the loop turns, and the seconds since its last turn began or ended."""
        since = time.monotonic() - self.worker.last_turn_monotonic
        limit = 3 * self.worker.config.poll_interval + TURN_ALLOWANCE_SECONDS
        return since < limit, since

    def ready(self) -> tuple[bool, str]:
        """Whether DynamoDB answers now, and why not."""
        layer = self.worker.client.layer
        try:
            layer.probe(layer.tables.sessions)
        except StateError as exc:
            return False, str(exc)
        return True, "dynamodb answers"

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        head = environ.get("REQUEST_METHOD") == "HEAD"
        if head:
            environ = {**environ, "REQUEST_METHOD": "GET"}
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = b"".join(self._metrics_app(environ, start_response))
        elif path in ("/healthz", "/readyz") and environ["REQUEST_METHOD"] == "GET":
            if path == "/healthz":
                ok, since = self.alive()
                detail: dict[str, Any] = {"loop_turned_seconds_ago": round(since, 3)}
            else:
                ok, reason = self.ready()
                detail = {"dynamodb": reason}
            body = (json.dumps({"ok": ok, **detail}) + "\n").encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
        elif path in ("/healthz", "/readyz"):
            body = b"use GET or HEAD\n"
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
        else:
            body = b"not found: try /healthz, /readyz or /metrics\n"
            start_response("404 Not Found", [("Content-Type", "text/plain")])
        # HEAD: the same status and headers, no body (an empty write sends the headers as set).
        return [b""] if head else [body]
