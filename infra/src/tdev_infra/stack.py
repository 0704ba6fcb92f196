"""One Terraform stack per environment: tables from the schema, key, payload bucket, scaling, IAM; alarms
and the dashboard come from `monitoring`, the worker's service from `worker_service`.

Every table attribute comes from `tdev_state.schema` (the contract test compares the synthesized JSON with
it), every IAM statement from the components' declared grants (`tdev_state.access` and friends). Checks
that checkov would fail on purpose are skipped per resource with the reason next to the code that causes
them; tests/unit/infra fails on any other failed check.
"""

from __future__ import annotations

import json
from typing import Any

from tdev_infra import _cdktf as tf
from tdev_infra.monitoring import add_alarms
from tdev_infra.policies import COMPONENTS, ResourceArns, construct_id, policy_document
from tdev_infra.settings import BackendSettings, EnvironmentSettings
from tdev_infra.worker_service import add_worker_service
from tdev_state.access import ComponentAccess
from tdev_state.config import PAYLOAD_PREFIX, payload_expiry_days
from tdev_state.schema import ALL_TABLES, STREAM_VIEW_TYPE, TableSpec

LOCALSTACK_SERVICES = ("dynamodb", "s3", "kms", "iam", "sts", "sns", "cloudwatch", "applicationautoscaling")


