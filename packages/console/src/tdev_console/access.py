"""The console's AWS access, declared next to its code (see `tdev_state.access`).

Read-only (the default) needs read actions only: the sessions table and its three indexes (by-day for the
runs of a day, by-user for a user's runs, by-recovery for the backlog), a run's agents, the metrics table
(agent metrics and usage), offloaded payloads, and kms:Decrypt to open sealed ones — a console without that
grant shows them as sealed. These are the read grants of the pipeline's policy, plus the by-day index (the
pipeline never lists runs by day) and a Query on the metrics table (which `tdev-metrics report` reads too).

With `--allow-actions`, Resume now and Abandon take claims like a recovery worker: give the console the
worker's grants (`tdev_recovery.access.RECOVERY_WORKER`) as well. Rerun from here also creates a run
(`sessions.fork`: one transaction on the sessions and agent-executions tables, S3 and KMS when the fork
point's input is re-encoded): give it the pipeline's grants (`tdev_state.access.PIPELINE_CLIENT`) too.
"""

from __future__ import annotations

from tdev_state.access import ComponentAccess, Grant
from tdev_state.schema import AGENT_EXECUTIONS, METRICS, PIPELINE_SESSIONS

#: Actions a read-only console may need; anything else in its declaration is a mistake.
READ_ACTIONS = frozenset(
    {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "s3:GetObject", "kms:Decrypt"}
)

CONSOLE_READER = ComponentAccess(
    component="console",
    description="`tdev console` without --allow-actions: every page, read-only.",
    grants=(
        Grant("table", frozenset({"dynamodb:GetItem", "dynamodb:BatchGetItem"}), table=PIPELINE_SESSIONS),
        Grant("index", frozenset({"dynamodb:Query"}), table=PIPELINE_SESSIONS, index="by-day"),
        Grant("index", frozenset({"dynamodb:Query"}), table=PIPELINE_SESSIONS, index="by-user"),
        Grant("index", frozenset({"dynamodb:Query"}), table=PIPELINE_SESSIONS, index="by-recovery"),
        Grant("table", frozenset({"dynamodb:GetItem", "dynamodb:Query"}), table=AGENT_EXECUTIONS),
        Grant("table", frozenset({"dynamodb:Query"}), table=METRICS),
        Grant("payloads", frozenset({"s3:GetObject"})),
        Grant("key", frozenset({"kms:Decrypt"})),
    ),
)
