"""The three stacks have what the plan's table says, checked on the synthesized JSON with cdktf's matchers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tdev_infra.settings import ENVIRONMENTS, RECOVERY_NAMESPACE
from tdev_state.config import PAYLOAD_GRACE_DAYS
from tdev_state.schema import ALL_TABLES

from .synth import STACKS, STATE_BUCKET, TASK_PRINCIPAL, Synth


def _tables(synth: Synth, env: str) -> list[dict[str, Any]]:
    return list(synth.resources(env, "aws_dynamodb_table").values())


@pytest.mark.parametrize("env", STACKS)
def test_tables_are_named_per_environment(synth: Synth, cdktf_testing: Any, env: str) -> None:
    for spec in ALL_TABLES:
        assert cdktf_testing.to_have_resource_with_properties(
            synth.text(env), "aws_dynamodb_table", {"name": f"t-developer-{env}-{spec.logical_name}"}
        )
    assert len(_tables(synth, env)) == len(ALL_TABLES)


@pytest.mark.parametrize(
    ("env", "billing", "protected"),
    [("local", "PAY_PER_REQUEST", False), ("dev", "PAY_PER_REQUEST", False), ("prod", "PROVISIONED", True)],
)
def test_billing_deletion_protection_and_pitr(
    synth: Synth, cdktf_testing: Any, env: str, billing: str, protected: bool
) -> None:
    """checkov has no check for deletion protection, so it is asserted here, on every table."""
    for table in _tables(synth, env):
        assert table["billing_mode"] == billing
        assert table["deletion_protection_enabled"] is protected, table["name"]
        assert table["point_in_time_recovery"] == {"enabled": True}
        if billing == "PROVISIONED":
            assert (table["read_capacity"], table["write_capacity"]) == (5, 5)
            assert all(
                (g["read_capacity"], g["write_capacity"]) == (5, 5)
                for g in table.get("global_secondary_index", [])
            )
        else:
            assert "read_capacity" not in table
    assert cdktf_testing.to_have_resource_with_properties(
        synth.text(env), "aws_dynamodb_table", {"deletion_protection_enabled": protected}
    )


def test_encryption_at_rest_per_environment(synth: Synth) -> None:
    """local: AWS owned (no block); dev: AWS managed (enabled, no key); prod: the stack's CMK."""
    assert all("server_side_encryption" not in t for t in _tables(synth, "local"))
    assert all(t["server_side_encryption"] == {"enabled": True} for t in _tables(synth, "dev"))
    assert all(
        t["server_side_encryption"] == {"enabled": True, "kms_key_arn": "${aws_kms_key.state_key.arn}"}
        for t in _tables(synth, "prod")
    )


@pytest.mark.parametrize("env", STACKS)
def test_key_rotates_and_its_policy_has_no_wildcard_principal(synth: Synth, env: str) -> None:
    (key,) = synth.resources(env, "aws_kms_key").values()
    assert key["enable_key_rotation"] is True
    policy = json.loads(key["policy"])
    for statement in policy["Statement"]:
        principal = statement["Principal"]
        assert principal != "*"
        assert all("*" not in str(v) for v in principal.values()), statement


