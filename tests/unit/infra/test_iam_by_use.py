"""IAM proven by use: each component's flow runs under exactly the policy infra synthesized for it, with
moto enforcing IAM; everything the component does succeeds, and calls outside its job are denied.

moto's vocabulary differs from AWS's in two places, translated here and nowhere else:
- moto authorizes DynamoDB and KMS calls against resource "*" (it does not build their ARNs), so those
  resources are widened to "*" for this run; their scoping is checked on the synthesized JSON
  (test_iam.py). S3 is authorized against real object ARNs, so the payload prefix is enforced as written.
- moto names a transaction's action `dynamodb:TransactWriteItems`; AWS checks each part's item action,
  which the policy grants (and test_access.py proves the parts are exactly those).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin

from tdev_state import AccessDeniedError, StateClient, StateError
from tdev_state.testing import BUCKET, FakeClock, make_client

from ...flows import FLOWS, Flow
from .synth import Synth

_TRANSACTION_PARTS = {
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
}


def moto_policy(synthesized: str) -> dict[str, Any]:
    """The synthesized policy with Terraform references resolved for moto's account (see module doc)."""
    document: dict[str, Any] = json.loads(synthesized)
    for statement in document["Statement"]:
        resources = []
        for arn in statement["Resource"]:
            if arn.startswith(("${aws_dynamodb_table.", "${aws_kms_key.")):
                resources.append("*")
            else:
                resources.append(arn.replace("${aws_s3_bucket.payloads.arn}", f"arn:aws:s3:::{BUCKET}"))
        assert "${" not in json.dumps(resources), f"unresolved reference in {resources}"
        statement["Resource"] = sorted(set(resources))
        if _TRANSACTION_PARTS & set(statement["Action"]):
            statement["Action"] = sorted({*statement["Action"], "dynamodb:TransactWriteItems"})
    return document


@contextmanager
def enforced() -> Iterator[None]:
    """moto checks every request against IAM from here on (and lets everything through before)."""
    saved = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = saved


def principal_session(component: str, policy: dict[str, Any]) -> boto3.session.Session:
    """An IAM user holding only `policy`, as a boto3 session."""
    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_user(UserName=component)
    iam.put_user_policy(UserName=component, PolicyName=component, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=component)["AccessKey"]
    return boto3.session.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="us-east-1",
    )


def _denied(call: Any) -> str:
    with pytest.raises((StateError, ClientError)) as info:  # ours, or a raw boto3 call's refusal
        call()
    text = f"{type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, AccessDeniedError) or "AccessDenied" in text, text
    return text


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.component)
async def test_component_flow_runs_under_its_synthesized_policy(
    synth: Synth, aws: None, clock: FakeClock, flow: Flow
) -> None:
    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    admin = make_client(clock, kms_key_id=key, encrypt_fields={"output_data", "metadata"})
    synthesized = synth.resources("prod", "aws_iam_policy")[f"policy_{flow.component.replace('-', '_')}"]
    session = principal_session(flow.component, moto_policy(synthesized["policy"]))
    component = StateClient(admin.config, clock=clock, session=session)
    await flow.setup(admin, clock)
    sid = admin.sessions.create(user_id="u-neg", project_name="p").session_id
    with enforced():
        await flow.act(component, clock)  # everything the component does is allowed

        # ... and what is not its job is denied.
        tables = admin.config.tables
        _denied(lambda: component.layer.dynamodb.delete_table(TableName=tables.sessions))
        _denied(lambda: component.layer.dynamodb.scan(TableName=tables.executions))
        if flow.component == "metrics-collector":
            _denied(lambda: component.sessions.get(sid))
            _denied(lambda: component.projects.get("u", "p"))
            # (Query on another table is refused by resource in AWS; moto cannot show it, see above.)
            _denied(lambda: component.sessions.create(user_id="u", project_name="p"))
        if flow.component == "recovery-worker":
            _denied(lambda: component.sessions.create(user_id="u", project_name="p"))
            # GetItem is granted on sessions only (the run's type for usage counting); moto authorizes
            # DynamoDB against "*", so a project read cannot be shown refused here, a delete can.
            _denied(lambda: component.projects.delete("u", "p"))
        if flow.component != "pipeline-client":
            kms = session.client("kms", region_name="us-east-1")
            _denied(lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"))
        s3 = session.client("s3", region_name="us-east-1")
        # The payload prefix is enforced as written: even the pipeline may not write beside it.
        _denied(lambda: s3.put_object(Bucket=BUCKET, Key="elsewhere/x", Body=b"x"))
        _denied(lambda: s3.delete_bucket(Bucket=BUCKET))
