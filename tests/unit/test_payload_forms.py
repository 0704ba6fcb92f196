"""What an agent returns is stored (issue 22.2): FastAPI's conversions, the pipeline's own encoders, strict
refusals with typed errors (23.15, 23.16), a marked lossy form on request; and no caller value is ever taken
for one of the library's markers, while a changed chunk tree is an integrity error (23.6)."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import ipaddress
import json
import pathlib
import random
import uuid
import zlib
from typing import Any, NamedTuple

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdev_state import (
    AGENTS,
    ConfigurationError,
    LossyValue,
    PayloadIntegrityError,
    StateClient,
    StateConfig,
    ValidationError,
)
from tdev_state.payloads import OutputRef, PayloadContext
from tdev_state.storage import to_dynamo
from tdev_state.testing import BUCKET, FakeClock, generated_project, make_client

CTX = PayloadContext("agent-executions", "s", "parser")


def _round_trip(client: StateClient, value: Any, **kwargs: Any) -> Any:
    encoded = client.layer.payloads.encode(
        value, field="output_data", object_key="s/a", context=CTX, **kwargs
    )
    return client.layer.payloads.decode(encoded.value, field="output_data", context=CTX)


class Stack(enum.Enum):
    REACT = "react"
    VUE = "vue"


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Result:
    name: str
    files: dict[Any, Any]


class Flattened:
    """The orchestrator flattens objects without `.data` through `__dict__`; FastAPI stores them the same."""

    def __init__(self) -> None:
        self.agent = "parser"
        self.score = 0.9


def test_everything_fastapis_encoder_accepts_is_stored(client: StateClient) -> None:
    """UUID, timedelta, bytes, Decimal, sets, namedtuples, generators, deques, IPs, objects with attributes
    and int/float/bool/None/Enum keys are stored in the form FastAPI gives the browser."""
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "id": ident,
        "took": datetime.timedelta(minutes=1, seconds=30),
        "raw": b"hello",
        "price": decimal.Decimal("12.50"),
        "count": decimal.Decimal("3"),
        "tags": frozenset({"b", "a"}),
        "point": Point(1, 2),
        "gen": (n * n for n in range(3)),
        "queue": collections.deque([1, 2]),
        "ip": ipaddress.ip_address("10.0.0.1"),
        "at": datetime.time(3, 15),
        "obj": Flattened(),
        "keys": {1: "one", 2.5: "two and a half", False: "no", None: "none", Stack.VUE: "vue"},
        "nested": Result("r", {7: Stack.REACT, "path": pathlib.PurePosixPath("a/b.py")}),
    }
    back = _round_trip(client, value)
    assert back == {
        "id": str(ident),
        "took": 90.0,
        "raw": "hello",
        "price": 12.5,
        "count": 3,
        "tags": ["a", "b"],
        "point": [1, 2],
        "gen": [0, 1, 4],
        "queue": [1, 2],
        "ip": "10.0.0.1",
        "at": "03:15:00",
        "obj": {"agent": "parser", "score": 0.9},
        "keys": {"1": "one", "2.5": "two and a half", "false": "no", "null": "none", "vue": "vue"},
        "nested": {"name": "r", "files": {"7": "react", "path": "a/b.py"}},
    }


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


class Euro(Money):
    pass


def test_the_pipelines_own_types_go_through_its_encoders(aws: None, clock: FakeClock) -> None:
    """StateConfig(encoders={Money: fn}) stores Money (and its subclasses) as fn returns it, before the
    built-in conversions (which would have flattened its attributes)."""
    client = make_client(clock, encoders={Money: lambda m: f"{m.cents / 100:.2f}"})
    assert _round_trip(client, {"total": Euro(1250), "items": [Money(5)]}) == {
        "total": "12.50",
        "items": ["0.05"],
    }


def test_an_encoder_that_is_not_a_function_is_a_configuration_error() -> None:
    """encoders must map types to callables."""
    with pytest.raises(ConfigurationError, match="encoders must map types to functions"):
        StateConfig(env="unit", encoders={"Money": str})  # type: ignore[dict-item]


def test_colliding_keys_inside_a_dataclass_are_refused(client: StateClient) -> None:
    """{1: 'a', '1': 'b'} deep inside a dataclass would merge into {'1': 'b'}: refused, naming the place."""
    value = {"result": [Result("r", {"inner": {1: "a", "1": "b"}})]}
    with pytest.raises(
        ValidationError, match=r"output_data\.result\[0\]\.files\.inner has the key 1 \(int\)"
    ):
        client.layer.payloads.encode(value, field="output_data", object_key="k", context=CTX)


def test_colliding_keys_are_kept_under_a_marked_key_in_lossy_mode(client: StateClient) -> None:
    """Lossy: both values are kept; the non-string key comes back as a marked LossyValue key, with a
    warning naming the place."""
    encoded = client.layer.payloads.encode(
        {"d": {1: "a", "1": "b"}},
        field="output_data",
        object_key="k",
        context=CTX,
        lossy=True,
    )
    back = client.layer.payloads.decode(encoded.value, field="output_data", context=CTX)
    assert back == {"d": {"int:1": "a", "1": "b"}}
    (marked,) = [k for k in back["d"] if isinstance(k, LossyValue)]
    assert marked == "int:1"
    assert len(encoded.warnings) == 1
    assert encoded.warnings[0].startswith("output_data.d: has the key 1 (int)")


class _Slots:
    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class _BadModel:
    def model_dump(self) -> dict[str, Any]:
        raise RuntimeError("validation failed inside model_dump")


def test_an_object_whose_repr_raises_is_a_typed_error(client: StateClient) -> None:
    """No JSON form and a __repr__ that raises: ValidationError naming the type, never a raw RuntimeError."""
    with pytest.raises(ValidationError, match=r"output_data\.x contains a _Slots \(<_Slots object; its repr"):
        client.layer.payloads.encode({"x": _Slots()}, field="output_data", object_key="k", context=CTX)


def test_a_model_dump_that_raises_is_a_typed_error(client: StateClient) -> None:
    """model_dump() raising: ValidationError saying so, never a raw RuntimeError."""
    with pytest.raises(ValidationError, match=r"output_data\.m is a _BadModel whose model_dump\(\) raised"):
        client.layer.payloads.encode({"m": _BadModel()}, field="output_data", object_key="k", context=CTX)


def test_an_int_of_more_than_4300_digits_is_named_as_such(client: StateClient) -> None:
    """A huge int is reported as too many digits, not as 'NaN or Infinity'."""
    with pytest.raises(ValidationError, match=r"output_data\.n is an integer of more than 4300 digits"):
        client.layer.payloads.encode({"n": 10**5000}, field="output_data", object_key="k", context=CTX)


def test_lossy_writes_store_marked_forms_and_say_where(client: StateClient) -> None:
    """complete(..., lossy=True): each value with no exact form is stored marked, listed in the returned
    warnings (path and why) and on the item; the agent is COMPLETED; values read back as LossyValue."""
    loop: list[Any] = []
    loop.append(loop)
    output = {
        "score": float("nan"),
        "lock": _Slots(),
        "blob": b"\xff\xfe",
        "big": 10**5000,
        "loop": loop,
        "model": _BadModel(),
        "ok": "fine",
    }
    sid = client.sessions.create().session_id
    done = client.executions.complete(sid, "nl_input", output_data=output, lossy=True)
    assert done.status.value == "COMPLETED"
    where = sorted(line.split(":", 1)[0] for line in done.warnings)
    assert where == [
        "output_data.big",
        "output_data.blob",
        "output_data.lock",
        "output_data.loop[0]",
        "output_data.model",
        "output_data.score",
    ]
    back = StateClient(client.config).executions.get(sid, "nl_input").output_data
    assert back["ok"] == "fine"
    assert back["score"] == "NaN"
    assert all(isinstance(back[k], LossyValue) for k in ("score", "lock", "blob", "big", "model"))
    assert isinstance(back["loop"][0], LossyValue)
    assert back["big"].type_name == "int"
    item = client.layer.get(
        client.config.tables.executions, {"execution_id": sid, "agent_name": "01#nl_input"}
    )
    assert item is not None
    assert len(item["payload_warnings"]) == 6


def test_strict_writes_refuse_and_write_nothing(client: StateClient) -> None:
    """Without lossy, the same output is a ValidationError and the agent is not recorded."""
    sid = client.sessions.create().session_id
    with pytest.raises(ValidationError, match="NaN"):
        client.executions.complete(sid, "nl_input", output_data={"score": float("nan")})
    assert client.executions.list(sid) == []


async def test_the_async_client_takes_lossy_too(client: StateClient) -> None:
    """AsyncStateClient's executions mirror the keyword."""
    from tdev_state import AsyncStateClient

    async with AsyncStateClient(client) as aclient:
        sid = (await aclient.sessions.create()).session_id
        done = await aclient.executions.start(sid, "nl_input", input_data={"x": float("inf")}, lossy=True)
        assert done.warnings == (
            "input_data.x: is Infinity, which JSON cannot hold; stored as the marked lossy text 'Infinity'",
        )


