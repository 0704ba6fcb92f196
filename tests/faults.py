"""Fault injectors for botocore clients: throttling, and a timeout *after* the request was applied.

They hook the client's `before-send` event, so they sit exactly where a network fault would: botocore's
own retry logic sees them and reacts as it would in production. Real endpoints only (LocalStack, DynamoDB
Local, AWS): moto serves requests from the same event, so under moto the request is applied regardless.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from botocore.httpsession import URLLib3Session


class _Raw:
    """A minimal urllib3-like body for AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body

    def read(self, *_: Any, **__: Any) -> bytes:
        return self._body


@contextmanager
def throttle(client: Any, operation: str, times: int) -> Iterator[dict[str, int]]:
    """The next `times` calls of `operation` answer ProvisionedThroughputExceededException (HTTP 400)."""
    counts = {"injected": 0, "calls": 0}
    lock = threading.Lock()

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        with lock:
            counts["calls"] += 1
            if counts["injected"] >= times:
                return None
            counts["injected"] += 1
        body = json.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "injected by tests/faults.py",
            }
        ).encode()
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body))

    event = f"before-send.dynamodb.{operation}"
    client.meta.events.register_first(event, handler)
    try:
        yield counts
    finally:
        client.meta.events.unregister(event, handler)


@contextmanager
def timeout_after_success(
    client: Any, operation: str, times: int = 1, *, meanwhile: Callable[[], object] | None = None
) -> Iterator[dict[str, int]]:
    """The next `times` calls of `operation` really reach the endpoint, then the client sees a read
    timeout — the case where a retry must not apply the write a second time. `meanwhile` runs between the
    applied request and the timeout (another writer acting before the retry). Real endpoints only."""
    counts = {"injected": 0}
    http = URLLib3Session()
    lock = threading.Lock()

    def handler(request: Any, **_: Any) -> None:
        # Only a call's first attempt: botocore's retry of it must reach the endpoint untouched.
        if b"attempt=1;" not in request.headers.get("amz-sdk-request", b""):
            return
        with lock:
            if counts["injected"] >= times:
                return
            counts["injected"] += 1
        response = http.send(request)
        assert response.status_code == 200, response.content
        if meanwhile is not None:
            meanwhile()
        raise ReadTimeoutError(endpoint_url=request.url)

    event = f"before-send.dynamodb.{operation}"
    client.meta.events.register_first(event, handler)
    try:
        yield counts
    finally:
        client.meta.events.unregister(event, handler)
