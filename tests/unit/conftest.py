"""Unit fixtures: moto's in-process AWS, fresh per test; a client with a controllable clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

import tdev_state
from tdev_state import StateClient, StateConfig

BUCKET = "tdev-unit-payloads"


class FakeClock:
    """A clock tests move by hand (recovery thresholds, ordering by time)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)  # every reading is distinct, like a real clock
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@contextmanager
def moto_aws() -> Iterator[None]:
    """moto's AWS with fake credentials and no endpoint override, whatever the shell exported."""
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(key, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with mock_aws():
            yield


@pytest.fixture
def aws() -> Iterator[None]:
    with moto_aws():
        yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_client(clock: FakeClock, **config: object) -> StateClient:
    """A client on moto with tables (and, unless payload_bucket=None, a payload bucket)."""
    settings: dict[str, object] = {"env": "unit", "payload_bucket": BUCKET, **config}
    if settings["payload_bucket"]:
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=str(settings["payload_bucket"]))
    client = StateClient(StateConfig(**settings), clock=clock)  # type: ignore[arg-type]
    client.create_tables()
    return client


@pytest.fixture
def client(aws: None, clock: FakeClock) -> StateClient:
    return make_client(clock)


@pytest.fixture
def plan(client: StateClient) -> Iterator[StateClient]:
    """The plan's dict calls bound to the moto client (and unbound afterwards)."""
    tdev_state.configure(client)
    yield client
    tdev_state.configure(None)