# --- reserved keys and integrity ----------------------------------------------------------------------------

_RESERVED = ["\x00tdev-chunk", "\x00tdev-output", "\x00tdev-lossy", "\x00tdev-key:int:1", "\x00", "\x00\x00x"]
hostile_keys = (
    st.sampled_from(_RESERVED) | st.text(max_size=8) | st.text(alphabet="\x00tdev-chunk", max_size=12)
)
hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from([*_RESERVED, "a" * 64]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(hostile_keys, children, max_size=5),
    max_leaves=30,
)


@pytest.fixture
def tiny(aws: None, clock: FakeClock) -> StateClient:
    """Thresholds small enough that generated values are inline, compressed and chunked."""
    return make_client(clock, compress_threshold=64, offload_threshold=256, chunk_min_bytes=128)


def _exact(value: Any) -> str:
    """A comparison that also sees types: a LossyValue or OutputRef coming back is not the caller's value."""
    return json.dumps(value, sort_keys=True, default=lambda o: f"<{type(o).__name__}>") + repr(
        sorted(type(v).__name__ for v in _leaves(value))
    )


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *(x for v in value.values() for x in _leaves(v))]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(value=hostile_values, padding=st.integers(min_value=0, max_value=600))
def test_any_value_with_hostile_keys_round_trips_exactly(tiny: StateClient, value: Any, padding: int) -> None:
    """Caller data holding the library's reserved marker keys reads back exactly, in every stored form."""
    payload = {"v": value, "w": [value, "ab" * padding]}
    assert _exact(_round_trip(tiny, payload)) == _exact(payload)


