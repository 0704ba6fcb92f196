"""The payload codec: any JSON value round-trips through DynamoDB and S3, never truncated."""

from __future__ import annotations

import json
import math
import random
import zlib

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdev_state import PayloadIntegrityError, PayloadTooLargeError, StateClient, ValidationError, _codec

from ..payloads import generated_project
from .conftest import BUCKET, FakeClock, make_client

CTX = _codec.PayloadContext("agent-executions", "s", "parser")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(), children, max_size=6),
    max_leaves=40,
)


@pytest.fixture
def tiny_thresholds(aws: None, clock: FakeClock) -> StateClient:
    """Thresholds small enough that hypothesis' values hit all three stored forms."""
    return make_client(clock, compress_threshold=64, offload_threshold=256)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(value=json_values, padding=st.integers(min_value=0, max_value=4000))
def test_any_json_value_round_trips(tiny_thresholds: StateClient, value: object, padding: int) -> None:
    """encode/decode returns an equal value for any JSON value and size, inline, zlib or in S3."""
    payload = {"v": value, "pad": "ab" * padding}
    layer = tiny_thresholds.layer
    encoded = _codec.encode(payload, field="output_data", object_key="s/a", context=CTX, layer=layer)
    decoded = _codec.decode(encoded.value, field="output_data", context=CTX, layer=layer)
    assert json.dumps(decoded, sort_keys=True) == json.dumps(payload, sort_keys=True)


def test_each_form_is_used(tiny_thresholds: StateClient) -> None:
    """Small JSON stays text, compressible JSON is zlib, large JSON goes to S3."""
    layer = tiny_thresholds.layer
    forms = {
        _codec.encode(v, field="f", object_key="k", context=CTX, layer=layer).form
        for v in ({"a": 1}, {"t": "abc" * 40}, {"t": random.Random(1).randbytes(2000).hex()})
    }
    assert forms == {"json", "zlib", "s3"}


def test_floats_round_trip_exactly(client: StateClient) -> None:
    """Floats come back as the same float, bit for bit."""
    values = [0.1, 1e-300, 2.0**53 + 1, -0.0, math.pi, 1.7976931348623157e308]
    sid = client.sessions.create(user_id="u", project_name="p", metadata=values).session_id
    assert client.sessions.get(sid).metadata == values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"x": float("-inf")}])
def test_nan_and_infinity_are_refused(client: StateClient, bad: object) -> None:
    """NaN/Infinity raise ValidationError naming the field."""
    with pytest.raises(ValidationError, match="input_data contains NaN"):
        _codec.encode(bad, field="input_data", object_key="k", context=CTX, layer=client.layer)


def test_non_json_values_are_refused(client: StateClient) -> None:
    """A set or object is a ValidationError saying what to send instead."""
    with pytest.raises(ValidationError, match="not JSON-serializable"):
        _codec.encode({"s": {1, 2}}, field="input_data", object_key="k", context=CTX, layer=client.layer)


def test_too_large_without_bucket_raises_and_writes_nothing(aws: None, clock: FakeClock) -> None:
    """With no bucket, a payload over the item budget is PayloadTooLargeError and nothing is written."""
    client = make_client(clock, payload_bucket=None)
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    incompressible = random.Random(2).randbytes(300_000).hex()  # 600 KB that zlib only halves
    with pytest.raises(PayloadTooLargeError, match="TDEV_PAYLOAD_BUCKET"):
        client.executions.start(sid, "nl_input", input_data={"blob": incompressible})
    assert client.executions.list(sid) == []
    assert client.sessions.get(sid).version == 1


def test_megabyte_payload_goes_to_s3_and_back(client: StateClient) -> None:
    """1 MB of generated source is stored in S3 and read back identical."""
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    source = generated_project(1_000_000)
    assert len(json.dumps(source)) > 990_000
    client.executions.start(sid, "nl_input", input_data=source)
    assert client.executions.get(sid, "nl_input").input_data == source
    assert client.layer.meter.s3_puts == 1


def test_tampered_s3_payload_is_detected(client: StateClient) -> None:
    """Changing an offloaded object makes reads fail with PayloadIntegrityError, never garbage."""
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    big = {"t": random.Random(3).randbytes(20_000).hex()}
    client.executions.start(sid, "nl_input", input_data=big)
    s3 = boto3.client("s3", region_name="us-east-1")
    key = s3.list_objects_v2(Bucket=BUCKET)["Contents"][0]["Key"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"\x01" + zlib.compress(b'{"t":"forged"}'))
    with pytest.raises(PayloadIntegrityError, match="SHA-256"):
        client.executions.get(sid, "nl_input")
