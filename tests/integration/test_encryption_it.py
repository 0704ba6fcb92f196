"""Client-side encryption against a real KMS (LocalStack's, or AWS's with TDEV_TARGET=aws)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tdev_state import AGENTS, EncryptionError, PayloadIntegrityError, StateClient, StateConfig
from tdev_state.payloads import SEALED_TAG
from tdev_state.testing import generated_project

from .endpoints import raw_client

SECRET = {"token": "ghp_" + "x" * 36, "email": "jane@example.com"}


@pytest.fixture(scope="module")
def kms_keys(base_config: StateConfig) -> Iterator[tuple[str, str]]:
    kms = raw_client("kms", base_config)
    keys = [kms.create_key(Description=f"{base_config.env} test {i}")["KeyMetadata"]["KeyId"] for i in (1, 2)]
    try:
        yield keys[0], keys[1]
    finally:
        for key in keys:  # AWS keeps a key at least 7 days before deleting it
            kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)


def test_sealed_run_round_trips_and_is_ciphertext_at_rest(
    client: StateClient, kms_keys: tuple[str, str]
) -> None:
    config = replace(
        client.config, kms_key_id=kms_keys[0], encrypt_fields=frozenset({"output_data", "metadata"})
    )
    writer = StateClient(config)
    sid = writer.sessions.create(user_id="u-enc", project_name="p", metadata=SECRET).session_id
    outputs = {
        a: (generated_project(60_000, seed=3) if a == "generation" else {"agent": a, **SECRET})
        for a in AGENTS
    }
    for agent in AGENTS:
        writer.executions.start(sid, agent, input_data={"agent": agent})
        writer.executions.complete(sid, agent, output_data=outputs[agent])
    stats = writer.layer.payloads.cipher.stats()
    # 9 outputs, the 8 inputs after the first sealed output (they accumulate it), 17 fingerprints, metadata
    assert (stats.generate_calls, stats.sealed) == (1, 9 + 8 + 17 + 1)

    raw = client.layer.dynamodb.get_item(
        TableName=client.config.tables.executions,
        Key={"execution_id": {"S": sid}, "agent_name": {"S": "01#nl_input"}},
    )["Item"]
    assert raw["output_data"]["B"].startswith(SEALED_TAG)
    assert b"ghp_" not in raw["output_data"]["B"]

    reader = StateClient(config)  # another process
    assert [e.output_data for e in reader.executions.list(sid)] == [outputs[a] for a in AGENTS]
    assert reader.sessions.get(sid).metadata == SECRET
    assert reader.layer.payloads.cipher.stats().decrypt_calls == 1  # one data key for the whole run


def test_wrong_key_and_tampering_are_refused(client: StateClient, kms_keys: tuple[str, str]) -> None:
    config = replace(client.config, kms_key_id=kms_keys[0], encrypt_fields=frozenset({"metadata"}))
    sid = f"enc-{uuid.uuid4().hex[:8]}"
    StateClient(config).sessions.create(session_id=sid, user_id="u-enc", project_name="p", metadata=SECRET)
    wrong = StateClient(replace(config, kms_key_id=kms_keys[1]))
    with pytest.raises((PayloadIntegrityError, EncryptionError), match=kms_keys[1]):
        wrong.sessions.get(sid)
    table = client.config.tables.sessions
    item = client.layer.dynamodb.get_item(TableName=table, Key={"session_id": {"S": sid}})["Item"]
    sealed = item["metadata"]["B"]
    client.layer.dynamodb.update_item(
        TableName=table,
        Key={"session_id": {"S": sid}},
        UpdateExpression="SET metadata = :m",
        ExpressionAttributeValues={":m": {"B": sealed[:-3] + bytes(3)}},
    )
    with pytest.raises(PayloadIntegrityError, match="does not authenticate"):
        StateClient(config).sessions.get(sid)