def test_a_forged_chunk_reference_is_read_back_as_data(client: StateClient) -> None:
    """An output holding {"\\u0000tdev-chunk": <another agent's chunk name>} is not resolved to that chunk."""
    sid = client.sessions.create().session_id
    client.executions.complete(sid, "nl_input", output_data=generated_project(200_000))
    s3 = boto3.client("s3", region_name="us-east-1")
    (obj,) = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"payloads/{sid}/")["Contents"]
    name = obj["Key"].rsplit("/", 1)[-1].removesuffix(".json.z")
    forged = {"note": {"\x00tdev-chunk": name}, "pad": random.Random(5).randbytes(20_000).hex()}
    client.executions.start(sid, "ui_selection")
    client.executions.complete(sid, "ui_selection", output_data=forged)
    assert StateClient(client.config).executions.get(sid, "ui_selection").output_data == forged


def test_a_forged_output_reference_is_read_back_as_data(client: StateClient) -> None:
    """An input holding {"\\u0000tdev-output": "nl_input"} under an agent's name reads back as given, not
    as nl_input's output."""
    sid = client.sessions.create().session_id
    client.executions.complete(sid, "nl_input", output_data={"intent": "shop"})
    forged = {"request": "r", "nl_input": {"\x00tdev-output": "nl_input"}}
    client.executions.start(sid, "ui_selection", input_data=forged)
    got = StateClient(client.config).executions.get(sid, "ui_selection").input_data
    assert got == forged
    assert not any(isinstance(v, OutputRef) for v in got.values())


