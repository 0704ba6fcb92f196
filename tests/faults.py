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


#: An answer a fault gives instead of the endpoint: HTTP status and JSON body (None: let the request through).
Answer = tuple[int, dict[str, Any]] | None


@contextmanager
def answering(client: Any, operation: str, answer: Callable[[Any], Answer]) -> Iterator[dict[str, int]]:
    """Calls of `operation` get `answer(request)` instead of reaching the endpoint (when it is not None).
    Counts the calls and the answers given."""
    counts = {"injected": 0, "calls": 0}
    lock = threading.Lock()

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        with lock:
            counts["calls"] += 1
            given = answer(request)
            if given is None:
                return None
            counts["injected"] += 1
        status, body = given
        headers = {"Content-Type": "application/x-amz-json-1.0"}
        return AWSResponse(request.url, status, headers, _Raw(json.dumps(body).encode()))

    event = f"before-send.dynamodb.{operation}"
    client.meta.events.register_first(event, handler)
    try:
        yield counts
    finally:
        client.meta.events.unregister(event, handler)


def dynamodb_error(name: str, message: str = "injected by tests/faults.py") -> tuple[int, dict[str, Any]]:
    """An HTTP 400 DynamoDB error answer of type `name`."""
    return 400, {"__type": f"com.amazonaws.dynamodb.v20120810#{name}", "message": message}


@contextmanager
def throttle(client: Any, operation: str, times: int) -> Iterator[dict[str, int]]:
    """The next `times` calls of `operation` answer ProvisionedThroughputExceededException (HTTP 400)."""
    left = [times]

    def answer(_: Any) -> Answer:
        if left[0] <= 0:
            return None
        left[0] -= 1
        return dynamodb_error("ProvisionedThroughputExceededException")

    with answering(client, operation, answer) as counts:
        yield counts


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
