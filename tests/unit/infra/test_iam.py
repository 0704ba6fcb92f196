"""IAM: each component's synthesized policy allows exactly its declared grants, on named resources only.

The declarations are checked against the code by tests/unit/test_access.py (every AWS call recorded), so
together: what a component's code calls is allowed, and nothing else is. Never `Resource: "*"`.
"""

from __future__ import annotations

import json
import re

import pytest

from tdev_infra.policies import COMPONENTS, construct_id
from tdev_state.access import ComponentAccess
from tdev_state.schema import ALL_TABLES

from .synth import STACKS, Synth

TABLE_REF = {f"${{aws_dynamodb_table.{construct_id(s)}.arn}}": s.logical_name for s in ALL_TABLES}
INDEX_REF = re.compile(r"^(\$\{aws_dynamodb_table\.\w+\.arn\})/index/([\w-]+)$")
STREAM_REF = re.compile(r"^(\$\{aws_dynamodb_table\.\w+\.arn\})/stream/\*$")


def _resource_id(arn: str) -> str:
    if arn in TABLE_REF:
        return f"table:{TABLE_REF[arn]}"
    if m := INDEX_REF.match(arn):
        return f"index:{TABLE_REF[m.group(1)]}/{m.group(2)}"
    if m := STREAM_REF.match(arn):
        return f"stream:{TABLE_REF[m.group(1)]}"
    if arn == "${aws_s3_bucket.payloads.arn}/payloads/*":
        return "payloads"
    if arn == "${aws_kms_key.state_key.arn}":
        return "key"
    raise AssertionError(f"policy names a resource outside the platform: {arn}")


@pytest.mark.parametrize("env", STACKS)
@pytest.mark.parametrize("access", COMPONENTS, ids=lambda a: a.component)
def test_policy_allows_exactly_the_declared_grants(synth: Synth, env: str, access: ComponentAccess) -> None:
    policy = synth.resources(env, "aws_iam_policy")[f"policy_{access.component.replace('-', '_')}"]
    assert policy["name"] == f"t-developer-{env}-{access.component}"
    document = json.loads(policy["policy"])
    allowed: set[tuple[str, str]] = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement
        assert "NotResource" not in statement
        actions = statement["Action"]
        assert all("*" not in a for a in actions), actions
        assert statement["Resource"]
        assert (
            "*" not in statement["Resource"]
        )  # a stream's ARN ends in /stream/* (its label): still one table
        for arn in statement["Resource"]:
            allowed |= {(action, _resource_id(arn)) for action in actions}
    assert allowed == set(access.pairs())


def test_no_component_can_manage_tables_keys_or_buckets(synth: Synth) -> None:
    """Table, key and bucket life cycles belong to Terraform; no runtime policy may touch them."""
    forbidden = re.compile(
        r"^(dynamodb:(Create|Delete|Update)Table|dynamodb:Scan|kms:(Create|Schedule|Put|Disable)|s3:(Delete|Put)Bucket)"
    )
    for env in STACKS:
        for policy in synth.resources(env, "aws_iam_policy").values():
            for statement in json.loads(policy["policy"])["Statement"]:
                assert not [a for a in statement["Action"] if forbidden.match(a)], statement


def test_the_key_is_used_for_data_keys_only_and_only_the_pipeline_seals(synth: Synth) -> None:
    expected = {
        "policy_pipeline_client": [["kms:Decrypt", "kms:GenerateDataKey"]],
        "policy_recovery_worker": [["kms:Decrypt"]],
        "policy_metrics_collector": [],
    }
    for env in STACKS:
        for name, policy in synth.resources(env, "aws_iam_policy").items():
            statements = json.loads(policy["policy"])["Statement"]
            key_actions = [
                s["Action"] for s in statements if s["Resource"] == ["${aws_kms_key.state_key.arn}"]
            ]
            assert key_actions == expected[name], (env, name)
