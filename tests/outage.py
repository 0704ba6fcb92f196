"""A store outage on demand: every DynamoDB and S3 call of one client is refused (as a closed port refuses
it) or hangs until released. It hooks botocore's `before-call` event, before moto and before the network,
so it behaves the same on moto, LocalStack and AWS; no sleeps — a hang waits on an event the test sets.
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import EndpointConnectionError

from tdev_state import StateClient


class StoreOutage:
    """`down()` refuses every call, `hang()` blocks every call until `up()`; `up()` ends either."""

    def __init__(self, client: StateClient) -> None:
        self._mode = "up"
        self._released = threading.Event()
        self.refused = 0
        self.hung = 0
        self._lock = threading.Lock()
        clients = [client.layer.dynamodb] + (
            [client.layer.payloads.s3] if client.layer.payloads.s3 is not None else []
        )
        for boto in clients:
            boto.meta.events.register_first("before-call", self._before_call)

    def down(self) -> None:
        self._released.clear()
        self._mode = "down"

    def hang(self) -> None:
        self._released.clear()
        self._mode = "hang"

    def up(self) -> None:
        self._mode = "up"
        self._released.set()

    def _before_call(self, **_: Any) -> None:
        mode = self._mode
        if mode == "hang":
            with self._lock:
                self.hung += 1
            self._released.wait(timeout=30)  # released by up(); the bound only keeps a broken test finite
            mode = self._mode
        if mode == "down":
            with self._lock:
                self.refused += 1
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9 (outage injected by tests)")
