"""The recovery worker's AWS access, declared next to its code (see `tdev_state.access`).

The worker reads the recovery index, claims runs on the sessions table (conditional UpdateItem with a
fencing token), lists a run's agents (reading offloaded outputs from the payload bucket, opening sealed ones:
kms:Decrypt) and marks a stalled agent failed under its claim (a fenced transaction on both tables). It
counts the resumes and abandoned runs it causes into the metrics table's usage items (tdev_metrics.usage),
and folds each past day's run and agent counts from the tables into one usage item (usage_tables).
Resuming is the pipeline's job: a resumer that runs the pipeline in the worker's process also needs the
pipeline client's policy.
"""

from __future__ import annotations

from tdev_state.access import ComponentAccess, Grant
from tdev_state.schema import AGENT_EXECUTIONS, METRICS, PIPELINE_SESSIONS

RECOVERY_WORKER = ComponentAccess(
    component="recovery-worker",
    description="tdev-recovery-worker replicas (sweeps, claims, /readyz).",
    grants=(
        Grant(
            "table",
            frozenset(
                {
                    "dynamodb:UpdateItem",
                    "dynamodb:GetItem",
                    "dynamodb:BatchGetItem",
                    "dynamodb:DescribeTable",
                }
            ),
            table=PIPELINE_SESSIONS,
        ),
        Grant("index", frozenset({"dynamodb:Query"}), table=PIPELINE_SESSIONS, index="by-recovery"),
        # The usage fold (tdev_metrics.usage_tables): a past day's runs from the by-day index (their
        # sessions with the BatchGetItem above, their agents with the Query below).
        Grant("index", frozenset({"dynamodb:Query"}), table=PIPELINE_SESSIONS, index="by-day"),
        Grant("table", frozenset({"dynamodb:Query", "dynamodb:UpdateItem"}), table=AGENT_EXECUTIONS),
        # A run's completed outputs go to the resumer: offloaded ones read from the bucket, sealed ones
        # opened. It never writes payloads and never seals: no PutObject, no GenerateDataKey.
        Grant("payloads", frozenset({"s3:GetObject"})),
        Grant("key", frozenset({"kms:Decrypt"})),
        # Usage counting (resumes, abandoned runs) through the worker's metrics collector: its usage items
        # only (exactly-once UpdateItem); the run's type is read with one GetItem above.
        # The usage fold reads a day's fold item (GetItem) and its agent_execution_time items (Query),
        # and writes the fold (UpdateItem, conditioned on it not being closed).
        Grant(
            "table", frozenset({"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:Query"}), table=METRICS
        ),
    ),
)
