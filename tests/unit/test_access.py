"""Each component's declared IAM grants equal what its code calls: nothing missing, nothing unused.

The declarations (`tdev_state.access`, `tdev_recovery.access`, `tdev_metrics.access`) are what infra renders
into IAM policies; this is what keeps them honest as the code changes.
"""

from __future__ import annotations

import pytest

from tdev_metrics.access import METRICS_COLLECTOR
from tdev_recovery.access import RECOVERY_WORKER
from tdev_state import StateClient
from tdev_state.access import PIPELINE_CLIENT, ComponentAccess

from ..aws_calls import CallRecorder
from ..flows import FLOWS, Flow
from .conftest import BUCKET, FakeClock

DECLARED: dict[str, ComponentAccess] = {
    a.component: a for a in (PIPELINE_CLIENT, RECOVERY_WORKER, METRICS_COLLECTOR)
}


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.component)
async def test_declared_grants_are_exactly_what_the_code_calls(
    client: StateClient, clock: FakeClock, flow: Flow
) -> None:
    await flow.setup(client, clock)
    recorder = CallRecorder(client.config.env, BUCKET)
    with recorder.recording():
        await flow.act(client, clock)
    declared = DECLARED[flow.component]
    direct = declared.pairs(include_via=False)
    via = declared.pairs() - direct
    missing = recorder.pairs - direct
    unused = direct - recorder.pairs
    assert not missing, f"{flow.component} calls actions its grants lack: {sorted(missing)}"
    assert not unused, f"{flow.component} is granted actions its flow never calls: {sorted(unused)}"
    assert via == recorder.implied, (
        f"{flow.component}: grants used on its behalf by S3 (SSE-KMS) {sorted(via)} "
        f"differ from what its S3 calls imply {sorted(recorder.implied)}"
    )
