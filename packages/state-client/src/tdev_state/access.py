"""What each component may do in AWS: the declaration infra turns into one IAM policy per component.

The grants live next to the code that makes the calls and are checked against it: tests/unit/test_access.py
runs each component's flows under moto with every AWS call recorded, and fails if a call needs an action not
granted here or a grant here is never used. `infra/` renders each grant as one IAM statement scoped to a
table, an index, the payload prefix of the bucket or the state key — never `Resource: "*"`.

Actions are IAM actions, not API operations: TransactWriteItems has no IAM action of its own, it needs the
item-level action (PutItem, UpdateItem, ConditionCheckItem, DeleteItem) of each of its parts on each table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tdev_state.schema import AGENT_EXECUTIONS, PIPELINE_SESSIONS, USER_PROJECTS, TableSpec

ResourceKind = Literal["table", "index", "payloads", "key"]


@dataclass(frozen=True)
class Grant:
    """Actions on one resource."""

    resource: ResourceKind
    actions: frozenset[str]
    table: TableSpec | None = None
    index: str | None = None

    def __post_init__(self) -> None:
        if self.resource in ("table", "index") and self.table is None:
            raise ValueError(f"a {self.resource} grant needs its table")
        if self.resource == "index":
            assert self.table is not None
            self.table.index(self.index or "")  # KeyError for an index the schema does not declare
        if not self.actions or any("*" in a or ":" not in a for a in self.actions):
            raise ValueError(
                f"grant actions must be explicit service:Action names, got {sorted(self.actions)}"
            )

    @property
    def resource_id(self) -> str:
        """A stable name for the resource: `table:<logical>`, `index:<logical>/<index>`, `payloads`, `key`."""
        if self.resource == "table":
            assert self.table is not None
            return f"table:{self.table.logical_name}"
        if self.resource == "index":
            assert self.table is not None
            return f"index:{self.table.logical_name}/{self.index}"
        return self.resource


@dataclass(frozen=True)
class ComponentAccess:
    """Everything one component's code calls, as grants."""

    component: str
    grants: tuple[Grant, ...]
    description: str = ""

    def pairs(self) -> frozenset[tuple[str, str]]:
        """Every (action, resource_id) this component is granted."""
        return frozenset((action, g.resource_id) for g in self.grants for action in g.actions)


def _table(spec: TableSpec, *actions: str) -> Grant:
    return Grant("table", frozenset(f"dynamodb:{a}" for a in actions), table=spec)


def _index(spec: TableSpec, index: str, *actions: str) -> Grant:
    return Grant("index", frozenset(f"dynamodb:{a}" for a in actions), table=spec, index=index)


#: The pipeline's own process: sessions, agent executions (transactions with the session), user projects,
#: payloads offloaded to S3, sealed payload fields (KMS data keys; S3's SSE-KMS uses the same two actions).
PIPELINE_CLIENT = ComponentAccess(
    component="pipeline-client",
    description="The T-Developer pipeline process (tdev_state.StateClient / AsyncStateClient).",
    grants=(
        _table(PIPELINE_SESSIONS, "GetItem", "PutItem", "UpdateItem", "BatchGetItem"),
        _index(PIPELINE_SESSIONS, "by-user", "Query"),
        _index(PIPELINE_SESSIONS, "by-recovery", "Query"),
        # ConditionCheckItem: moving past a tolerated failure, and ending a run whose last agent failed,
        # check in the same transaction that the agent is FAILED (`runs.rules.transition_actions`).
        # PutItem: a fork (`sessions.fork`) Puts its copied agent items in the transaction that creates it.
        _table(AGENT_EXECUTIONS, "GetItem", "PutItem", "UpdateItem", "ConditionCheckItem", "Query"),
        _table(USER_PROJECTS, "GetItem", "UpdateItem", "DeleteItem"),
        _index(USER_PROJECTS, "by-last-accessed", "Query"),
        # DeleteObject: a refused call takes back the payload objects it created (PayloadStore.scope).
        Grant("payloads", frozenset({"s3:PutObject", "s3:GetObject", "s3:DeleteObject"})),
        # Sealing payload fields (GenerateDataKey, Decrypt) — the same two S3 needs for SSE-KMS objects.
        Grant("key", frozenset({"kms:GenerateDataKey", "kms:Decrypt"})),
    ),
)
