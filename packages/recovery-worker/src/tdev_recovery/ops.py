"""/healthz, /readyz and /metrics for one replica, on a stdlib HTTP server in a daemon thread.

- /healthz: 200 while the sweep loop has run within three poll intervals (the process is not wedged);
- /readyz: 200 when DynamoDB answers a DescribeTable on the sessions table;
- /metrics: Prometheus text format from the worker's registry.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tdev_recovery.worker import RecoveryWorker


class OpsServer:
    """Serves the three endpoints for `worker` on `host:port` (port 0 picks a free one)."""

    def __init__(self, worker: RecoveryWorker, *, host: str = "0.0.0.0", port: int = 8080) -> None:  # noqa: S104
        self.worker = worker
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="tdev-ops")

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def alive(self) -> bool:
        last = self.worker.last_sweep_monotonic
        if last is None:  # still starting: alive if the process just began
            return True
        return time.monotonic() - last < 3 * self.worker.config.poll_interval + 5

    def ready(self) -> bool:
        layer = self.worker._client.layer
        try:
            layer.dynamodb.describe_table(TableName=layer.tables.sessions)
        except Exception:
            return False
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(200 if ops.alive() else 503, b"ok\n" if ops.alive() else b"wedged\n")
                elif self.path == "/readyz":
                    ok = ops.ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"dynamodb unreachable\n")
                elif self.path == "/metrics":
                    self._reply(200, generate_latest(ops.worker.metrics.registry), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # quiet: structlog logs what matters
                return

        return Handler
