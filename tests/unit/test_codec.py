"""The payload codec: any JSON value round-trips through DynamoDB and S3, never truncated."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import random
import threading
import zlib

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdev_state import (
    AGENTS,
    PayloadIntegrityError,
    PayloadTooLargeError,
    StateClient,
    ValidationError,
)
from tdev_state.payloads import PayloadContext
from tdev_state.testing import BUCKET, FakeClock, generated_project, make_client

CTX = PayloadContext("agent-executions", "s", "parser")

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
    encoded = layer.payloads.encode(payload, field="output_data", object_key="s/a", context=CTX)
    decoded = layer.payloads.decode(encoded.value, field="output_data", context=CTX)
    assert json.dumps(decoded, sort_keys=True) == json.dumps(payload, sort_keys=True)


def test_each_form_is_used(tiny_thresholds: StateClient) -> None:
    """Small JSON stays text, compressible JSON is zlib, large JSON goes to S3 as content-addressed chunks."""
    layer = tiny_thresholds.layer
    forms = {
        layer.payloads.encode(v, field="f", object_key="k", context=CTX).form
        for v in ({"a": 1}, {"t": "abc" * 40}, {"t": random.Random(1).randbytes(2000).hex()})
    }
    assert forms == {"json", "zlib", "chunks"}


def test_floats_round_trip_exactly(client: StateClient) -> None:
    """Floats come back as the same float, bit for bit."""
    values = [0.1, 1e-300, 2.0**53 + 1, -0.0, math.pi, 1.7976931348623157e308]
    sid = client.sessions.create(user_id="u", project_name="p", metadata=values).session_id
    assert client.sessions.get(sid).metadata == values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"x": float("-inf")}])
def test_nan_and_infinity_are_refused(client: StateClient, bad: object) -> None:
    """NaN/Infinity raise ValidationError naming the field."""
    with pytest.raises(ValidationError, match=r"input_data(\.x)? is -?(NaN|Infinity), which JSON cannot"):
        client.layer.payloads.encode(bad, field="input_data", object_key="k", context=CTX)


def test_values_with_no_json_form_are_refused(client: StateClient) -> None:
    """An arbitrary object is a ValidationError naming the field and the type."""
    with pytest.raises(ValidationError, match=r"input_data\.s contains a lock"):
        client.layer.payloads.encode({"s": threading.Lock()}, field="input_data", object_key="k", context=CTX)


def test_colliding_keys_are_refused_not_merged(client: StateClient) -> None:
    """{1: 'a', '1': 'b'} would lose a value as JSON: refused, naming the key and its type."""
    with pytest.raises(ValidationError, match=r"has the key 1 \(int\) and another whose JSON text"):
        client.layer.payloads.encode({1: "a", "1": "b"}, field="output_data", object_key="k", context=CTX)


def test_a_circular_reference_is_named_as_such(client: StateClient) -> None:
    """A payload that contains itself is reported as a circular reference (not as NaN)."""
    loop: dict[str, object] = {}
    loop["me"] = loop
    with pytest.raises(ValidationError, match="circular reference"):
        client.layer.payloads.encode(loop, field="output_data", object_key="k", context=CTX)


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Generated:
    path: pathlib.Path
    at: datetime.datetime
    tags: set[str]


class Modelish:
    def model_dump(self) -> dict[str, object]:
        return {"kind": "pydantic-like"}


def test_plain_python_values_are_stored_as_their_json_form(client: StateClient) -> None:
    """datetime, date, Path, Enum, tuple, set (sorted), dataclass, model_dump() and Decimal have one form."""
    value = {
        "when": datetime.datetime(2026, 11, 27, 3, 15, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 11, 27),
        "file": pathlib.PurePosixPath("src/App.tsx"),
        "colour": Colour.RED,
        "pair": (1, 2),
        "set": {"b", "a"},
        "mixed": {1, "x"},
        "files": Generated(pathlib.Path("a.py"), datetime.datetime(2026, 1, 1), {"z", "y"}),
        "model": Modelish(),
        "price": decimal.Decimal("12.50"),
        "count": decimal.Decimal("3"),
    }
    stored = client.layer.payloads.encode(value, field="output_data", object_key="k", context=CTX)
    back = client.layer.payloads.decode(stored.value, field="output_data", context=CTX)
    assert back["when"] == "2026-11-27T03:15:00+00:00"
    assert back["day"] == "2026-11-27"
    assert back["file"] == "src/App.tsx"
    assert back["colour"] == "red"
    assert back["pair"] == [1, 2]
    assert back["set"] == ["a", "b"]
    assert sorted(map(str, back["mixed"])) == ["1", "x"]
    assert back["files"] == {"path": "a.py", "at": "2026-01-01T00:00:00", "tags": ["y", "z"]}
    assert back["model"] == {"kind": "pydantic-like"}
    assert (back["price"], back["count"]) == (12.5, 3)


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
    assert client.layer.meter.s3_puts == 1  # 40 files of 25 KB: one chunk, not one object per file


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


def test_accumulated_inputs_store_the_generated_files_once(client: StateClient) -> None:
    """generation's files come back in assembly's and download's inputs: one chunk in S3, PUT once."""
    files = generated_project(300_000, seed=3)
    sid = client.sessions.create().session_id
    data: dict[str, object] = {"request": "a shop"}
    for agent in AGENTS:
        client.executions.start(sid, agent, input_data=data)
        output = {"files": files, "framework": "react"} if agent == "generation" else {"ok": agent}
        client.executions.complete(sid, agent, output_data=output)
        data[agent] = output
    bucket = client.config.payload_bucket
    assert bucket
    s3 = client.layer.payloads.s3
    assert s3 is not None
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"payloads/{sid}/")["Contents"]]
    assert len(keys) == 1, keys  # the files subtree, named by its SHA-256
    assert client.layer.meter.snapshot()["s3_puts"] == 1
    reader = StateClient(client.config, clock=client.clock)  # another process: empty caches
    assert reader.executions.get(sid, "download").input_data["generation"]["files"] == files
    assert reader.executions.get(sid, "generation").output_data == {"files": files, "framework": "react"}


