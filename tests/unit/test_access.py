"""Each component's declared IAM grants equal what its code calls: nothing missing, nothing unused.

The declarations (`tdev_state.access`, `tdev_recovery.access`, `tdev_metrics.access`) are what infra renders
into IAM policies; this is what keeps them honest as the code changes.
"""

from __future__ import annotations

import boto3
import pytest

from tdev_metrics.access import METRICS_COLLECTOR
from tdev_recovery.access import RECOVERY_WORKER
from tdev_state import StateClient
from tdev_state.access import PIPELINE_CLIENT, ComponentAccess
from tdev_state.testing import BUCKET, FakeClock, make_client

from ..aws_calls import CallRecorder
from ..flows import FLOWS, Flow

DECLARED: dict[str, ComponentAccess] = {
    a.component: a for a in (PIPELINE_CLIENT, RECOVERY_WORKER, METRICS_COLLECTOR)
}


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.component)
async def test_declared_grants_are_exactly_what_the_code_calls(
    aws: None, clock: FakeClock, flow: Flow
) -> None:
    """The pipeline flow runs with sealed fields (so KMS is used as in production)."""
    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    client = make_client(clock, kms_key_id=key, encrypt_fields={"output_data", "metadata"})
    await flow.setup(client, clock)
    # The component is another process than the one that set the scene: its own client, empty key cache.
    actor = StateClient(client.config, clock=clock)
    recorder = CallRecorder(client.config.env, BUCKET)
    with recorder.recording():
        await flow.act(actor, clock)
    declared = DECLARED[flow.component].pairs()
    missing = recorder.pairs - declared
    unused = declared - recorder.pairs
    assert not missing, f"{flow.component} calls actions its grants lack: {sorted(missing)}"
    assert not unused, f"{flow.component} is granted actions its flow never calls: {sorted(unused)}"
    # S3 calls KMS on the caller's behalf for the bucket's SSE-KMS: those actions must be granted too.
    assert recorder.implied <= declared, f"{flow.component}: SSE-KMS needs {sorted(recorder.implied)}"