def test_a_changed_skeleton_is_an_integrity_error(client: StateClient) -> None:
    """The chunk tree kept in the item is checked against the payload's recorded SHA-256: a skeleton
    changed behind the client's back is a PayloadIntegrityError, never another value."""
    sid = client.sessions.create().session_id
    output = {**generated_project(200_000), "framework": "react"}
    client.executions.complete(sid, "nl_input", output_data=output)
    table = client.config.tables.executions
    key = {"execution_id": sid, "agent_name": "01#nl_input"}
    item = client.layer.get(table, key)
    assert item is not None
    ref = item["output_data"]["chunks"]
    tree = ref["tree"] if isinstance(ref["tree"], str) else zlib.decompress(bytes(ref["tree"])[1:]).decode()
    assert '"framework":"react"' in tree
    ref["tree"] = tree.replace('"framework":"react"', '"framework":"vue"')
    client.layer.put(table, item)
    with pytest.raises(PayloadIntegrityError, match="does not match the SHA-256 recorded in its item"):
        StateClient(client.config).executions.get(sid, "nl_input")


def test_every_agent_of_a_run_reads_back_after_hostile_outputs(client: StateClient) -> None:
    """A whole run whose outputs and accumulated inputs hold reserved keys (one shaped exactly like a
    reference to an earlier output, under an agent's name) reads back exactly, from another process."""
    sid = client.sessions.create().session_id
    data: dict[str, Any] = {"request": {"\x00\x00": 1}, "download": {"\x00tdev-output": "nl_input"}}
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for agent in AGENTS:
        inputs[agent] = dict(data)
        client.executions.start(sid, agent, input_data=data)
        outputs[agent] = {"\x00tdev-chunk": agent, "\x00tdev-lossy": {"type": "float", "text": "NaN"}}
        client.executions.complete(sid, agent, output_data=outputs[agent])
        data = {**data, agent: outputs[agent]} if agent != "download" else data
    run = StateClient(client.config).executions.list(sid)
    assert {e.agent_name: e.input_data for e in run} == inputs
    assert {e.agent_name: e.output_data for e in run} == outputs


def test_attributes_with_non_string_keys_are_refused_not_merged() -> None:
    """`to_dynamo` (every non-payload attribute) used to turn {1: 'a', '1': 'b'} into {'1': 'b'}."""
    with pytest.raises(ValidationError, match=r"value\.log has a key of type int \(1\)"):
        to_dynamo({"log": {1: "a", "1": "b"}})


def test_an_attribute_holding_a_huge_int_is_a_typed_error() -> None:
    """A 5,000-digit int is refused with its size, never a raw ValueError from str()."""
    with pytest.raises(ValidationError, match="an integer of about 5000 digits"):
        to_dynamo({"n": 10**5000})


class _Opaque:
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def test_a_retried_lossy_write_is_still_a_duplicate(client: StateClient) -> None:
    """The marked text of an object without a JSON form holds no memory address: the same output sent
    again (a new object, as after a timeout) is recognised as a duplicate, not a conflict."""
    sid = client.sessions.create().session_id
    first, second = _Opaque(1), _Opaque(1)  # both alive: two addresses
    client.executions.complete(sid, "nl_input", output_data={"x": first}, lossy=True)
    again = client.executions.complete(sid, "nl_input", output_data={"x": second}, lossy=True)
    assert again.duplicate


def test_a_set_that_does_not_sort_has_one_stored_order_in_every_process() -> None:
    """{1, 'x', 2.5} is stored in the same order whatever the process's string hashing (PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    code = (
        "from tdev_state.payloads import _jsonform; "
        "print(_jsonform.to_json({'s': {1, 'x', 'y', 2.5, 'zz', None}}, field='f')[0].decode())"
    )
    texts = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(texts) == 1, texts


def test_a_value_read_back_in_lossy_form_is_stored_marked_again(client: StateClient) -> None:
    """A LossyValue (value or key) handed back to the store — a resumed run passing it on — keeps its mark."""
    first = _round_trip(client, {"d": {1: "a", "1": "b"}, "n": float("nan")}, lossy=True)
    again = _round_trip(client, first)
    assert again == first
    assert isinstance(again["n"], LossyValue)
    assert any(isinstance(k, LossyValue) for k in again["d"])
