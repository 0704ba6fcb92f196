"""`python -m tdev_infra.preflight ENV [--bootstrap]`: what must hold before Terraform touches dev or prod.

`make diff|deploy|destroy ENV=dev|prod` run this first and stop, before any Terraform call, when:

- the environment's account is not configured (`TDEV_<ENV>_ACCOUNT_ID`), or the credentials in use (after
  assuming `TDEV_<ENV>_ROLE_ARN`, if set) belong to another account — a dev deploy with prod credentials
  in the shell must never start;
- the Terraform state bucket does not exist — Terraform would otherwise fall over mid-init, or a
  misconfigured bucket name would silently start a fresh, empty state;
- the worker service's network and resumer settings are missing (`TDEV_<ENV>_SUBNETS`,
  `TDEV_<ENV>_SECURITY_GROUPS`, `TDEV_<ENV>_RESUMER_URL`).

`--bootstrap` (`make bootstrap ENV=dev`) creates the state bucket once, with plain AWS calls: versioned,
encrypted, TLS-only, public access blocked. It is idempotent. Exit codes: 0 ok, 2 something to fix first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tdev_infra.settings import BackendSettings, EnvironmentSettings, from_environment


class PreflightError(Exception):
    """Something to fix before Terraform may run; the message says what and how."""


def session_for(settings: EnvironmentSettings) -> boto3.session.Session:
    """The session Terraform's provider will act as: the ambient credentials, or the deploy role."""
    session = boto3.session.Session(region_name=settings.region)
    if not settings.deploy_role_arn:
        return session
    creds = session.client("sts").assume_role(
        RoleArn=settings.deploy_role_arn, RoleSessionName="tdev-preflight"
    )
    c = creds["Credentials"]
    return boto3.session.Session(
        region_name=settings.region,
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
    )


def verify_account(settings: EnvironmentSettings, session: boto3.session.Session) -> None:
    """Raise PreflightError unless the environment's account is configured and the credentials are its."""
    env = settings.env
    if not settings.account_id:
        raise PreflightError(
            f"ENV={env} has no account: set TDEV_{env.upper()}_ACCOUNT_ID to the 12-digit id of the account "
            f"it lives in (the stack then refuses any other account's credentials)"
        )
    actual = session.client("sts").get_caller_identity()["Account"]
    if actual != settings.account_id:
        raise PreflightError(
            f"ENV={env} lives in account {settings.account_id}, but the credentials in use are for "
            f"account {actual}: switch profile (AWS_PROFILE) or role (TDEV_{env.upper()}_ROLE_ARN); "
            "nothing was changed"
        )


def check(settings: EnvironmentSettings, backend: BackendSettings, session: boto3.session.Session) -> str:
    """Raise PreflightError unless the account, the state bucket and the worker's settings are right;
    the bucket's name."""
    env = settings.env
    verify_account(settings, session)
    bucket = backend.bucket_for(settings)
    assert bucket is not None  # dev and prod always have one
    try:
        session.client("s3").head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise PreflightError(
                f"the Terraform state bucket {bucket} does not exist: create it once with "
                f"`make bootstrap ENV={env}` (or set TDEV_TF_STATE_BUCKET to an existing one); "
                "nothing was changed"
            ) from None
        raise PreflightError(f"cannot read the Terraform state bucket {bucket}: {code or exc}") from None
    missing = [
        f"TDEV_{env.upper()}_{name}"
        for name, value in (
            ("SUBNETS", settings.worker_subnets),
            ("SECURITY_GROUPS", settings.worker_security_groups),
            ("RESUMER_URL", settings.resumer_url),
        )
        if not value
    ]
    if settings.worker_replicas and missing:
        raise PreflightError(
            f"the recovery worker's service needs {', '.join(missing)}: the subnets and security groups "
            "(egress only) its tasks run in, and the pipeline's resume endpoint; nothing was changed"
        )
    return bucket


def bootstrap(settings: EnvironmentSettings, backend: BackendSettings, session: boto3.session.Session) -> str:
    """Create the state bucket (idempotent): versioned, encrypted, TLS-only, public access blocked."""
    bucket = backend.bucket_for(settings)
    if bucket is None:
        raise PreflightError("the local stack keeps its state in a local file: nothing to bootstrap")
    region = backend.region_for(settings)
    s3 = session.client("s3", region_name=region)
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}
            ]
        },
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    arn = f"arn:aws:s3:::{bucket}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [arn, f"{arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    return bucket


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit per outcome
    parser = argparse.ArgumentParser(
        prog="python -m tdev_infra.preflight", description=__doc__.split("\n")[0]
    )
    parser.add_argument("env", choices=("local", "dev", "prod"))
    parser.add_argument("--bootstrap", action="store_true", help="create the state bucket first")
    args = parser.parse_args(argv)
    try:
        all_settings, backend = from_environment()
        settings = next(s for s in all_settings if s.env == args.env)
        if settings.localstack:
            print(f"ENV={args.env}: LocalStack, local state: nothing to check", file=sys.stderr)
            return 0
        session = session_for(settings)
        if args.bootstrap:
            verify_account(settings, session)  # never create a bucket in the wrong account
            bucket = bootstrap(settings, backend, session)
            print(
                f"state bucket {bucket} is ready (versioned, encrypted, TLS-only, private)", file=sys.stderr
            )
            return 0
        bucket = check(settings, backend, session)
    except PreflightError as exc:
        print(f"make: stopped before Terraform: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            "make: stopped before Terraform: no AWS credentials (set AWS_PROFILE or log in)", file=sys.stderr
        )
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"make: stopped before Terraform: AWS refused a check: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a settings error (ConfigurationError) or anything else: one line, exit 2
        print(f"make: stopped before Terraform: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"ENV={args.env}: account {settings.account_id}, state in s3://{bucket}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
