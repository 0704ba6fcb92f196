"""What an operator is paged for and looks at first, per environment: the alarms topic (KMS-encrypted),
throttling and system-error alarms per table, the recovery-backlog alarm, and the dashboard."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tdev_infra import _cdktf as tf
from tdev_infra.policies import construct_id
from tdev_infra.settings import RECOVERY_NAMESPACE
from tdev_state.schema import ALL_TABLES

if TYPE_CHECKING:
    from tdev_infra.stack import StateStack

#: DynamoDB reports SystemErrors per operation; these are the operations the components call.
SYSTEM_ERROR_OPERATIONS = (
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "BatchGetItem",
    "TransactWriteItems",
)


def add_alarms(stack: StateStack) -> tf.SnsTopic:
    """The alarms topic, one throttling and one system-error alarm per table, the backlog alarm and the
    dashboard: what an operator is paged for and looks at first."""
    s = stack.settings
    topic = tf.SnsTopic(stack, "alarms", name=f"{s.stack_name}-alarms", kms_master_key_id=stack.key.arn)
    notify = [topic.arn]
    for spec in ALL_TABLES:
        table = spec.physical_name(s.env)
        tid = construct_id(spec)
        tf.CloudwatchMetricAlarm(
            stack,
            f"{tid}_throttles",
            alarm_name=f"{table}-throttled-requests",
            alarm_description=f"Requests to {table} throttled: the client retries; callers see latency.",
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            treat_missing_data="notBreaching",
            metric_query=[
                _metric("m1", "AWS/DynamoDB", "ReadThrottleEvents", {"TableName": table}, "Sum"),
                _metric("m2", "AWS/DynamoDB", "WriteThrottleEvents", {"TableName": table}, "Sum"),
                tf.CloudwatchMetricAlarmMetricQuery(id="throttles", expression="m1 + m2", return_data=True),
            ],
            alarm_actions=notify,
            ok_actions=notify,
        )
        errors = [
            _metric(f"e{i}", "AWS/DynamoDB", "SystemErrors", {"TableName": table, "Operation": op}, "Sum")
            for i, op in enumerate(SYSTEM_ERROR_OPERATIONS)
        ]
        tf.CloudwatchMetricAlarm(
            stack,
            f"{tid}_system_errors",
            alarm_name=f"{table}-system-errors",
            alarm_description=f"DynamoDB answered 5xx to calls on {table}.",
            comparison_operator="GreaterThanThreshold",
            threshold=0,
            evaluation_periods=1,
            treat_missing_data="notBreaching",
            metric_query=[
                *errors,
                tf.CloudwatchMetricAlarmMetricQuery(
                    id="errors",
                    expression=" + ".join(f"FILL(e{i}, 0)" for i in range(len(errors))),
                    return_data=True,
                ),
            ],
            alarm_actions=notify,
            ok_actions=notify,
        )
        if s.provisioned:
            for mode in ("Read", "Write"):
                tf.CloudwatchMetricAlarm(
                    stack,
                    f"{tid}_{mode.lower()}_capacity",
                    alarm_name=f"{table}-{mode.lower()}-capacity",
                    alarm_description=(
                        f"Consumed {mode.lower()} units above 90 % of provisioned on {table} for 15 "
                        "minutes: autoscaling is at its maximum or too slow."
                    ),
                    comparison_operator="GreaterThanThreshold",
                    threshold=90,
                    evaluation_periods=3,
                    treat_missing_data="notBreaching",
                    metric_query=[
                        _metric(
                            "c",
                            "AWS/DynamoDB",
                            f"Consumed{mode}CapacityUnits",
                            {"TableName": table},
                            "Sum",
                        ),
                        _metric(
                            "p",
                            "AWS/DynamoDB",
                            f"Provisioned{mode}CapacityUnits",
                            {"TableName": table},
                            "Average",
                        ),
                        tf.CloudwatchMetricAlarmMetricQuery(
                            id="utilization", expression="100 * (c / 300) / p", return_data=True
                        ),
                    ],
                    alarm_actions=notify,
                    ok_actions=notify,
                )
    tf.CloudwatchMetricAlarm(
        stack,
        "recovery_backlog",
        alarm_name=f"{s.stack_name}-recovery-backlog",
        alarm_description=(
            "Failed or stalled runs waiting for the recovery worker (RecoveryBacklog, written by "
            "tdev-recovery-worker --cloudwatch-namespace). Missing data = no replica reporting."
        ),
        namespace=RECOVERY_NAMESPACE,
        metric_name="RecoveryBacklog",
        dimensions={"Environment": s.env},
        statistic="Maximum",
        period=300,
        evaluation_periods=3,
        threshold=s.backlog_threshold,
        comparison_operator="GreaterThanThreshold",
        treat_missing_data=s.backlog_missing_data,
        alarm_actions=notify,
        ok_actions=notify,
    )
    tf.CloudwatchDashboard(stack, "dashboard", dashboard_name=s.stack_name, dashboard_body=_dashboard(stack))
    return topic


def _dashboard(stack: StateStack) -> str:
    s = stack.settings
    names = [spec.physical_name(s.env) for spec in ALL_TABLES]

    def widget(title: str, metrics: list[list[Any]], stat: str = "Sum") -> dict[str, Any]:
        return {
            "type": "metric",
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": s.region,
                "stat": stat,
                "period": 60,
                "metrics": metrics,
            },
        }

    def per_table(metric: str) -> list[list[Any]]:
        return [["AWS/DynamoDB", metric, "TableName", n] for n in names]

    widgets = [
        widget("Throttled reads", per_table("ReadThrottleEvents")),
        widget("Throttled writes", per_table("WriteThrottleEvents")),
        widget(
            "System errors (TransactWriteItems, UpdateItem)",
            [
                ["AWS/DynamoDB", "SystemErrors", "TableName", n, "Operation", op]
                for n in names
                for op in ("TransactWriteItems", "UpdateItem")
            ],
        ),
        widget("Consumed write units", per_table("ConsumedWriteCapacityUnits")),
        widget("Consumed read units", per_table("ConsumedReadCapacityUnits")),
        widget(
            "Recovery backlog",
            [[RECOVERY_NAMESPACE, "RecoveryBacklog", "Environment", s.env]],
            stat="Maximum",
        ),
    ]
    return json.dumps({"widgets": widgets})


def _metric(
    qid: str, namespace: str, name: str, dimensions: dict[str, str], stat: str
) -> tf.CloudwatchMetricAlarmMetricQuery:
    return tf.CloudwatchMetricAlarmMetricQuery(
        id=qid,
        metric=tf.CloudwatchMetricAlarmMetricQueryMetric(
            namespace=namespace, metric_name=name, dimensions=dimensions, stat=stat, period=300
        ),
    )
