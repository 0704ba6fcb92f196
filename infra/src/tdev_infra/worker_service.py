"""The recovery worker, running where `make deploy` puts it: an ECR repository, an ECS cluster and a Fargate
service (dev 1 replica, prod 2), in dev and prod.

- The image is `packages/recovery-worker/Dockerfile`'s, pushed by `make image ENV=…` to this repository.
- The task role carries exactly the worker's policy (its declared grants, `tdev_recovery.access`); the
  execution role only pulls the image and writes the log stream.
- The container is configured from the stack itself (tables by env, the payload bucket, the key, the
  retention) plus the resumer URL, a deployment setting: `WORKER_ENVIRONMENT` names every variable.
- Its health check is `/healthz` through the image's probe (`python -m tdev_recovery.healthcheck`); its
  log lines go to a log group with the environment's retention, and the worker writes `RecoveryBacklog` in
  CloudWatch's embedded metric format there, so the backlog alarm has data from the first sweep.
- Networking is the account's: subnets and security groups (egress only) are settings, no public IP.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tdev_infra import _cdktf as tf
from tdev_infra.settings import RECOVERY_NAMESPACE, WORKER_ENVIRONMENT

if TYPE_CHECKING:
    from tdev_infra.stack import StateStack

EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
HTTP_PORT = 8080


def _trust_ecs_tasks() -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


def add_worker_service(stack: StateStack) -> tf.EcsService:
    """Add the repository, cluster, roles, log group, task definition and service to `stack`."""
    s = stack.settings
    name = f"{s.stack_name}-recovery-worker"
    repository = tf.EcrRepository(
        stack,
        "worker_repository",
        name=name,
        image_tag_mutability="MUTABLE",
        image_scanning_configuration=tf.EcrRepositoryImageScanningConfiguration(scan_on_push=True),
        encryption_configuration=[
            tf.EcrRepositoryEncryptionConfiguration(encryption_type="KMS", kms_key=stack.key.arn)
        ],
        force_delete=not s.deletion_protection,
    )
    stack.skip(
        repository,
        "CKV_AWS_51",
        "`make image` pushes the version tag and moves `latest`; the service pins TDEV_WORKER_IMAGE_TAG",
    )
    cluster = tf.EcsCluster(
        stack,
        "worker_cluster",
        name=name,
        setting=[tf.EcsClusterSetting(name="containerInsights", value="enabled")],
    )
    logs = tf.CloudwatchLogGroup(
        stack,
        "worker_logs",
        name=f"/t-developer/{s.env}/recovery-worker",
        retention_in_days=_log_retention(s.retention_days),
    )
    stack.skip(logs, "CKV_AWS_158", "log lines hold run ids, counts and errors, never payloads")
    stack.skip(logs, "CKV_AWS_338", "retention follows the items' retention; a year would outlive the runs")
    execution = tf.IamRole(
        stack, "worker_execution_role", name=f"{name}-execution", assume_role_policy=_trust_ecs_tasks()
    )
    tf.IamRolePolicyAttachment(
        stack, "worker_execution_policy", role=execution.name, policy_arn=EXECUTION_POLICY
    )
    task_role = tf.IamRole(
        stack, "worker_task_role", name=f"{name}-task", assume_role_policy=_trust_ecs_tasks()
    )
    tf.IamRolePolicyAttachment(
        stack, "worker_task_policy", role=task_role.name, policy_arn=stack.policies["recovery-worker"].arn
    )
    environment = {
        "TDEV_ENV": s.env,
        "AWS_REGION": s.region,
        "TDEV_PAYLOAD_BUCKET": stack.bucket.bucket,
        "TDEV_KMS_KEY_ID": stack.key.arn,
        "TDEV_RETENTION_DAYS": str(s.retention_days),
        "TDEV_TARGET": "aws",
        "TDEV_RESUMER": s.resumer_url or "",
        "TDEV_CLOUDWATCH_NAMESPACE": RECOVERY_NAMESPACE,
        "TDEV_HTTP_PORT": str(HTTP_PORT),
        "TDEV_LOG_LEVEL": "info",
    }
    assert tuple(environment) == WORKER_ENVIRONMENT
    container: dict[str, Any] = {
        "name": "recovery-worker",
        "image": f"{repository.repository_url}:{s.worker_image_tag}",
        "essential": True,
        "readonlyRootFilesystem": True,
        # A task volume on /tmp (the worker writes its port file there): the root file system is read-only.
        "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}],  # noqa: S108
        "environment": [{"name": k, "value": v} for k, v in environment.items()],
        "portMappings": [{"containerPort": HTTP_PORT, "protocol": "tcp"}],
        "healthCheck": {
            "command": ["CMD", "python", "-m", "tdev_recovery.healthcheck"],
            "interval": 15,
            "timeout": 3,
            "retries": 3,
            "startPeriod": 20,
        },
        "stopTimeout": 30,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": logs.name,
                "awslogs-region": s.region,
                "awslogs-stream-prefix": "worker",
            },
        },
    }
    task = tf.EcsTaskDefinition(
        stack,
        "worker_task",
        family=name,
        requires_compatibilities=["FARGATE"],
        network_mode="awsvpc",
        cpu="256",
        memory="512",
        execution_role_arn=execution.arn,
        task_role_arn=task_role.arn,
        runtime_platform=tf.EcsTaskDefinitionRuntimePlatform(
            operating_system_family="LINUX", cpu_architecture="X86_64"
        ),
        volume=[tf.EcsTaskDefinitionVolume(name="tmp")],
        container_definitions=tf.Fn.jsonencode([container]),
    )
    return tf.EcsService(
        stack,
        "worker_service",
        name=name,
        cluster=cluster.arn,
        task_definition=task.arn,
        desired_count=s.worker_replicas,
        launch_type="FARGATE",
        network_configuration=tf.EcsServiceNetworkConfiguration(
            subnets=list(s.worker_subnets),
            security_groups=list(s.worker_security_groups),
            assign_public_ip=False,
        ),
        deployment_circuit_breaker=tf.EcsServiceDeploymentCircuitBreaker(enable=True, rollback=True),
        deployment_minimum_healthy_percent=50,
        deployment_maximum_percent=200,
        propagate_tags="SERVICE",
        enable_execute_command=False,
    )


def _log_retention(days: int) -> int:
    """The smallest CloudWatch Logs retention (it takes fixed values) that covers `days`."""
    allowed = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731)
    return next(d for d in allowed if d >= days)
