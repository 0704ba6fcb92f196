"""Usage counting against LocalStack (or AWS): a mix of runs, every number of the report checked against
raw boto3 ground truth, with timeouts injected after the usage writes were applied (no double count)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tdev_metrics import MetricsCollector
from tdev_metrics.usage import RELATIVE_ERROR
from tdev_metrics.usage_reader import UsageReader
from tdev_state import StateClient, StateConfig
from tdev_state.tables import delete_tables

from ..faults import timeout_after_success
from ..usage_mix import assert_report_matches, drive_mix, ground_truth
from .endpoints import raw_client


@pytest.fixture
def usage_client(base_config: StateConfig) -> Iterator[StateClient]:
    """Tables of its own: usage items are per day and env, so no other test's runs may land in them."""
    client = StateClient(replace(base_config, env=f"{base_config.env}u", payload_bucket=None))
    client.create_tables(streams=False)
    try:
        yield client
    finally:
        delete_tables(client.layer)


def test_usage_report_equals_ground_truth_under_write_timeouts(usage_client: StateClient) -> None:
    """Completed, retried, tolerated, failed-then-recovered, abandoned and in-flight runs, projects and
    downloads, three users and runs without one; the first two usage writes time out after DynamoDB
    applied them, and their retries are recognised, not counted again."""
    collector = MetricsCollector(usage_client, start=False)
    first = drive_mix(usage_client, "it1")
    assert collector.flush()  # finished runs and projects are written; the in-flight one is held
    second = drive_mix(usage_client, "it2")
    with timeout_after_success(usage_client.layer.dynamodb, "UpdateItem", times=2) as injected:
        assert collector.close()
    assert injected["injected"] == 2
    assert collector.usage_buffer.duplicates_ignored == 2
    today = datetime.now(UTC).date()
    report = UsageReader(usage_client).report(today, today)
    scope = {k: first[k] + second[k] for k in first}
    truth = ground_truth(raw_client("dynamodb", usage_client.config), usage_client, scope)
    assert_report_matches(report, truth, RELATIVE_ERROR)
    assert report["runs"]["started"] == 12
    assert report["active_users"]["total_distinct"] == 6
