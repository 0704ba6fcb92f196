"""Resumers hand a claimed run back to the pipeline. Two kinds, both async callables:

- a Python callable named `module:function` (`async def resume(request: ResumeRequest) -> None`);
- `HttpResumer(url)`: POSTs the request as JSON; 2xx accepted, 409 stale token, 429 and 503 busy (back-
  pressure: `PipelineBusy`, honouring Retry-After), other 4xx refused for good, other 5xx or no connection
  retryable, no answer within the timeout busy (the pipeline may have taken the request: it is sent again
  with the same `Idempotency-Key`, which the pipeline must answer as it answered the first).

A resumer raises `ResumeRejected` to refuse; any other exception counts as retryable unless its class name is
in the retry policy's non-retryable kinds. The fencing token travels with every request, so the pipeline can
reject a worker that lost its claim (compare with the highest token it has seen for the run).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tdev_recovery.exceptions import PipelineBusy, ResumerConfigError, ResumeRejected
from tdev_state.resume import CompletedAgent, ResumeRequest

if TYPE_CHECKING:
    from tdev_recovery.config import RetryPolicy

Resumer = Callable[[ResumeRequest], Awaitable[None]]

__all__ = ["CompletedAgent", "HttpResumer", "ResumeRequest", "Resumer", "load_resumer"]


class HttpResumer:
    """POST the resume request to the pipeline's URL (stdlib HTTP, on a thread)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ResumerConfigError(f"HTTP resumer needs an http(s) URL, got {url!r}")
        self.url = url
        self.timeout = timeout

    async def __call__(self, request: ResumeRequest) -> None:
        await asyncio.to_thread(self._post, request)

    def _post(self, request: ResumeRequest) -> None:
        body = json.dumps(request.to_json()).encode()
        http_request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Fencing-Token": str(request.fencing_token),
                "Idempotency-Key": f"{request.session_id}:{request.fencing_token}",
            },
        )
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            if exc.code == 409:
                raise ResumeRejected(
                    f"pipeline has a newer claim on {request.session_id}: {detail}",
                    retryable=False,
                    stale=True,
                ) from None
            if exc.code in (429, 503):
                wait = _retry_after(exc.headers.get("Retry-After"))
                raise PipelineBusy(f"pipeline busy ({exc.code}): {detail}", retry_after=wait) from None
            if 400 <= exc.code < 500:
                raise ResumeRejected(
                    f"pipeline refused the resume ({exc.code}): {detail}", retryable=False
                ) from None
            raise ResumeRejected(f"pipeline error {exc.code}: {detail}", retryable=True) from None
        except TimeoutError:  # sent, no answer in time (urllib wraps a connect failure in URLError)
            raise PipelineBusy(f"pipeline did not answer within {self.timeout:g} s at {self.url}") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise ResumeRejected(f"pipeline unreachable at {self.url}: {exc}", retryable=True) from None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delay-seconds form; an HTTP date or junk is ignored)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def load_resumer(spec: str, *, timeout: float = 10.0) -> Resumer:
    """`http(s)://…` → HttpResumer; `package.module:function` → that async callable."""
    if spec.startswith(("http://", "https://")):
        return HttpResumer(spec, timeout=timeout)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ResumerConfigError(
            f"resumer {spec!r} is neither a URL nor 'module:function' (e.g. 'myapp.pipeline:resume')"
        )
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ResumerConfigError(f"cannot load resumer {spec!r}: {exc}") from None
    if not asyncio.iscoroutinefunction(target) and not asyncio.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    ):
        raise ResumerConfigError(f"resumer {spec!r} must be an async callable")
    resumer: Resumer = target
    return resumer


class BusyWait:
    """How long one attempt has waited on a busy pipeline, and the next wait (None: the bound is reached)."""

    def __init__(self, bound: float) -> None:
        self._bound = bound
        self._since: float | None = None
        self._waits = 0

    def waited(self) -> float:
        return 0.0 if self._since is None else time.monotonic() - self._since

    def next_delay(self, retry_after: float | None, policy: RetryPolicy) -> float | None:
        if self._since is None:
            self._since = time.monotonic()
        left = self._bound - self.waited()
        if left <= 0:
            return None
        self._waits += 1
        cap = policy.delay(self._waits) if retry_after is None else retry_after
        # At least the initial interval (a "Retry-After: 0" must not make a busy loop), at most the cap.
        low, high = policy.initial_interval.total_seconds(), policy.maximum_interval.total_seconds()
        cap = min(max(cap, low), high, left)
        return random.uniform(cap / 2, cap)  # jittered, so replicas held back together do not return together