class StateStack(tf.TerraformStack):
    """The T-Developer state platform in one environment."""

    def __init__(self, scope: tf.Construct, settings: EnvironmentSettings, backend: BackendSettings) -> None:
        super().__init__(scope, settings.stack_name)
        self.settings = settings
        self._skips: dict[Any, list[str]] = {}
        self._provider()
        self._backend(backend)
        self.caller = tf.DataAwsCallerIdentity(self, "caller")
        self.partition = tf.DataAwsPartition(self, "partition")
        self.key = self._key()
        self.tables = {spec.logical_name: self._table(spec) for spec in ALL_TABLES}
        self.bucket = self._payload_bucket()
        self.topic = add_alarms(self) if settings.alarms else None
        self.policies = {c.component: self._policy(c) for c in COMPONENTS}
        # The worker runs where `make deploy` puts it (not on LocalStack, whose ECS is a Pro feature).
        self.worker = None if settings.localstack else add_worker_service(self)
        self._outputs()
        for resource, reasons in self._skips.items():
            # Terraform ignores "//" keys; checkov's JSON runner reads no inline skips, so the infra tests
            # read these and accept a failed check only where one names it, with its reason.
            resource.add_override("//.checkov_skip", reasons)

    # --- provider and backend -----------------------------------------------------------------------------

    def _provider(self) -> None:
        s = self.settings
        tags = [
            tf.AwsProviderDefaultTags(
                tags={"Project": "t-developer", "Environment": s.env, "ManagedBy": "cdktf"}
            )
        ]
        if s.localstack:
            # LocalStack: test credentials, every service on its one endpoint, path-style S3, no account or
            # credential lookups against real AWS.
            endpoint = s.localstack_endpoint
            tf.AwsProvider(
                self,
                "aws",
                region=s.region,
                access_key="test",
                secret_key="test",  # noqa: S106 - LocalStack's documented fake credentials
                skip_credentials_validation=True,
                skip_metadata_api_check="true",
                skip_requesting_account_id=True,
                s3_use_path_style=True,
                endpoints=[tf.AwsProviderEndpoints(**dict.fromkeys(LOCALSTACK_SERVICES, endpoint))],
                default_tags=tags,
            )
        else:
            # The account guard: credentials for any other account stop Terraform before it changes
            # anything (plan and apply both refuse); a deploy role, when set, is assumed for every call.
            tf.AwsProvider(
                self,
                "aws",
                region=s.region,
                default_tags=tags,
                allowed_account_ids=[s.account_id] if s.account_id else None,
                assume_role=[tf.AwsProviderAssumeRole(role_arn=s.deploy_role_arn, session_name="tdev-deploy")]
                if s.deploy_role_arn
                else None,
            )

    def _backend(self, backend: BackendSettings) -> None:
        # The local stack's state describes a LocalStack that lives and dies on one machine: it stays local.
        # dev and prod always keep theirs in S3 (cdktf.out is throw-away); `make bootstrap` creates it.
        bucket = backend.bucket_for(self.settings)
        if bucket is not None:
            tf.S3Backend(
                self,
                bucket=bucket,
                key=backend.key(self.settings.env),
                region=backend.region_for(self.settings),
                encrypt=True,
            )
            # Native S3 locking (Terraform >= 1.10); the DynamoDB lock table is deprecated.
            self.add_override("terraform.backend.s3.use_lockfile", True)
        else:
            tf.LocalBackend(self, path=f"terraform.{self.settings.stack_name}.tfstate")

    def skip(self, resource: Any, check: str, reason: str) -> None:
        """Record a deliberate checkov skip, with why, on the resource it is about."""
        self._skips.setdefault(resource, []).append(f"{check}: {reason}")

    # --- key ----------------------------------------------------------------------------------------------

    def _key(self) -> tf.KmsKey:
        s = self.settings
        account_root = f"arn:{self.partition.partition}:iam::{self.caller.account_id}:root"
        statements: list[dict[str, Any]] = [
            {
                # The account administers the key; who may *use* it is then decided by IAM policies.
                "Sid": "AccountAdministers",
                "Effect": "Allow",
                "Principal": {"AWS": account_root},
                "Action": "kms:*",
                "Resource": "*",
            }
        ]
        if s.alarms:
            statements.append(
                {
                    # CloudWatch publishes alarm notifications to the topic, which this key encrypts.
                    "Sid": "CloudWatchAlarmsPublish",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudwatch.amazonaws.com"},
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                    "Resource": "*",
                    "Condition": {"StringEquals": {"aws:SourceAccount": self.caller.account_id}},
                }
            )
        key = tf.KmsKey(
            self,
            "state_key",
            description=f"T-Developer {s.env}: payload bucket, alarm topic"
            + (", state tables" if s.table_encryption == "customer-managed" else ""),
            enable_key_rotation=True,
            deletion_window_in_days=30 if s.env == "prod" else 7,
            policy=json.dumps({"Version": "2012-10-17", "Statement": statements}),
        )
        tf.KmsAlias(self, "state_key_alias", name=f"alias/{s.stack_name}-state", target_key_id=key.key_id)
        return key

    # --- tables -------------------------------------------------------------------------------------------

    def _table(self, spec: TableSpec) -> tf.DynamodbTable:
        s = self.settings
        request = spec.create_table_request(s.env)  # the same fields LocalStack tables are created with
        capacity: dict[str, Any] = (
            {"read_capacity": s.read_capacity, "write_capacity": s.write_capacity} if s.provisioned else {}
        )
        gsis = [
            tf.DynamodbTableGlobalSecondaryIndex(
                name=g["IndexName"],
                hash_key=str(_key_of(g["KeySchema"], "HASH")),
                range_key=_key_of(g["KeySchema"], "RANGE"),
                projection_type=g["Projection"]["ProjectionType"],
                non_key_attributes=g["Projection"].get("NonKeyAttributes"),
                **capacity,
            )
            for g in request.get("GlobalSecondaryIndexes", [])
        ]
        lsis = [
            tf.DynamodbTableLocalSecondaryIndex(
                name=i["IndexName"],
                range_key=str(_key_of(i["KeySchema"], "RANGE")),
                projection_type=i["Projection"]["ProjectionType"],
                non_key_attributes=i["Projection"].get("NonKeyAttributes"),
            )
            for i in request.get("LocalSecondaryIndexes", [])
        ]
        encryption = {
            "aws-owned": None,
            "aws-managed": tf.DynamodbTableServerSideEncryption(enabled=True),
            "customer-managed": tf.DynamodbTableServerSideEncryption(enabled=True, kms_key_arn=self.key.arn),
        }[s.table_encryption]
        table = tf.DynamodbTable(
            self,
            construct_id(spec),
            name=request["TableName"],
            billing_mode=s.billing,
            hash_key=_key_of(request["KeySchema"], "HASH"),
            range_key=_key_of(request["KeySchema"], "RANGE"),
            attribute=[
                tf.DynamodbTableAttribute(name=a["AttributeName"], type=a["AttributeType"])
                for a in request["AttributeDefinitions"]
            ],
            global_secondary_index=gsis or None,
            local_secondary_index=lsis or None,
            ttl=tf.DynamodbTableTtl(attribute_name=spec.ttl_attribute, enabled=True)
            if spec.ttl_attribute
            else None,
            point_in_time_recovery=tf.DynamodbTablePointInTimeRecovery(enabled=s.point_in_time_recovery),
            server_side_encryption=encryption,
            deletion_protection_enabled=s.deletion_protection,
            stream_enabled=spec.stream or None,
            stream_view_type=STREAM_VIEW_TYPE if spec.stream else None,
            # Autoscaling owns the capacity numbers once the table exists; Terraform must not reset them. GSI
            # capacities live inside global_secondary_index, so that block is ignored too (as
            # terraform-aws-modules/dynamodb-table does for autoscaled tables): a new index in prod is
            # added with a targeted change, see docs/operations.md.
            lifecycle=tf.TerraformResourceLifecycle(
                ignore_changes=["read_capacity", "write_capacity", "global_secondary_index"]
            )
            if s.provisioned
            else None,
            **capacity,
        )
        if s.table_encryption == "aws-owned":
            self.skip(table, "CKV_AWS_119", "local runs on LocalStack: AWS-owned key, no CMK to manage")
        elif s.table_encryption == "aws-managed":
            self.skip(table, "CKV_AWS_119", "dev uses the AWS-managed key by plan; prod uses the CMK")
        if s.provisioned:
            self._autoscaling(
                spec, table, [g["IndexName"] for g in request.get("GlobalSecondaryIndexes", [])]
            )
        return table

    def _autoscaling(self, spec: TableSpec, table: tf.DynamodbTable, gsis: list[str]) -> None:
        s = self.settings
        targets = [("", f"table/{table.name}", "table")] + [
            (f"_{g.replace('-', '_')}", f"table/{table.name}/index/{g}", "index") for g in gsis
        ]
        for suffix, resource_id, kind in targets:
            for mode, metric in (
                ("Read", "DynamoDBReadCapacityUtilization"),
                ("Write", "DynamoDBWriteCapacityUtilization"),
            ):
                name = f"{construct_id(spec)}{suffix}_{mode.lower()}"
                target = tf.AppautoscalingTarget(
                    self,
                    f"{name}_target",
                    service_namespace="dynamodb",
                    resource_id=resource_id,
                    scalable_dimension=f"dynamodb:{kind}:{mode}CapacityUnits",
                    min_capacity=s.read_capacity if mode == "Read" else s.write_capacity,
                    max_capacity=s.autoscaling_max,
                )
                tf.AppautoscalingPolicy(
                    self,
                    f"{name}_policy",
                    name=f"{s.stack_name}-{spec.logical_name}{suffix.replace('_', '-')}-{mode.lower()}",
                    policy_type="TargetTrackingScaling",
                    service_namespace=target.service_namespace,
                    resource_id=target.resource_id,
                    scalable_dimension=target.scalable_dimension,
                    target_tracking_scaling_policy_configuration=tf.AppautoscalingPolicyTargetTrackingScalingPolicyConfiguration(
                        target_value=s.autoscaling_target_percent,
                        predefined_metric_specification=tf.AppautoscalingPolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecification(
                            predefined_metric_type=metric
                        ),
                    ),
                )

    # --- payload bucket -----------------------------------------------------------------------------------

    def _payload_bucket(self) -> tf.S3Bucket:
        s = self.settings
        bucket = tf.S3Bucket(
            self,
            "payloads",
            bucket=f"{s.stack_name}-payloads-{self.caller.account_id}",
            force_destroy=s.env != "prod",
        )
        self.skip(bucket, "CKV_AWS_18", "payload reads/writes are already traced per run in the state tables")
        self.skip(bucket, "CKV_AWS_144", "payloads expire after the retention period; a run is re-runnable")
        self.skip(bucket, "CKV2_AWS_62", "nothing consumes payload events; objects are read by key only")
        tf.S3BucketOwnershipControls(
            self,
            "payloads_ownership",
            bucket=bucket.id,
            rule=tf.S3BucketOwnershipControlsRule(object_ownership="BucketOwnerEnforced"),
        )
        tf.S3BucketPublicAccessBlock(
            self,
            "payloads_public_access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
        )
        tf.S3BucketServerSideEncryptionConfigurationA(
            self,
            "payloads_encryption",
            bucket=bucket.id,
            rule=[
                tf.S3BucketServerSideEncryptionConfigurationRuleA(
                    apply_server_side_encryption_by_default=tf.S3BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultA(
                        sse_algorithm="aws:kms", kms_master_key_id=self.key.arn
                    ),
                    # One KMS call per bucket key period instead of per object: cheaper, fewer throttles.
                    bucket_key_enabled=True,
                )
            ],
        )
        tf.S3BucketVersioningA(
            self,
            "payloads_versioning",
            bucket=bucket.id,
            versioning_configuration=tf.S3BucketVersioningVersioningConfiguration(status="Enabled"),
        )
        tf.S3BucketLifecycleConfiguration(
            self,
            "payloads_lifecycle",
            bucket=bucket.id,
            rule=[
                tf.S3BucketLifecycleConfigurationRule(
                    id="payload-retention",
                    status="Enabled",
                    filter=[tf.S3BucketLifecycleConfigurationRuleFilter(prefix="")],
                    expiration=[
                        tf.S3BucketLifecycleConfigurationRuleExpiration(
                            days=payload_expiry_days(s.retention_days)
                        )
                    ],
                    noncurrent_version_expiration=[
                        tf.S3BucketLifecycleConfigurationRuleNoncurrentVersionExpiration(noncurrent_days=1)
                    ],
                    abort_incomplete_multipart_upload=[
                        tf.S3BucketLifecycleConfigurationRuleAbortIncompleteMultipartUpload(
                            days_after_initiation=1
                        )
                    ],
                )
            ],
        )
        tf.S3BucketPolicy(
            self,
            "payloads_tls_only",
            bucket=bucket.id,
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "DenyInsecureTransport",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [bucket.arn, f"{bucket.arn}/*"],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                }
            ),
        )
        return bucket

    # --- IAM ----------------------------------------------------------------------------------------------

    def _policy(self, access: ComponentAccess) -> tf.IamPolicy:
        s = self.settings
        arns = ResourceArns(
            table=lambda spec: self.tables[spec.logical_name].arn,
            payload_objects=f"{self.bucket.arn}/{PAYLOAD_PREFIX}*",
            key=self.key.arn,
        )
        policy = tf.IamPolicy(
            self,
            f"policy_{access.component.replace('-', '_')}",
            name=f"{s.stack_name}-{access.component}",
            description=access.description,
            policy=json.dumps(policy_document(access, arns)),
        )
        if s.task_role_principal:
            principal = (
                {"AWS": s.task_role_principal}
                if ":" in s.task_role_principal
                else {"Service": s.task_role_principal}
            )
            role = tf.IamRole(
                self,
                f"role_{access.component.replace('-', '_')}",
                name=f"{s.stack_name}-{access.component}",
                assume_role_policy=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}
                        ],
                    }
                ),
            )
            tf.IamRolePolicyAttachment(
                self,
                f"role_{access.component.replace('-', '_')}_policy",
                role=role.name,
                policy_arn=policy.arn,
            )
        return policy

    def _outputs(self) -> None:
        for logical, table in self.tables.items():
            key = logical.replace("-", "_")
            tf.TerraformOutput(self, f"{key}_table_name", value=table.name)
            tf.TerraformOutput(self, f"{key}_table_arn", value=table.arn)
        for component, policy in self.policies.items():
            tf.TerraformOutput(self, f"{component.replace('-', '_')}_policy_arn", value=policy.arn)
        # What the clients need (`make output` writes them as an env file: tdev_infra.output).
        tf.TerraformOutput(self, "environment", value=self.settings.env)
        tf.TerraformOutput(self, "region", value=self.settings.region)
        tf.TerraformOutput(self, "payload_bucket", value=self.bucket.bucket)
        tf.TerraformOutput(self, "state_key_arn", value=self.key.arn)
        tf.TerraformOutput(self, "retention_days", value=self.settings.retention_days)
        tf.TerraformOutput(
            self, "payload_expiry_days", value=payload_expiry_days(self.settings.retention_days)
        )
        if self.topic is not None:
            tf.TerraformOutput(self, "alarm_topic_arn", value=self.topic.arn)
        if self.worker is not None:
            tf.TerraformOutput(self, "worker_service_name", value=self.worker.name)
            tf.TerraformOutput(self, "worker_cluster_arn", value=self.worker.cluster)


def _key_of(schema: list[dict[str, str]], kind: str) -> str | None:
    return next((k["AttributeName"] for k in schema if k["KeyType"] == kind), None)
