"""The pipeline's receiving side of a resume: a plain async function and a tiny pure-ASGI app around it.

The recovery worker (or the console, or `tdev`) claims a run — its fencing token goes up by one — and POSTs
a `tdev_state.resume.ResumeRequest` to the orchestrator. `accept_resume` parses it, refuses a token lower
than the run's stored `fencing_token` or below one this process has accepted (`StaleResumeError`: a late
request from a claim that has moved on; the same request again returns the continuation it started),
opens the existing run with `PipelineRun.resume`, and starts the orchestrator's continuation with the
original request (`request.request`), the completed outputs and the next agent's last stored input
(`request.next_input`). The orchestrator writes no claim
bookkeeping of its own: the worker records the hand-over when the request is accepted.

`resume_app` serves it over HTTP without a web framework (mount it in FastAPI: `app.mount(path, app)`):
202 accepted, 400 malformed, 404 unknown run, 409 stale token or finished run, 503 still continuing the
run from an earlier resume or store unavailable (send again later).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tdev_state.adoption.run import PipelineRun
from tdev_state.client import AsyncStateClient
from tdev_state.exceptions import (
    ConflictError,
    NotFoundError,
    ResumeBusyError,
    StaleResumeError,
    StateError,
    ValidationError,
)
from tdev_state.log import get_logger
from tdev_state.models import SessionStatus
from tdev_state.resume import ResumeRequest

log = get_logger(__name__)

Continuation = Callable[[PipelineRun, ResumeRequest], Awaitable[Any]]
ClientSource = AsyncStateClient | Callable[[], AsyncStateClient]

#: The largest resume body read (the request carries completed outputs; offloaded ones arrive inline).
MAX_BODY_BYTES = 64 * 1024 * 1024

#: Per run: the highest fencing token this process accepted and the continuation it started for it.
_accepted: dict[str, tuple[int, asyncio.Task[Any] | None]] = {}
_accepted_lock = threading.Lock()
_tasks: set[asyncio.Task[Any]] = set()
#: Runs accepted here whose continuation is not started yet (PipelineRun.resume under way): they count
#: against max_running too, or requests arriving together would all pass the limit.
_starting: set[str] = set()


async def accept_resume(
    client: AsyncStateClient,
    body: Any,
    continue_run: Continuation,
    *,
    max_running: int | None = None,
    **run_options: Any,
) -> asyncio.Task[Any]:
    """Check a resume request and start the continuation in the background; return its task.

    The same request sent again (same run, same fencing token: its answer was lost or came as "busy")
    returns the continuation it started, before anything else is checked — even once that continuation has
    finished the run, so the worker learns its request was accepted and records the resume instead of
    reading "nothing to resume" as a stale claim. `max_running` is this process's back-pressure: with that
    many resumed runs still being continued here, a NEW request is ResumeBusyError (503, the worker waits
    without using an attempt); a repeat never is.

    Raises ValidationError (malformed body or max_running), SessionNotFoundError, StaleResumeError (token
    lower than the run's, already accepted here, or the run is final), ResumeBusyError, or a StorageError
    when the store cannot answer — nothing is started then. `run_options` go to `PipelineRun.resume`
    (metrics, on_progress, ...).
    """
    if max_running is not None and (
        isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1
    ):
        raise ValidationError(f"max_running must be a whole number of runs, at least 1 (got {max_running!r})")
    request = body if isinstance(body, ResumeRequest) else ResumeRequest.from_json(body)
    with _accepted_lock:
        seen, running = _accepted.get(request.session_id, (0, None))
        if request.fencing_token == seen and running is not None:
            log.info("run.resume_repeated", session_id=request.session_id, fencing_token=seen)
            return running
        if max_running is not None and len(_tasks) >= max_running:
            raise ResumeBusyError(
                f"this process is continuing {len(_tasks)} resumed runs, its limit ({max_running}); "
                "send the resume again later"
            )
    # One consistent read, on a thread of its own: the client's small pool may be busy with the writes of
    # running runs, and the resumer waits for this answer (the worker's HTTP timeout is 10 s).
    stored = await asyncio.to_thread(client.sync.sessions.candidate, request.session_id)
    if request.fencing_token < stored.fencing_token:
        raise StaleResumeError(
            f"resume of {request.session_id!r} with fencing token {request.fencing_token} refused: the run's "
            f"token is {stored.fencing_token} (a newer claim took it over)"
        )
    if stored.status not in (SessionStatus.ACTIVE, SessionStatus.FAILED):
        raise StaleResumeError(
            f"run {request.session_id!r} is {stored.status.value}; there is nothing to resume"
        )
    with _accepted_lock:
        seen, running = _accepted.get(request.session_id, (0, None))
        if request.fencing_token == seen and running is not None:
            # The same request again (the worker re-sends when an answer was lost or the pipeline was busy,
            # with the same token and Idempotency-Key): accepted once, never started twice.
            log.info("run.resume_repeated", session_id=request.session_id, fencing_token=seen)
            return running
        if request.fencing_token == seen and request.session_id in _starting:
            # The same request while the first is still starting (re-sent after a timeout): busy, so the
            # worker sends it again and gets its continuation — stale would make it drop an accepted claim.
            raise ResumeBusyError(
                f"the resume of {request.session_id!r} with fencing token {seen} is being started here; "
                "send it again later"
            )
        if running is not None and not running.done():
            # A worker judged the run stalled while this process was slow to drive it: never run it twice
            # here. Busy, not refused — the worker waits and sends the same request again (no attempt used).
            raise ResumeBusyError(
                f"run {request.session_id!r} is still being continued here from fencing token {seen}; "
                "send the resume again later"
            )
        if request.fencing_token <= seen:
            raise StaleResumeError(
                f"resume of {request.session_id!r} with fencing token {request.fencing_token} refused: this "
                f"process accepted token {seen} already (a newer or concurrent request)"
            )
        if max_running is not None and len(_tasks) + len(_starting) >= max_running:
            raise ResumeBusyError(
                f"this process is continuing {len(_tasks) + len(_starting)} resumed runs, its limit "
                f"({max_running}); send the resume again later"
            )
        _accepted[request.session_id] = (request.fencing_token, None)
        _starting.add(request.session_id)
    try:
        run = await PipelineRun.resume(client, request.session_id, request=request, **run_options)
    except BaseException:
        with _accepted_lock:  # not started: the same request may be sent again
            _starting.discard(request.session_id)
            if _accepted.get(request.session_id) == (request.fencing_token, None):
                _accepted[request.session_id] = (seen, running)
        raise
    log.info(
        "run.resume_accepted",
        session_id=request.session_id,
        next_agent=request.next_agent,
        fencing_token=request.fencing_token,
        worker_id=request.worker_id,
    )
    task = asyncio.get_running_loop().create_task(_continue(continue_run, run, request))
    with _accepted_lock:
        _accepted[request.session_id] = (request.fencing_token, task)
        _starting.discard(request.session_id)
        _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def _continue(continue_run: Continuation, run: PipelineRun, request: ResumeRequest) -> Any:
    try:
        return await continue_run(run, request)
    except Exception as exc:  # the continuation's own failure: logged; recovery sees the run as it stands
        log.exception("run.resume_continuation_failed", session_id=run.session_id, error=repr(exc))
        return None


def _status_of(error: StateError) -> int:
    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ConflictError):
        return 409
    return 503  # ResumeBusyError and an unavailable store: try again later


def resume_app(client: ClientSource, continue_run: Continuation, **run_options: Any) -> Any:
    """A pure-ASGI app accepting POSTed resume requests (`client` may be a callable returning the client,
    for an orchestrator that creates it in `initialize()`)."""

    async def app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope.get("type") != "http":
            return
        if scope.get("method") != "POST":
            await _respond(send, 405, {"error": "POST a resume request (JSON)"})
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _respond(send, 413, {"error": f"the resume request is over {MAX_BODY_BYTES} bytes"})
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except ValueError:
            await _respond(send, 400, {"error": "the body is not JSON"})
            return
        try:
            source = client if isinstance(client, AsyncStateClient) else client()
            await accept_resume(source, body, continue_run, **run_options)
        except StateError as exc:
            await _respond(send, _status_of(exc), {"error": str(exc), "kind": type(exc).__name__})
            return
        await _respond(send, 202, {"accepted": True, "session_id": body.get("session_id")})

    return app


async def _respond(send: Any, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
