"""Deploying to a real account: remote state by construction, the account guard, the state bucket created
once, and the clients' env file from the stack's outputs (#16, items 2-5)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tdev_infra import output, preflight
from tdev_infra.settings import BackendSettings, from_environment
from tdev_state import ConfigurationError, StateConfig

from ..conftest import moto_aws
from .conftest import DEV_ACCOUNT, PROD_ACCOUNT, PROD_ROLE, Synth

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
        assert preflight.main(["dev", "--bootstrap"]) == 0
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
