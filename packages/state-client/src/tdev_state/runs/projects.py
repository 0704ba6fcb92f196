"""User projects: save/update, get, list by last access, record a download, delete."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from tdev_state import validate as check
from tdev_state.exceptions import MalformedItemError, ProjectNotFoundError
from tdev_state.layer import DynamoLayer
from tdev_state.log import get_logger
from tdev_state.models import Page, UserProject, epoch, from_epoch
from tdev_state.runs.items import readable
from tdev_state.runs.records import project_from_item
from tdev_state.storage import Expr, TransactionCancelled
from tdev_state.usage import UsageEvent

log = get_logger(__name__)


class ProjectStore:
    """Projects in `t-developer-{env}-user-projects`, listed through the by-last-accessed LSI."""

    def __init__(self, layer: DynamoLayer, clock: Callable[[], datetime]) -> None:
        self._layer = layer
        self._table = layer.tables.projects
        self._clock = clock

    def save(
        self,
        *,
        user_id: str,
        project_id: str,
        project_name: str,
        description: str | None = None,
        tech_stack: Sequence[str] | None = None,
        file_path: str | None = None,
        size_mb: float | None = None,
    ) -> UserProject:
        """Create or update a project; fields left None keep their stored value (empty when new).

        Keeps download_count and created_at; touches last_accessed. One UpdateItem, so saving twice (a
        retry) leaves the same item, not two.
        """
        user = check.identifier("user_id", user_id)
        project = check.identifier("project_id", project_id)
        values: dict[str, Any] = {
            ":name": check.text("project_name", project_name, allow_empty=False, max_chars=256),
            ":now": epoch(self._clock()),
            ":zero": 0,
        }
        sets = ["project_name = :name", "last_accessed = :now"]
        if description is None:
            sets.append("description = if_not_exists(description, :empty)")
            values[":empty"] = ""
        else:
            sets.append("description = :desc")
            values[":desc"] = check.text("description", description)
        if tech_stack is None:
            sets.append("tech_stack = if_not_exists(tech_stack, :nostack)")
            values[":nostack"] = []
        else:
            sets.append("tech_stack = :stack")
            values[":stack"] = check.string_list("tech_stack", tech_stack)
        sets += [
            "created_at = if_not_exists(created_at, :now)",
            "download_count = if_not_exists(download_count, :zero)",
        ]
        if file_path is not None:
            sets.append("file_path = :path")
            values[":path"] = check.text("file_path", file_path, allow_empty=False, max_chars=1024)
        if size_mb is not None:
            sets.append("size_mb = :size")
            values[":size"] = check.number("size_mb", size_mb)
        item = self._layer.update(
            self._table,
            {"user_id": user, "project_id": project},
            update="SET " + ", ".join(sets),
            values=values,
            return_values="ALL_NEW",
        )
        assert item is not None
        log.info("project.saved", user_id=user, project_id=project)
        usage = self._layer.usage
        if usage.on and item.get("created_at") == values[":now"]:  # created by this call
            moment = from_epoch(values[":now"])
            stack = tuple(str(t) for t in item.get("tech_stack") or ())
            usage.emit(UsageEvent("project_saved", moment, user_id=user, tech_stack=stack))
            usage.emit(UsageEvent("user_active", moment, user_id=user))
        return project_from_item(item)

    def get(self, user_id: str, project_id: str) -> UserProject:
        """The project, or ProjectNotFoundError."""
        key = self._key(user_id, project_id)
        item = self._layer.get(self._table, key)
        if item is None:
            raise ProjectNotFoundError(f"user {key['user_id']!r} has no project {key['project_id']!r}")
        return project_from_item(item)

    def list_for_user(self, user_id: str, *, limit: int = 20, cursor: str | None = None) -> Page[UserProject]:
        """A user's projects, most recently accessed first, a page at a time."""
        user = check.identifier("user_id", user_id, existing=True)
        page = self._layer.query(
            self._table,
            index="by-last-accessed",
            key_condition="user_id = :u",
            values={":u": user},
            forward=False,
            limit=check.limit(limit),
            start_key=check.decode_cursor(
                cursor, expected_keys=("user_id", "project_id", "last_accessed"), expect={"user_id": user}
            ),
            consistent=True,
        )
        skipped: list[MalformedItemError] = []
        projects = readable(page.items, project_from_item, skipped=skipped)
        return Page(items=projects, next_cursor=check.encode_cursor(page.last_key), skipped=tuple(skipped))

    def record_download(self, user_id: str, project_id: str) -> UserProject:
        """Count one download (atomic ADD) and touch last_accessed — exactly once.

        The write is a one-action TransactWriteItems with a ClientRequestToken fixed for this call, so
        botocore's retry after a timeout is a no-op at DynamoDB even when another download landed in
        between (a token stored on the item would be overwritten by that download and the retry counted
        again). It costs 2 write units instead of 1 and a read; downloads are rare next to agent writes.
        """
        key = self._key(user_id, project_id)
        expr = Expr().require_exists("project_id")
        expr.increment("download_count").set("last_accessed", epoch(self._clock()))
        try:
            self._layer.transact_write([expr.action(self._table, key)], token=str(uuid.uuid4()))
        except TransactionCancelled:
            raise ProjectNotFoundError(
                f"user {key['user_id']!r} has no project {key['project_id']!r}; save it first"
            ) from None
        self._layer.usage.emit(UsageEvent("project_downloaded", self._clock(), user_id=key["user_id"]))
        return self.get(key["user_id"], key["project_id"])

    def delete(self, user_id: str, project_id: str) -> bool:
        """Delete a project; True if it existed. Unconditional, so a retried delete is harmless."""
        removed = self._layer.delete(self._table, self._key(user_id, project_id))
        return removed is not None

    @staticmethod
    def _key(user_id: str, project_id: str) -> dict[str, str]:
        return {
            "user_id": check.identifier("user_id", user_id),
            "project_id": check.identifier("project_id", project_id),
        }
