"""Client-side encryption of marked payload fields, on moto's KMS: sealed at rest, bound to its item,
data keys reused within bounds, and every failure a clear typed error rather than garbage."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import boto3
import pytest

from tdev_state import AGENTS, ConfigurationError, PayloadIntegrityError, StateClient, StateConfig
from tdev_state.exceptions import EncryptionError
from tdev_state.payloads import SEALED_TAG, FieldCipher
from tdev_state.testing import BUCKET, FakeClock, generated_project, make_client

SECRET = {"api_key": "sk-live-0123456789", "notes": "customer PII: Jane Doe, +1-555-0100"}


@pytest.fixture
def kms_key(aws: None) -> str:
    key: str = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    return key


def _sealed_client(clock: FakeClock, key: str, **config: Any) -> StateClient:
    return make_client(
        clock, kms_key_id=key, encrypt_fields=config.pop("fields", {"output_data", "metadata"}), **config
    )


def _raw_item(table: str, key: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=table, Key=key
    )["Item"]
    return item


def _exec_key(client: StateClient, sid: str, agent: str) -> dict[str, Any]:
    step = AGENTS.index(agent) + 1
    return {"execution_id": {"S": sid}, "agent_name": {"S": f"{step:02d}#{agent}"}}


def test_marked_fields_are_sealed_at_rest_and_read_back_transparently(clock: FakeClock, kms_key: str) -> None:
    client = _sealed_client(clock, kms_key)
    sid = client.sessions.create(user_id="u", project_name="p", metadata=SECRET).session_id
    client.executions.start(sid, "nl_input", input_data={"prompt": "plain input"})
    client.executions.complete(sid, "nl_input", output_data=SECRET)

    raw_exec = _raw_item(client.config.tables.executions, _exec_key(client, sid, "nl_input"))
    sealed = raw_exec["output_data"]["B"]
    assert sealed.startswith(SEALED_TAG)
    assert b"sk-live" not in sealed
    assert "sk-live" not in json.dumps(raw_exec, default=str)
    assert raw_exec["input_data"] == {"S": '{"prompt":"plain input"}'}  # not marked: stays readable
    assert isinstance(raw_exec["fingerprint"]["B"], bytes)  # no clear digest of a sealed payload
    raw_session = _raw_item(client.config.tables.sessions, {"session_id": {"S": sid}})
    assert raw_session["metadata"]["B"].startswith(SEALED_TAG)

    reader = StateClient(client.config, clock=clock)  # another process: empty key cache
    assert reader.executions.get(sid, "nl_input").output_data == SECRET
    assert reader.sessions.get(sid).metadata == SECRET


def test_agent_qualified_fields_seal_only_that_agent(clock: FakeClock, kms_key: str) -> None:
    client = _sealed_client(clock, kms_key, fields={"search.output_data"})
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    for agent in AGENTS[:6]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"agent": agent})
    sealed = {
        a: "B" in _raw_item(client.config.tables.executions, _exec_key(client, sid, a))["output_data"]
        for a in AGENTS[:6]
    }
    assert sealed == {a: a == "search" for a in AGENTS[:6]}
    assert [e.output_data for e in client.executions.list(sid)][:6] == [{"agent": a} for a in AGENTS[:6]]


def test_offloaded_sealed_payload_is_ciphertext_in_s3_named_by_its_ciphertext(
    clock: FakeClock, kms_key: str
) -> None:
    client = _sealed_client(clock, kms_key)
    big = generated_project(120_000)
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data=big)
    ref = _raw_item(client.config.tables.executions, _exec_key(client, sid, "nl_input"))["output_data"]["M"][
        "s3"
    ]["M"]
    key = ref["key"]["S"]
    body = boto3.client("s3", region_name="us-east-1").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body.startswith(SEALED_TAG)
    plain_digest = hashlib.sha256(
        json.dumps(big, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert plain_digest not in key
    assert ref["sha256"]["S"] == hashlib.sha256(body).hexdigest()
    assert client.executions.get(sid, "nl_input").output_data == big


def test_tampered_or_moved_ciphertext_is_refused(clock: FakeClock, kms_key: str) -> None:
    client = _sealed_client(clock, kms_key)
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    for agent in AGENTS[:2]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"secret": agent})
    table = client.config.tables.executions
    first = _raw_item(table, _exec_key(client, sid, "nl_input"))["output_data"]["B"]

    def overwrite(agent: str, sealed: bytes) -> None:
        boto3.client("dynamodb", region_name="us-east-1").update_item(
            TableName=table,
            Key=_exec_key(client, sid, agent),
            UpdateExpression="SET output_data = :b",
            ExpressionAttributeValues={":b": {"B": sealed}},
        )

    overwrite("nl_input", first[:-1] + bytes([first[-1] ^ 1]))
    with pytest.raises(PayloadIntegrityError, match="does not authenticate"):
        client.executions.get(sid, "nl_input")
    # A valid ciphertext of another item (agent 1's output pasted into agent 2's) does not open there.
    overwrite("ui_selection", first)
    with pytest.raises(PayloadIntegrityError, match="another item or field"):
        client.executions.get(sid, "ui_selection")
    overwrite("ui_selection", first[:20])
    with pytest.raises(PayloadIntegrityError, match="truncated"):
        client.executions.get(sid, "ui_selection")


def test_wrong_key_or_no_key_is_a_clear_error(clock: FakeClock, kms_key: str) -> None:
    client = _sealed_client(clock, kms_key)
    sid = client.sessions.create(user_id="u", project_name="p", metadata=SECRET).session_id
    other = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    wrong = StateClient(StateConfig(env="unit", payload_bucket=BUCKET, kms_key_id=other), clock=clock)
    # AWS answers IncorrectKeyException (-> PayloadIntegrityError); moto answers AccessDenied.
    with pytest.raises((PayloadIntegrityError, EncryptionError), match=other):
        wrong.sessions.get(sid)
    keyless = StateClient(StateConfig(env="unit", payload_bucket=BUCKET), clock=clock)
    with pytest.raises(ConfigurationError, match="needs a KMS key"):
        keyless.sessions.get(sid)


def test_duplicates_are_still_recognised_with_sealed_fingerprints(clock: FakeClock, kms_key: str) -> None:
    """A repeated complete() with the same output is a duplicate; with another output it is refused."""
    client = _sealed_client(clock, kms_key, data_key_max_uses=1)  # a new data key for every seal
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    client.executions.start(sid, "nl_input")
    assert not client.executions.complete(sid, "nl_input", output_data=SECRET).duplicate
    assert client.executions.complete(sid, "nl_input", output_data=SECRET).duplicate
    with pytest.raises(Exception, match=r"already COMPLETED|only from RUNNING"):
        client.executions.complete(sid, "nl_input", output_data={"other": 1})


def test_data_keys_are_reused_within_bounds() -> None:
    calls = {"generate": 0, "decrypt": 0}

    class FakeKms:
        """Counts calls; a data key is random bytes and its 'blob' is a label (the cipher never parses it)."""

        def __init__(self) -> None:
            self.keys: dict[bytes, bytes] = {}

        def generate_data_key(self, **_: Any) -> dict[str, bytes]:
            calls["generate"] += 1
            plain, blob = hashlib.sha256(str(calls).encode()).digest(), f"blob-{calls['generate']}".encode()
            self.keys[blob] = plain
            return {"Plaintext": plain, "CiphertextBlob": blob}

        def decrypt(self, CiphertextBlob: bytes, **_: Any) -> dict[str, bytes]:
            calls["decrypt"] += 1
            return {"Plaintext": self.keys[CiphertextBlob]}

    now = [0.0]
    kms = FakeKms()
    cipher = FieldCipher(kms, "k", env="unit", max_age_seconds=300, max_uses=100, clock=lambda: now[0])
    sealed = [cipher.seal(b"x" * 10, b"aad", field="f") for _ in range(250)]
    assert calls["generate"] == 3  # 100 + 100 + 50 seals
    now[0] += 301
    cipher.seal(b"y", b"aad", field="f")
    assert calls["generate"] == 4  # too old: a new key
    fresh = FieldCipher(kms, "k", env="unit", clock=lambda: now[0])
    assert {fresh.open(s, b"aad", field="f") for s in sealed} == {b"x" * 10}
    assert calls["decrypt"] == 3  # one per distinct data key, then cached
    assert fresh.stats().opened == 250


@pytest.mark.parametrize(
    ("fields", "key", "match"),
    [
        ({"secrets"}, "k", "names no payload field"),
        ({"gpt.output_data"}, "k", "names no payload field"),
        ({"parser.metadata"}, "k", "names no payload field"),
        ("output_data", "k", "must be a set"),
        ({"output_data"}, None, "kms_key_id is not"),
    ],
)
def test_bad_encryption_config_is_refused(fields: Any, key: str | None, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        StateConfig(env="unit", kms_key_id=key, encrypt_fields=fields)


def test_encryption_from_environment() -> None:
    config = StateConfig.from_env(
        {
            "TDEV_ENV": "dev",
            "TDEV_KMS_KEY_ID": "alias/t-developer-dev-state",
            "TDEV_ENCRYPT_FIELDS": "output_data, generation.input_data",
        }
    )
    assert config.encrypt_fields == {"output_data", "generation.input_data"}
    assert config.should_encrypt("input_data", "generation")
    assert not config.should_encrypt("input_data", "parser")


def test_a_sealed_output_stays_sealed_in_later_accumulated_inputs(clock: FakeClock, kms_key: str) -> None:
    """generation.output_data is sealed; a resumed pipeline (another process, no references to reuse) passes
    it whole to assembly, and the same process passes a reworded copy to download: both inputs are sealed
    at rest, and read back (issue 23.10)."""
    client = _sealed_client(clock, kms_key, fields={"generation.output_data"})
    sid = client.sessions.create().session_id
    for agent in AGENTS[:6]:
        client.executions.start(sid, agent, input_data={"request": "shop"})
        client.executions.complete(sid, agent, output_data={"ok": agent})
    client.executions.start(sid, "generation", input_data={"request": "shop"})
    client.executions.complete(sid, "generation", output_data=SECRET)

    resumed = StateClient(client.config, clock=clock)
    whole = {"request": "shop", "generation": SECRET}
    resumed.executions.start(sid, "assembly", input_data=whole)
    resumed.executions.complete(sid, "assembly", output_data={"zip": "ok"})
    reworded = {"request": "shop", "generation_result": dict(SECRET), "api_key": SECRET["api_key"]}
    client.executions.start(sid, "download", input_data=reworded)

    for agent in ("assembly", "download"):
        raw = _raw_item(client.config.tables.executions, _exec_key(client, sid, agent))
        assert raw["input_data"]["B"].startswith(SEALED_TAG)
        assert "sk-live" not in json.dumps(raw, default=str)
    parser_input = _raw_item(client.config.tables.executions, _exec_key(client, sid, "parser"))["input_data"]
    assert parser_input == {"S": '{"request":"shop"}'}  # before the sealed output: readable
    reader = StateClient(client.config, clock=clock)
    assert reader.executions.get(sid, "assembly").input_data == whole
    assert reader.executions.get(sid, "download").input_data == reworded
