"""IAM policy documents from the components' declared grants — pure Python, so tests can render them too.

One statement per grant, scoped to the exact table, index, payload prefix or key ARN. The synthesized stack
passes Terraform references as ARNs; the IAM-enforcement tests pass concrete ARNs of their moto account.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tdev_metrics.access import METRICS_COLLECTOR
from tdev_recovery.access import RECOVERY_WORKER
from tdev_state.access import PIPELINE_CLIENT, ComponentAccess, Grant
from tdev_state.schema import TableSpec

#: One IAM policy (and optional task role) per component, each from the grants declared in its package.
COMPONENTS: tuple[ComponentAccess, ...] = (PIPELINE_CLIENT, RECOVERY_WORKER, METRICS_COLLECTOR)


def construct_id(spec: TableSpec) -> str:
    """The Terraform resource name of a table: `table_pipeline_sessions` for pipeline-sessions."""
    return "table_" + spec.logical_name.replace("-", "_")


@dataclass(frozen=True)
class ResourceArns:
    """How to name each kind of resource: table ARN, payload objects' ARN pattern, key ARN."""

    table: Callable[[TableSpec], str]
    payload_objects: str
    key: str


def _sid(component: str, grant: Grant) -> str:
    words = [component, grant.resource_id]
    return "".join(
        part.capitalize() for w in words for part in w.replace(":", "-").replace("/", "-").split("-")
    )


def grant_resources(grant: Grant, arns: ResourceArns) -> list[str]:
    """The ARNs one grant covers."""
    if grant.resource == "table":
        assert grant.table is not None
        return [arns.table(grant.table)]
    if grant.resource == "index":
        assert grant.table is not None
        return [f"{arns.table(grant.table)}/index/{grant.index}"]
    if grant.resource == "stream":  # the table's stream ARNs: a new label each time it is re-enabled
        assert grant.table is not None
        return [f"{arns.table(grant.table)}/stream/*"]
    if grant.resource == "payloads":
        return [arns.payload_objects]
    return [arns.key]


def policy_document(access: ComponentAccess, arns: ResourceArns) -> dict[str, Any]:
    """The IAM policy (JSON-ready dict) that allows exactly `access`."""
    statements: list[dict[str, Any]] = []
    for grant in access.grants:
        statement: dict[str, Any] = {
            "Sid": _sid(access.component, grant),
            "Effect": "Allow",
            "Action": sorted(grant.actions),
            "Resource": grant_resources(grant, arns),
        }
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}