def test_a_tampered_chunk_is_an_integrity_error(client: StateClient) -> None:
    """A chunk changed in S3 no longer matches its name: PayloadIntegrityError, never wrong data."""
    sid = client.sessions.create().session_id
    client.executions.complete(sid, "nl_input", output_data={"big": random.Random(4).randbytes(40_000).hex()})
    s3, bucket = client.layer.payloads.s3, client.config.payload_bucket
    assert s3 is not None
    assert bucket
    (obj,) = s3.list_objects_v2(Bucket=bucket, Prefix=f"payloads/{sid}/")["Contents"]
    s3.put_object(Bucket=bucket, Key=obj["Key"], Body=b"\x01" + zlib.compress(b'{"big":"forged"}'))
    with pytest.raises(PayloadIntegrityError, match="does not match its SHA-256"):
        client.executions.get(sid, "nl_input")


def test_earlier_outputs_in_an_input_are_stored_as_references(client: StateClient) -> None:
    """download's input holds every earlier output: stored as references (a few hundred bytes), read back
    whole by get() and list(), and by another process."""
    sid = client.sessions.create().session_id
    data: dict[str, object] = {"request": "a shop"}
    for agent in AGENTS:
        client.executions.start(sid, agent, input_data=data)
        output = {"agent": agent, "notes": "x" * 2000}
        client.executions.complete(sid, agent, output_data=output)
        data = {**data, agent: output}
    item = client.layer.get(
        client.config.tables.executions, {"execution_id": sid, "agent_name": "09#download"}
    )
    assert item is not None
    assert len(item["input_data"]) < 600, item["input_data"]  # eight references, not 16 KB of outputs
    expected = {k: v for k, v in data.items() if k != "download"}
    assert client.executions.get(sid, "download").input_data == expected
    assert client.executions.list(sid)[-1].input_data == expected
    assert (
        StateClient(client.config, clock=client.clock).executions.get(sid, "download").input_data == expected
    )


def test_a_repeated_start_with_references_is_still_a_duplicate(client: StateClient) -> None:
    """The fingerprint is over the caller's input, not its stored form: a retried start is a duplicate."""
    sid = client.sessions.create().session_id
    client.executions.complete(sid, "nl_input", output_data={"intent": "shop"})
    data = {"request": "r", "nl_input": {"intent": "shop"}}
    assert not client.executions.start(sid, "ui_selection", input_data=data).duplicate
    assert client.executions.start(sid, "ui_selection", input_data=data).duplicate
