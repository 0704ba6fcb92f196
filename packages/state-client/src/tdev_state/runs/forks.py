"""Forks: a new run whose agents before the fork point are its parent's finished results (issue #27).

`fork` reads the parent (one GetItem, one Query) and writes ONE TransactWriteItems of at most k + 2 items
for a fork at agent k:

- the child's session item: ACTIVE at progress k - 1, its current agent the fork point, declared silent for
  0 seconds — so it is due for the recovery worker's sweep at once and started through the same resume path
  as any stalled run (claim, fencing token, `build_request`, the pipeline's `accept_resume`). It records
  `parent_id`, `fork_point`, `replay` and `fork_overrides`, and copies the parent's user, project, pipeline
  type and metadata (the A/B arm with it); its own `created_at` and expiry;
- one Put per agent before the fork point: the parent's item as stored, under the child's id. Payload
  attributes are not decoded and no S3 byte is written: inline values are copied, offloaded and chunked ones
  still name the parent's objects, and sealed ones stay bound to the run that sealed them (`payload_origin`,
  read by `records.execution_from_item`). The parent's event entries and fingerprint are not copied (the
  child's event log starts at its creation);
- the fork point's item, PENDING with the input the pipeline resumes with: the parent's stored input, or,
  with overrides, that input decoded and merged with them (top level). That is the `next_input` the worker
  hands the pipeline; the pipeline's first start moves it to RUNNING (`rules`: PENDING may be stored);
- an Update of the parent appending the child to `children`, conditioned on the parent's version as read,
  its status not ACTIVE and no live lease: a resume of the parent racing the fork refuses the whole
  transaction (`RunActiveError`, a ConflictError), and nothing is written.

Expiry (docs/data-model.md, "Fork and lineage"): the copied items expire with the child. S3 objects the
copies name stay the parent's: a child never deletes an object it did not create (a refused call takes
back only the objects named with its own write id), and `refresh_shared` restarts the age of a shared
object whose lifecycle would end it before the child's items.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from tdev_state import validate as check
from tdev_state.config import PAYLOAD_GRACE_DAYS
from tdev_state.exceptions import (
    ForkPointError,
    RunActiveError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.lineage import Lineage
from tdev_state.log import get_logger
from tdev_state.models import AGENT_STEP, AGENTS, AgentStatus, Session, SessionStatus, from_epoch
from tdev_state.payloads import EncodedPayload, with_references
from tdev_state.runs.fork_steps import ForkWrite, earliest_moment
from tdev_state.runs.records import execution_context, session_context, session_from_item, session_reader
from tdev_state.runs.refs import checked_refs, is_ref_item, resolve
from tdev_state.runs.rules import AGENT_RETENTION_GRACE
from tdev_state.runs.writer import (
    TransitionWriter,
)
from tdev_state.storage import Item

log = get_logger(__name__)

#: The largest overrides accepted, as JSON text (they are stored on the child's session item).
MAX_OVERRIDES_BYTES = 16 * 1024


#: A fork refers to its parent's S3 objects, which the bucket expires `retention + PAYLOAD_GRACE_DAYS` after
#: their creation; the child's copied items expire `retention + AGENT_RETENTION_GRACE` after the fork. An
#: object older than the difference at the fork would go first: its age is restarted (`keep_alive`).
_SHARED_SAFE_AGE = timedelta(days=PAYLOAD_GRACE_DAYS) - AGENT_RETENTION_GRACE
#: How much older than the item referring to it a chunk may be (`ChunkNames` reuses a name for a day).
_CHUNK_REUSE = timedelta(days=1)


def checked_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """The overrides as a dict and as canonical JSON text (None when there are none: a replay).

    ValidationError unless they are a JSON object: a mapping of non-empty string keys to JSON values."""
    if overrides is None:
        return {}, None
    if not isinstance(overrides, Mapping):
        raise ValidationError(
            f"overrides must be a JSON object (a mapping of input keys to JSON values), got "
            f"{type(overrides).__name__}; e.g. {{'framework': 'vue'}}"
        )
    for key in overrides:
        if not isinstance(key, str) or not key or key.startswith("\x00"):
            raise ValidationError(f"override keys must be non-empty strings, got {key!r:.60}")
    try:
        text = json.dumps(dict(overrides), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"overrides must hold JSON values only: {exc}"[:300]) from None
    except RecursionError:  # a value nested thousands deep: the encoder's stack gives out, not a bug here
        raise ValidationError("overrides nest too deep to store as JSON; flatten the value") from None
    if len(text.encode("utf-8")) > MAX_OVERRIDES_BYTES:
        raise ValidationError(
            f"overrides are {len(text.encode('utf-8')):,} bytes of JSON, over the {MAX_OVERRIDES_BYTES:,} "
            "a fork may carry; put large values in the run's input instead"
        )
    return (dict(overrides), text) if overrides else ({}, None)


class ForkStore:
    """Forks and lineage of runs; the sessions store's `fork` and `lineage` call it."""

    def __init__(self, writer: TransitionWriter, clock: Callable[[], datetime]) -> None:
        self._writer = writer
        self._layer = writer.layer
        self._clock = clock

    def fork(
        self,
        id_or_ref: str,
        *,
        from_agent: str,
        overrides: Mapping[str, Any] | None = None,
        refs: Sequence[str] = (),
    ) -> Session:
        """Create the child run of `id_or_ref` from `from_agent` (see the module's docstring)."""
        point = check.agent(from_agent)
        merge, text = checked_overrides(overrides)
        wanted = checked_refs(refs)
        key = check.identifier("id_or_ref", id_or_ref, existing=True)
        parent_id = resolve(self._layer, key)
        parent = self._layer.get(self._layer.tables.sessions, {"session_id": parent_id})
        if parent is None or is_ref_item(parent):
            raise SessionNotFoundError(f"no pipeline run {key!r} in env {self._layer.config.env!r}")
        now = self._clock()
        self._require_stopped(parent_id, parent, now)
        items = {
            str(item.get("agent")): item
            for item in self._layer.query_all(
                self._layer.tables.executions,
                key_condition="execution_id = :id",
                values={":id": parent_id},
                consistent=True,
            )
        }
        tolerated = set(session_reader(parent).texts("failed_agents"))
        _require_reached(parent_id, point, items, tolerated)
        child = str(uuid.uuid4())
        step = ForkWrite(self, parent_id, parent, child, point, items, tolerated, merge, text, wanted, now)
        session = self._writer.apply(step)
        log.info(
            "session.forked",
            session_id=child,
            parent_id=parent_id,
            fork_point=point,
            replay=text is None,
            items=len(step.write().actions),
        )
        return session

    def lineage(self, id_or_ref: str) -> Lineage:
        """The run's parent, fork point and children (one read of the run; a ref costs one more)."""
        key = check.identifier("id_or_ref", id_or_ref, existing=True)
        run_id = resolve(self._layer, key)
        item = self._layer.get(self._layer.tables.sessions, {"session_id": run_id})
        if item is None or is_ref_item(item):
            raise SessionNotFoundError(f"no pipeline run {key!r} in env {self._layer.config.env!r}")
        session = session_from_item(item, self._layer, strict=False, metadata=None)
        return Lineage(
            run_id=run_id,
            parent_id=session.parent_id,
            fork_point=session.fork_point,
            replay=session.replay,
            children=session.children,
        )

    def keep_shared(self, parent: Item, copied: Sequence[Item], now: datetime) -> None:
        """Keep alive, for the child's life, the parent's S3 objects its copies refer to (see
        `_SHARED_SAFE_AGE`): only with a retention rule, and only items old enough to need it are looked at
        (a HEAD per object, a GET of each chunk to find those it nests, a copy in place of each old one)."""
        config = self._layer.config
        if not config.retention_days or not config.payload_bucket:
            return
        payloads = self._layer.payloads
        created_before = now - _SHARED_SAFE_AGE
        recent = now - _SHARED_SAFE_AGE + _CHUNK_REUSE
        refreshed = 0
        for item in [*copied, parent]:
            earliest = earliest_moment(item)
            if earliest is not None and from_epoch(earliest) >= recent:
                continue  # its objects are younger than the child needs: nothing to look at
            for name in ("input_data", "output_data", "metadata"):
                refreshed += payloads.keep_alive(item.get(name), created_before=created_before)
        if refreshed:
            log.info("session.fork_kept_shared", parent_id=parent.get("session_id"), objects=refreshed)

    def _require_stopped(self, parent_id: str, parent: Item, now: datetime) -> None:
        read = session_reader(parent)
        status = read.enum(SessionStatus, "status")
        if status is SessionStatus.ACTIVE:
            raise RunActiveError(
                f"run {parent_id!r} is ACTIVE: fork it once it has stopped (COMPLETED, FAILED or ABANDONED); "
                "nothing was written"
            )
        lease = read.moment("lease_expires_at", None)
        if lease is not None and lease > now:
            raise RunActiveError(
                f"run {parent_id!r} is held by worker {read.text('lease_owner', '?')} until "
                f"{lease:%H:%M:%S} (a resume under way): fork it once that ends; nothing was written"
            )

    # --- the pieces of the fork's transaction ---------------------------------------------------------

    def reencode(
        self,
        stored: Any,
        *,
        field: str,
        origin: tuple[str, str | None],
        target: tuple[str, str | None],
        merge: Mapping[str, Any],
        seal: bool,
    ) -> EncodedPayload:
        """A stored payload decoded under its `origin` (run, agent), merged with `merge` at the top level
        when given, and encoded for `target` — for what cannot be copied as stored (a sealed value is bound
        to its run; overrides make a new value)."""
        payloads = self._layer.payloads
        source = _context(*origin)
        value = payloads.decode(stored, field=field, context=source)
        if merge:
            if not isinstance(value, dict):
                raise ValidationError(
                    f"the stored {field} of {origin[1]} is a {type(value).__name__}, not a JSON object: "
                    "overrides merge into an object's top-level keys, so this agent cannot take them"
                )
            value = {**value, **merge}
        raw = with_references(value, field=field, encoders=self._layer.config.encoders)
        return self._writer.encode_json(
            raw,
            field=field,
            object_key=f"{target[0]}/{target[1]}" if target[1] else target[0],
            context=_context(*target),
            warnings=(),
            seal=seal,
        )


def _context(run: str, agent: str | None) -> Any:
    return execution_context(run, agent) if agent is not None else session_context(run)


def _require_reached(parent_id: str, point: str, items: Mapping[str, Item], tolerated: set[str]) -> None:
    """ForkPointError unless every agent before `point` is stored as finished: COMPLETED, or FAILED and
    tolerated (the same rule as the worker's before a resume)."""
    problems = []
    for agent in AGENTS[: AGENT_STEP[point] - 1]:
        item = items.get(agent)
        status = str(item.get("status")) if item is not None else None
        if status is None:
            problems.append(f"{agent} is missing (not run, expired or deleted)")
        elif status == AgentStatus.FAILED.value and agent not in tolerated:
            problems.append(f"{agent} FAILED and the run did not move past it")
        elif status not in (AgentStatus.COMPLETED.value, AgentStatus.FAILED.value):
            problems.append(f"{agent} is {status}, not finished")
    if problems:
        raise ForkPointError(
            f"run {parent_id!r} has not reached {point}: "
            + "; ".join(problems)[:600]
            + "; fork it from an agent every earlier agent of which finished. Nothing was written"
        )
