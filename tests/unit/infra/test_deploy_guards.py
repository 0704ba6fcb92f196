"""Deploying to a real account: remote state by construction, the account guard, the state bucket created
once, and the clients' env file from the stack's outputs (#16, items 2-5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from tdev_infra import output, preflight
from tdev_infra.settings import BackendSettings, from_environment
from tdev_state import ConfigurationError, StateConfig
from tdev_state.testing import moto_aws

from .synth import DEV_ACCOUNT, PROD_ACCOUNT, PROD_ROLE, Synth

MOTO_ACCOUNT = "123456789012"  # the account moto's credentials belong to


def test_dev_and_prod_state_bucket_is_named_from_account_and_region() -> None:
    """Without TDEV_TF_STATE_BUCKET, dev and prod still get an S3 backend: a bucket named from the account
    and region; local keeps local state."""
    settings, backend = from_environment({"TDEV_DEV_ACCOUNT_ID": DEV_ACCOUNT, "TDEV_DEV_REGION": "eu-west-1"})
    by_env = {s.env: s for s in settings}
    assert backend.bucket_for(by_env["dev"]) == f"t-developer-tfstate-{DEV_ACCOUNT}-eu-west-1"
    assert backend.region_for(by_env["dev"]) == "eu-west-1"
    assert backend.bucket_for(by_env["prod"]) == "t-developer-tfstate-unset-account-us-east-1"
    assert backend.bucket_for(by_env["local"]) is None
    assert BackendSettings(bucket="given").bucket_for(by_env["prod"]) == "given"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TDEV_DEV_ACCOUNT_ID", "12345"),
        ("TDEV_PROD_ACCOUNT_ID", "abcdefghijkl"),
        ("TDEV_DEV_ROLE_ARN", "admin"),
    ],
)
def test_bad_account_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        from_environment({variable: value})


def test_the_provider_refuses_other_accounts(synth: Synth) -> None:
    """dev and prod carry allowed_account_ids; prod assumes its deploy role; local has neither."""
    dev = synth.json("dev")["provider"]["aws"][0]
    prod = synth.json("prod")["provider"]["aws"][0]
    local = synth.json("local")["provider"]["aws"][0]
    assert dev["allowed_account_ids"] == [DEV_ACCOUNT]
    assert "assume_role" not in dev
    assert prod["allowed_account_ids"] == [PROD_ACCOUNT]
    assert prod["assume_role"] == [{"role_arn": PROD_ROLE, "session_name": "tdev-deploy"}]
    assert "allowed_account_ids" not in local


def test_outputs_hand_the_clients_their_configuration(synth: Synth, tmp_path: Path) -> None:
    """Every client variable comes from an output the stack declares; the rendered file configures a
    client (TDEV_RETENTION_DAYS = the stack's retention, so items never outlive payloads)."""
    declared = set(synth.json("dev")["output"])
    assert set(output.CLIENT_VARIABLES.values()) <= declared
    values = {
        "environment": "dev",
        "region": "us-east-1",
        "payload_bucket": f"t-developer-dev-payloads-{DEV_ACCOUNT}",
        "state_key_arn": f"arn:aws:kms:us-east-1:{DEV_ACCOUNT}:key/abc",
        "retention_days": 30,
    }
    saved = tmp_path / "outputs.json"
    saved.write_text(
        json.dumps({k: {"value": v, "type": "string", "sensitive": False} for k, v in values.items()})
    )
    env_file = tmp_path / "dev.env"
    assert output.main(["dev", "--outputs-json", str(saved), "--out", str(env_file)]) == 0
    variables = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")
    )
    assert set(variables) == set(output.CLIENT_VARIABLES)
    config = StateConfig.from_env(variables)
    assert (config.env, config.payload_bucket, config.retention_days) == ("dev", values["payload_bucket"], 30)
    assert config.kms_key_id == values["state_key_arn"]
    saved.write_text(json.dumps({"environment": {"value": "dev"}}))
    assert output.main(["dev", "--outputs-json", str(saved), "--out", str(env_file)]) == 2


