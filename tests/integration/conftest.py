"""Integration fixtures: a real endpoint, a unique table prefix per run, and cleanup afterwards.

By default the endpoint is the LocalStack that `make test` starts (`AWS_ENDPOINT_URL`, default
http://127.0.0.1:4566). With `TDEV_TARGET=aws` the same tests run against the AWS account of the ambient
credentials: tables `t-developer-t<random>-*` and a bucket of the same prefix are created, and deleted at
the end of the run, whatever the outcome.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tdev_state import StateClient, StateConfig
from tdev_state.tables import delete_tables
from tdev_state.testing import empty_and_delete_bucket

from .endpoints import extra_localstack, raw_client

DEFAULT_ENDPOINT = "http://127.0.0.1:4566"


def _endpoint() -> str | None:
    if os.environ.get("TDEV_TARGET") == "aws":
        return None
    return os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT


@pytest.fixture(scope="session")
def run_env() -> str:
    """A table prefix unique to this test run, so runs never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def base_config(run_env: str) -> StateConfig:
    endpoint = _endpoint()
    if endpoint and not os.environ.get("AWS_ACCESS_KEY_ID"):
        # LocalStack accepts any credentials; never let a developer's real ones sign these requests.
        os.environ["AWS_ACCESS_KEY_ID"] = "test"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "test"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return StateConfig(
        env=run_env, region=region, endpoint_url=endpoint, payload_bucket=f"tdev-{run_env}-payloads"
    )


@pytest.fixture(scope="session")
def client(base_config: StateConfig) -> Iterator[StateClient]:
    """One client and one set of tables for the run (tests use unique session ids inside them)."""
    client = StateClient(base_config)
    s3 = raw_client("s3", base_config)
    bucket = base_config.payload_bucket
    assert bucket
    if base_config.region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(
            Bucket=bucket,
            CreateBucketConfiguration={"LocationConstraint": base_config.region},  # type: ignore[typeddict-item]
        )
    try:
        # Without the schema's streams: no test of these tables reads one, and LocalStack spends about
        # 20 ms more per transaction on a table with a stream (docs/benchmarks.md); `streamed_client` has
        # them.
        client.create_tables(streams=False)
        yield client
    finally:
        delete_tables(client.layer)
        empty_and_delete_bucket(s3, bucket)


@pytest.fixture(scope="session")
def streamed_client(client: StateClient) -> Iterator[StateClient]:
    """The run's bucket and a second set of tables, with the streams the schema declares (as infra makes
    them): for the tests of what reads the sessions stream."""
    from dataclasses import replace

    streamed = StateClient(replace(client.config, env=f"{client.config.env}s"))
    try:
        streamed.create_tables()
        yield streamed
    finally:
        delete_tables(streamed.layer)


@pytest.fixture
def fresh_client(client: StateClient) -> StateClient:
    """A client on the run's tables with its own capacity meter and clients (for fault hooks)."""
    return StateClient(client.config)


@pytest.fixture(scope="session")
def throttling_config(base_config: StateConfig) -> Iterator[StateConfig]:
    """A second LocalStack (on a free port) with DYNAMODB_ERROR_PROBABILITY=0.3, with its own tables.

    Only meaningful against LocalStack: against AWS, faults cannot be ordered up, so the test using this
    fixture reports itself skipped with that reason.
    """
    if base_config.endpoint_url is None:
        pytest.skip("DYNAMODB_ERROR_PROBABILITY is a LocalStack feature; not available against AWS")
    from dataclasses import replace

    with extra_localstack("localstack-faulty", DYNAMODB_ERROR_PROBABILITY="0.3") as faulty:
        config = replace(base_config, endpoint_url=faulty.endpoint)
        StateClient(config).create_tables(streams=False)
        yield config
