"""Unit fixtures: moto's in-process AWS, fresh per test; a client with a controllable clock.

The doubles themselves (FakeClock, moto_aws, make_client, BUCKET) ship in `tdev_state.testing`; tests
import them from there, and these fixtures only put them together per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import tdev_state
from tdev_state import AsyncStateClient, StateClient, deferred_writes
from tdev_state.testing import FakeClock, make_client, moto_aws


@pytest.fixture
def aws() -> Iterator[None]:
    with moto_aws():
        yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(aws: None, clock: FakeClock) -> StateClient:
    return make_client(clock)


@pytest.fixture
def plan(client: StateClient) -> Iterator[StateClient]:
    """The plan's dict calls bound to the moto client (and unbound afterwards)."""
    tdev_state.configure(client)
    yield client
    tdev_state.configure(None)


@pytest.fixture
async def aclient(client: StateClient) -> AsyncIterator[AsyncStateClient]:
    """The async client over the moto client, its deferred-write drainer closed afterwards (a test that
    needs another DeferPolicy overrides this fixture in its module)."""
    async with AsyncStateClient(client) as a:
        yield a
        deferred_writes(a).close()
