"""Per-environment settings (the plan's table) and the few knobs read from the environment at synth time.

Pure Python — no CDKTF import — so tests and docs can read the settings without paying for jsii.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from tdev_state.exceptions import ConfigurationError
from tdev_state.schema import TABLE_NAME_PREFIX

TableEncryption = Literal["aws-owned", "aws-managed", "customer-managed"]
MissingData = Literal["breaching", "notBreaching", "ignore", "missing"]

#: The namespace the recovery worker's `--cloudwatch-namespace` writes RecoveryBacklog to (EMF).
RECOVERY_NAMESPACE = "T-Developer"
LOCALSTACK_ENDPOINT = "http://localhost:4566"

#: The worker container's environment: client configuration (as `make output` hands it to clients) plus
#: the worker's own settings. The infra contract test checks the client part against the clients' keys.
#: Declared here, not in worker_service, so a test reads it without importing the provider (jsii, ~1.6 GB).
WORKER_ENVIRONMENT = (
    "TDEV_ENV",
    "AWS_REGION",
    "TDEV_PAYLOAD_BUCKET",
    "TDEV_KMS_KEY_ID",
    "TDEV_RETENTION_DAYS",
    "TDEV_TARGET",
    "TDEV_RESUMER",
    "TDEV_CLOUDWATCH_NAMESPACE",
    "TDEV_HTTP_PORT",
    "TDEV_LOG_LEVEL",
)


@dataclass(frozen=True)
class EnvironmentSettings:
    """Everything that differs between local, dev and prod."""

    env: str
    billing: Literal["PAY_PER_REQUEST", "PROVISIONED"]
    deletion_protection: bool
    table_encryption: TableEncryption
    alarms: bool
    localstack: bool = False
    point_in_time_recovery: bool = True
    #: Provisioned capacity (prod): the floor autoscaling never goes below, for the table and every GSI.
    read_capacity: int = 5
    write_capacity: int = 5
    autoscaling_max: int = 200
    autoscaling_target_percent: float = 70.0
    #: Days a finished run's items live (the clients' TDEV_RETENTION_DAYS: set it to this value). Payload
    #: objects live `tdev_state.config.payload_expiry_days(retention_days)`: items never outlive them.
    retention_days: int = 30
    #: The recovery backlog alarm: more than this many failed/stalled runs for 3 periods of 5 minutes.
    backlog_threshold: int = 10
    #: prod treats "no worker reported" as an alarm; dev may run without a worker.
    backlog_missing_data: MissingData = "notBreaching"
    region: str = "us-east-1"
    localstack_endpoint: str = LOCALSTACK_ENDPOINT
    #: Who may assume the per-component roles (a service such as ecs-tasks.amazonaws.com, or an IAM ARN).
    task_role_principal: str | None = None
    #: The AWS account this environment lives in (TDEV_<ENV>_ACCOUNT_ID): the provider's
    #: allowed_account_ids, so credentials for another account stop Terraform before any change.
    account_id: str | None = None
    #: A role Terraform assumes to deploy this environment (TDEV_<ENV>_ROLE_ARN), if any.
    deploy_role_arn: str | None = None
    #: The recovery worker's Fargate service (not on LocalStack): replicas, and where the tasks run —
    #: existing subnets and security groups (egress only), given per environment, never a new VPC.
    worker_replicas: int = 0
    worker_subnets: tuple[str, ...] = ()
    worker_security_groups: tuple[str, ...] = ()
    #: The pipeline's resume endpoint the worker hands runs to (TDEV_<ENV>_RESUMER_URL).
    resumer_url: str | None = None
    #: The worker image tag `make image` pushed (TDEV_WORKER_IMAGE_TAG).
    worker_image_tag: str = "latest"

    @property
    def stack_name(self) -> str:
        return f"{TABLE_NAME_PREFIX}-{self.env}"

    @property
    def provisioned(self) -> bool:
        return self.billing == "PROVISIONED"


ENVIRONMENTS: dict[str, EnvironmentSettings] = {
    "local": EnvironmentSettings(
        env="local",
        billing="PAY_PER_REQUEST",
        deletion_protection=False,
        table_encryption="aws-owned",
        alarms=False,
        localstack=True,
        retention_days=7,
    ),
    "dev": EnvironmentSettings(
        env="dev",
        billing="PAY_PER_REQUEST",
        deletion_protection=False,
        table_encryption="aws-managed",
        alarms=True,
        worker_replicas=1,
    ),
    "prod": EnvironmentSettings(
        env="prod",
        billing="PROVISIONED",
        deletion_protection=True,
        table_encryption="customer-managed",
        alarms=True,
        retention_days=90,
        backlog_missing_data="breaching",
        worker_replicas=2,
    ),
}


@dataclass(frozen=True)
class BackendSettings:
    """Where Terraform keeps state: a local file, or S3 with native locking (Terraform >= 1.10)."""

    bucket: str | None = None
    region: str | None = None
    key_prefix: str = TABLE_NAME_PREFIX

    def key(self, env: str) -> str:
        return f"{self.key_prefix}/{env}.tfstate"

    def bucket_for(self, settings: EnvironmentSettings) -> str | None:
        """The state bucket of an environment: None (local state) for the LocalStack stack; the configured
        bucket; else one named from the account and region, which `make bootstrap ENV=…` creates."""
        if settings.localstack:
            return None
        if self.bucket:
            return self.bucket
        return f"{TABLE_NAME_PREFIX}-tfstate-{settings.account_id or 'unset-account'}-{settings.region}"

    def region_for(self, settings: EnvironmentSettings) -> str:
        return self.region or settings.region


def from_environment(
    environ: Mapping[str, str] | None = None,
) -> tuple[list[EnvironmentSettings], BackendSettings]:
    """The three environments with synth-time overrides, and the backend, from environment variables.

    TDEV_INFRA_REGION (default us-east-1), TDEV_LOCALSTACK_ENDPOINT, TDEV_TASK_ROLE_PRINCIPAL (roles are
    created only when set), per environment TDEV_<ENV>_ACCOUNT_ID / TDEV_<ENV>_ROLE_ARN / TDEV_<ENV>_REGION,
    and TDEV_TF_STATE_BUCKET / TDEV_TF_STATE_REGION / TDEV_TF_STATE_KEY_PREFIX (dev and prod always keep
    their state in S3: this bucket, or one named from the account and region).
    """
    env = os.environ if environ is None else environ
    overrides: dict[str, str] = {}
    if env.get("TDEV_INFRA_REGION"):
        overrides["region"] = env["TDEV_INFRA_REGION"]
    if env.get("TDEV_LOCALSTACK_ENDPOINT"):
        endpoint = env["TDEV_LOCALSTACK_ENDPOINT"]
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"TDEV_LOCALSTACK_ENDPOINT={endpoint!r} is not a URL; use e.g. http://localhost:4566"
            )
        overrides["localstack_endpoint"] = endpoint
    if env.get("TDEV_TASK_ROLE_PRINCIPAL"):
        overrides["task_role_principal"] = env["TDEV_TASK_ROLE_PRINCIPAL"]
    settings = []
    for base in ENVIRONMENTS.values():
        mine: dict[str, str] = dict(overrides)
        prefix = f"TDEV_{base.env.upper()}_"
        account = env.get(prefix + "ACCOUNT_ID")
        if account:
            if not (len(account) == 12 and account.isdigit()):
                raise ConfigurationError(
                    f"{prefix}ACCOUNT_ID={account!r:.40} is not a 12-digit AWS account id"
                )
            mine["account_id"] = account
        if env.get(prefix + "ROLE_ARN"):
            role = env[prefix + "ROLE_ARN"]
            if not role.startswith("arn:aws") or ":role/" not in role:
                raise ConfigurationError(f"{prefix}ROLE_ARN={role!r:.80} is not an IAM role ARN")
            mine["deploy_role_arn"] = role
        if env.get(prefix + "REGION"):
            mine["region"] = env[prefix + "REGION"]
        worker: dict[str, object] = {}
        for name, field_name in (
            ("SUBNETS", "worker_subnets"),
            ("SECURITY_GROUPS", "worker_security_groups"),
        ):
            if env.get(prefix + name):
                worker[field_name] = tuple(x.strip() for x in env[prefix + name].split(",") if x.strip())
        if env.get(prefix + "RESUMER_URL"):
            worker["resumer_url"] = env[prefix + "RESUMER_URL"]
        if env.get("TDEV_WORKER_IMAGE_TAG"):
            worker["worker_image_tag"] = env["TDEV_WORKER_IMAGE_TAG"]
        settings.append(replace(base, **mine, **worker))  # type: ignore[arg-type]
    backend = BackendSettings(
        bucket=env.get("TDEV_TF_STATE_BUCKET") or None,
        region=env.get("TDEV_TF_STATE_REGION") or None,
        key_prefix=env.get("TDEV_TF_STATE_KEY_PREFIX") or TABLE_NAME_PREFIX,
    )
    return settings, backend