@pytest.mark.parametrize("env", STACKS)
def test_payload_bucket_is_private_encrypted_tls_only_and_expires(synth: Synth, env: str) -> None:
    (bucket,) = synth.resources(env, "aws_s3_bucket").values()
    assert bucket["force_destroy"] is (env != "prod")
    (block,) = synth.resources(env, "aws_s3_bucket_public_access_block").values()
    assert all(
        block[k] is True
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    (sse,) = synth.resources(env, "aws_s3_bucket_server_side_encryption_configuration").values()
    default = sse["rule"][0]["apply_server_side_encryption_by_default"]
    assert default == {"kms_master_key_id": "${aws_kms_key.state_key.arn}", "sse_algorithm": "aws:kms"}
    (policy,) = synth.resources(env, "aws_s3_bucket_policy").values()
    (deny,) = json.loads(policy["policy"])["Statement"]
    assert (deny["Effect"], deny["Action"]) == ("Deny", "s3:*")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == ["${aws_s3_bucket.payloads.arn}", "${aws_s3_bucket.payloads.arn}/*"]
    (lifecycle,) = synth.resources(env, "aws_s3_bucket_lifecycle_configuration").values()
    # One retention setting drives both: payloads outlive the items that refer to them.
    days = ENVIRONMENTS[env].retention_days
    assert lifecycle["rule"][0]["expiration"] == [{"days": days + PAYLOAD_GRACE_DAYS}]
    assert synth.json(env)["output"]["retention_days"]["value"] == days
    assert synth.json(env)["output"]["payload_expiry_days"]["value"] == days + PAYLOAD_GRACE_DAYS


def test_prod_autoscales_the_table_and_every_gsi(synth: Synth) -> None:
    targets = synth.resources("prod", "aws_appautoscaling_target").values()
    expected = set()
    for spec in ALL_TABLES:
        name = f"t-developer-prod-{spec.logical_name}"
        expected |= {(f"table/{name}", f"dynamodb:table:{m}CapacityUnits") for m in ("Read", "Write")}
        for index in spec.indexes:
            if not index.local:
                expected |= {
                    (f"table/{name}/index/{index.name}", f"dynamodb:index:{m}CapacityUnits")
                    for m in ("Read", "Write")
                }
    got = {
        (t["resource_id"].replace("${aws_dynamodb_table.", "").split(".name}")[0], t["scalable_dimension"])
        for t in targets
    }
    # resource_id is "table/${aws_dynamodb_table.X.name}[/index/I]": resolve X through the stack's tables
    names = {k: v["name"] for k, v in synth.resources("prod", "aws_dynamodb_table").items()}
    resolved = {
        (next(rid.replace(f"${{aws_dynamodb_table.{k}.name}}", n) for k, n in names.items() if k in rid), dim)
        for rid, dim in ((t["resource_id"], t["scalable_dimension"]) for t in targets)
    }
    assert resolved == expected, got
    policies = synth.resources("prod", "aws_appautoscaling_policy").values()
    assert len(policies) == len(expected)
    assert all(p["policy_type"] == "TargetTrackingScaling" for p in policies)
    assert all(p["target_tracking_scaling_policy_configuration"]["target_value"] == 70 for p in policies)
    for env in ("local", "dev"):  # community LocalStack has no Application Auto Scaling; on-demand needs none
        assert not synth.resources(env, "aws_appautoscaling_target")


@pytest.mark.parametrize("env", STACKS)
def test_alarms_topic_and_dashboard_only_outside_local(synth: Synth, env: str) -> None:
    alarms = synth.resources(env, "aws_cloudwatch_metric_alarm")
    if env == "local":
        assert not alarms
        assert not synth.resources(env, "aws_sns_topic")
        assert not synth.resources(env, "aws_cloudwatch_dashboard")
        return
    (topic,) = synth.resources(env, "aws_sns_topic").values()
    assert topic["kms_master_key_id"] == "${aws_kms_key.state_key.arn}"
    names = {a["alarm_name"] for a in alarms.values()}
    for spec in ALL_TABLES:
        table = f"t-developer-{env}-{spec.logical_name}"
        assert {f"{table}-throttled-requests", f"{table}-system-errors"} <= names
        capacity = {f"{table}-read-capacity", f"{table}-write-capacity"}
        assert capacity <= names if env == "prod" else not capacity & names
    backlog = alarms["recovery_backlog"]
    assert (backlog["namespace"], backlog["metric_name"]) == (RECOVERY_NAMESPACE, "RecoveryBacklog")
    assert backlog["dimensions"] == {"Environment": env}
    assert backlog["treat_missing_data"] == ("breaching" if env == "prod" else "notBreaching")
    for alarm in alarms.values():
        assert alarm["alarm_actions"] == ["${aws_sns_topic.alarms.arn}"]
    (dashboard,) = synth.resources(env, "aws_cloudwatch_dashboard").values()
    body = json.loads(dashboard["dashboard_body"])
    titles = {w["properties"]["title"] for w in body["widgets"]}
    assert {"Throttled reads", "Throttled writes", "Recovery backlog"} <= titles


def test_local_provider_targets_localstack(synth: Synth) -> None:
    (provider,) = synth.json("local")["provider"]["aws"]
    assert (provider["access_key"], provider["secret_key"]) == ("test", "test")
    assert provider["skip_credentials_validation"] is True
    assert provider["skip_requesting_account_id"] is True
    assert provider["s3_use_path_style"] is True
    endpoints = provider["endpoints"][0]
    assert {endpoints[s] for s in ("dynamodb", "s3", "kms", "sts", "iam")} == {"http://localhost:4566"}
    for env in ("dev", "prod"):
        (real,) = synth.json(env)["provider"]["aws"]
        assert "endpoints" not in real
        assert "access_key" not in real


def test_state_backend_s3_with_native_locking_local_stays_local(synth: Synth) -> None:
    for env in ("dev", "prod"):
        backend = synth.json(env)["terraform"]["backend"]
        assert backend == {
            "s3": {
                "bucket": STATE_BUCKET,
                "key": f"t-developer/{env}.tfstate",
                "region": "us-east-1",
                "encrypt": True,
                "use_lockfile": True,
            }
        }
    assert synth.json("local")["terraform"]["backend"] == {
        "local": {"path": "terraform.t-developer-local.tfstate"}
    }


@pytest.mark.parametrize("env", STACKS)
def test_task_roles_trust_the_configured_principal(synth: Synth, env: str) -> None:
    # (the worker service's own two roles, in dev and prod, are tested in test_deploy_guards.py)
    roles = {k: v for k, v in synth.resources(env, "aws_iam_role").items() if k.startswith("role_")}
    assert set(roles) == {"role_pipeline_client", "role_recovery_worker", "role_metrics_collector"}
    for role in roles.values():
        (statement,) = json.loads(role["assume_role_policy"])["Statement"]
        assert statement["Principal"] == {"Service": TASK_PRINCIPAL}
    attachments = [
        a for k, a in synth.resources(env, "aws_iam_role_policy_attachment").items() if k.startswith("role_")
    ]
    assert {a["policy_arn"] for a in attachments} == {
        f"${{aws_iam_policy.policy_{c}.arn}}"
        for c in ("pipeline_client", "recovery_worker", "metrics_collector")
    }


@pytest.mark.parametrize("env", STACKS)
def test_outputs(synth: Synth, env: str) -> None:
    outputs = set(synth.json(env)["output"])
    for spec in ALL_TABLES:
        key = spec.logical_name.replace("-", "_")
        assert {f"{key}_table_name", f"{key}_table_arn"} <= outputs
    assert {
        "payload_bucket",
        "state_key_arn",
        "pipeline_client_policy_arn",
        "recovery_worker_policy_arn",
    } <= outputs
    assert ("alarm_topic_arn" in outputs) is (env != "local")


def _plan_row(env: str) -> list[tuple[str, dict[str, Any]]]:
    """The plan's table for one environment, as (resource type, properties) for cdktf's matchers."""
    s = ENVIRONMENTS[env]
    rows: list[tuple[str, dict[str, Any]]] = [
        (
            "aws_dynamodb_table",
            {"billing_mode": s.billing, "deletion_protection_enabled": s.deletion_protection},
        ),
        ("aws_dynamodb_table", {"point_in_time_recovery": {"enabled": True}}),
        ("aws_kms_key", {"enable_key_rotation": True}),
        ("aws_s3_bucket_public_access_block", {"block_public_acls": True, "restrict_public_buckets": True}),
        ("aws_s3_bucket_versioning", {"versioning_configuration": {"status": "Enabled"}}),
        ("aws_iam_policy", {"name": f"t-developer-{env}-pipeline-client"}),
        ("aws_iam_policy", {"name": f"t-developer-{env}-recovery-worker"}),
        ("aws_iam_policy", {"name": f"t-developer-{env}-metrics-collector"}),
    ]
    if s.table_encryption == "customer-managed":
        rows.append(("aws_dynamodb_table", {"server_side_encryption": {"enabled": True}}))
    if s.alarms:
        rows += [
            ("aws_sns_topic", {"name": f"t-developer-{env}-alarms"}),
            ("aws_cloudwatch_dashboard", {"dashboard_name": f"t-developer-{env}"}),
            ("aws_cloudwatch_metric_alarm", {"alarm_name": f"t-developer-{env}-recovery-backlog"}),
        ]
    if s.provisioned:
        rows.append(("aws_appautoscaling_policy", {"policy_type": "TargetTrackingScaling"}))
    return rows


@pytest.mark.parametrize("env", STACKS)
def test_each_stack_matches_the_plans_row_with_cdktf_matchers(
    synth: Synth, cdktf_testing: Any, env: str
) -> None:
    text = synth.text(env)
    for resource_type, properties in _plan_row(env):
        assert cdktf_testing.to_have_resource_with_properties(text, resource_type, properties), (
            resource_type,
            properties,
        )
    present = {
        t: cdktf_testing.to_have_resource(text, t) for t in ("aws_sns_topic", "aws_appautoscaling_target")
    }
    assert present == {"aws_sns_topic": env != "local", "aws_appautoscaling_target": env == "prod"}
    # A matcher that should fail does: the assertions above are not vacuous.
    assert not cdktf_testing.to_have_resource_with_properties(
        text, "aws_dynamodb_table", {"deletion_protection_enabled": env != "prod"}
    )