def test_preflight_stops_wrong_accounts_and_missing_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any Terraform call: no account configured, another account's credentials, no state bucket —
    each is exit 2 with what to do; `--bootstrap` creates the bucket as documented, then it passes."""
    with moto_aws():
        monkeypatch.delenv("TDEV_DEV_ACCOUNT_ID", raising=False)
        assert preflight.main(["dev"]) == 2
        monkeypatch.setenv("TDEV_DEV_ACCOUNT_ID", DEV_ACCOUNT)
        assert preflight.main(["dev"]) == 2  # moto's credentials are for another account
        monkeypatch.setenv("TDEV_DEV_ACCOUNT_ID", MOTO_ACCOUNT)
        assert preflight.main(["dev"]) == 2  # no state bucket yet
        assert preflight.main(["dev", "--bootstrap"]) == 0  # the bucket is made; the worker settings lack
        assert preflight.main(["dev"]) == 2
        monkeypatch.setenv("TDEV_DEV_SUBNETS", "subnet-a,subnet-b")
        monkeypatch.setenv("TDEV_DEV_SECURITY_GROUPS", "sg-a")
        monkeypatch.setenv("TDEV_DEV_RESUMER_URL", "https://pipeline/resume")
        assert preflight.main(["dev"]) == 0
        s3 = boto3.client("s3", region_name="us-east-1")
        bucket = f"t-developer-tfstate-{MOTO_ACCOUNT}-us-east-1"
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values())
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert preflight.main(["dev", "--bootstrap"]) == 0  # idempotent


def test_preflight_messages_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with moto_aws():
        monkeypatch.delenv("TDEV_PROD_ACCOUNT_ID", raising=False)
        preflight.main(["prod"])
        assert "set TDEV_PROD_ACCOUNT_ID" in capsys.readouterr().err
        monkeypatch.setenv("TDEV_PROD_ACCOUNT_ID", PROD_ACCOUNT)
        preflight.main(["prod"])
        err = capsys.readouterr().err
        assert f"lives in account {PROD_ACCOUNT}" in err
        assert f"for account {MOTO_ACCOUNT}" in err
        monkeypatch.setenv("TDEV_PROD_ACCOUNT_ID", MOTO_ACCOUNT)
        preflight.main(["prod"])
        assert "make bootstrap ENV=prod" in capsys.readouterr().err
        assert preflight.main(["local"]) == 0


# --- the worker service (#16, item 1) ---------------------------------------------------------------------


def _container(synth: Synth, env: str) -> dict[str, Any]:
    task = synth.resources(env, "aws_ecs_task_definition")["worker_task"]
    definitions = task["container_definitions"]
    # cdktf renders Fn.jsonencode as a Terraform expression; its argument is the list we built.
    assert definitions.startswith("${jsonencode(")
    return task


@pytest.mark.parametrize(("env", "replicas"), [("dev", 1), ("prod", 2)])
def test_the_worker_runs_as_a_fargate_service(synth: Synth, env: str, replicas: int) -> None:
    """dev and prod: repository, cluster, task definition, service with the settings' replicas, no public
    IP, the configured subnets and security groups, a circuit breaker; local has none of it."""
    service = synth.resources(env, "aws_ecs_service")["worker_service"]
    assert service["desired_count"] == replicas
    assert service["launch_type"] == "FARGATE"
    assert service["network_configuration"]["assign_public_ip"] is False
    assert service["network_configuration"]["subnets"] == [f"subnet-{env}1", f"subnet-{env}2"]
    assert service["network_configuration"]["security_groups"] == [f"sg-{env}"]
    assert service["deployment_circuit_breaker"] == {"enable": True, "rollback": True}
    assert set(synth.resources(env, "aws_ecr_repository")) == {"worker_repository"}
    assert set(synth.resources(env, "aws_ecs_cluster")) == {"worker_cluster"}
    logs = synth.resources(env, "aws_cloudwatch_log_group")["worker_logs"]
    assert logs["retention_in_days"] >= (30 if env == "dev" else 90)
    for kind in ("aws_ecs_service", "aws_ecr_repository", "aws_ecs_task_definition"):
        assert synth.resources("local", kind) == {}


def test_the_task_carries_the_workers_grants_and_configuration(synth: Synth) -> None:
    """The task role has exactly the worker's policy; the container's environment is the clients'
    configuration (make output's keys) plus the worker's own; its health check is the image's /healthz
    probe; the backlog metric goes to the log group the alarm reads through EMF."""
    from tdev_infra.settings import WORKER_ENVIRONMENT

    attachments = synth.resources("dev", "aws_iam_role_policy_attachment")
    task_policy = attachments["worker_task_policy"]
    assert task_policy["policy_arn"] == "${aws_iam_policy.policy_recovery_worker.arn}"
    assert task_policy["role"] == "${aws_iam_role.worker_task_role.name}"
    execution = attachments["worker_execution_policy"]
    assert execution["policy_arn"].endswith("service-role/AmazonECSTaskExecutionRolePolicy")
    task = _container(synth, "dev")
    text = task["container_definitions"]
    assert set(output.CLIENT_VARIABLES) <= set(WORKER_ENVIRONMENT)
    for name in WORKER_ENVIRONMENT:
        assert f'"{name}"' in text, name
    assert "https://pipeline.dev.example/resume" in text
    assert '"TDEV_CLOUDWATCH_NAMESPACE"' in text
    assert "tdev_recovery.healthcheck" in text
    assert '"readonlyRootFilesystem" = true' in text  # Terraform's jsonencode() argument, in HCL
    assert task["task_role_arn"] == "${aws_iam_role.worker_task_role.arn}"
    assert task["requires_compatibilities"] == ["FARGATE"]


def test_make_image_without_a_builder_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Docker or Podman on PATH: exit 2 and what to install, before any AWS call."""
    from tdev_infra import image

    monkeypatch.setenv("PATH", str(tmp_path))
    assert image.main(["dev"]) == 2
    assert "needs a container builder: install Docker or Podman" in capsys.readouterr().err


def test_setup_needs_no_host_mode_runtime_where_docker_answers(tmp_path: Path) -> None:
    """`make setup` runs `localstack.sh install`: with a Docker engine answering (a stand-in `docker`
    whose `info` succeeds) and no Java, npm or Python 3.12 on PATH, it succeeds without installing."""
    import os
    import subprocess

    fake = tmp_path / "bin"
    fake.mkdir()
    docker = fake / "docker"
    docker.write_text('#!/bin/sh\n[ "$1" = info ] && exit 0\nexit 1\n')
    docker.chmod(0o755)
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        ["bash", str(root / "localstack" / "localstack.sh"), "install"],
        env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "TDEV_LOCALSTACK_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "no host-mode runtime to install" in done.stderr + done.stdout
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


def test_the_cdk_terrain_migration_is_one_command(tmp_path: Path) -> None:
    """`make cdktn-migrate` rewrites exactly the packages, imports, CLI and test import (on a copy here);
    no CDKTF name is left in the files it owns."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[3]
    files = (
        "infra/src/tdev_infra/_cdktf.py",
        "infra/pyproject.toml",
        "infra/cdktf.sh",
        "tests/unit/infra/conftest.py",
        "infra/src/tdev_infra/stack.py",
    )
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, tmp_path / name)
    subprocess.run(
        ["bash", str(root / "infra" / "migrate-to-cdktn.sh"), str(tmp_path)], check=True, timeout=30
    )
    module = (tmp_path / files[0]).read_text()
    assert "from cdktn import (" in module
    assert "cdktn_provider_aws.dynamodb_table" in module
    assert "cdktf" not in module.split('"""', 2)[2]  # the docstring may tell the story; the code may not
    deps = (tmp_path / files[1]).read_text()
    assert '"cdktn==0.24.0"' in deps
    assert '"cdktn-provider-aws==25.8.1"' in deps
    assert "cdktf" not in deps
    assert '"cdktn-cli@$CDKTF_CLI_VERSION"' in (tmp_path / files[2]).read_text()
    assert "from cdktn import Testing" in (tmp_path / files[3]).read_text()
    assert '"ManagedBy": "cdktn"' in (tmp_path / files[4]).read_text()


@pytest.mark.parametrize(("env", "replicas", "account"), [("dev", 1, DEV_ACCOUNT), ("prod", 2, PROD_ACCOUNT)])
def test_new_resources_with_cdktf_matchers(
    synth: Synth, cdktf_testing: Any, env: str, replicas: int, account: str
) -> None:
    """The same, through cdktf's Testing matchers: every new resource and setting of #16."""
    text = synth.text(env)
    expected = [
        ("aws_ecr_repository", {"name": f"t-developer-{env}-recovery-worker"}),
        ("aws_ecs_cluster", {"name": f"t-developer-{env}-recovery-worker"}),
        ("aws_cloudwatch_log_group", {"name": f"/t-developer/{env}/recovery-worker"}),
        (
            "aws_ecs_task_definition",
            {"family": f"t-developer-{env}-recovery-worker", "network_mode": "awsvpc"},
        ),
        ("aws_ecs_service", {"desired_count": replicas, "launch_type": "FARGATE"}),
        ("aws_iam_role", {"name": f"t-developer-{env}-recovery-worker-task"}),
        ("aws_iam_role", {"name": f"t-developer-{env}-recovery-worker-execution"}),
    ]
    for resource_type, properties in expected:
        assert cdktf_testing.to_have_resource_with_properties(text, resource_type, properties), resource_type
    assert cdktf_testing.to_have_provider_with_properties(text, "aws", {"allowed_account_ids": [account]})
    assert not cdktf_testing.to_have_resource(synth.text("local"), "aws_ecs_service")
