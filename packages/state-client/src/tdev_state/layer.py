"""The state client's layer: the DynamoDB door, the payload store built on it, and the usage bus.

One per client, shared by its stores. The run stores write items through the door (a `DynamoLayer` is a
`DynamoDoor`), payloads through `payloads`, and usage events through `usage`. A component that needs tables
and nothing else (the metrics collector) takes a plain `tdev_state.storage.DynamoDoor` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3

from tdev_state.config import StateConfig
from tdev_state.payloads import PayloadStore
from tdev_state.storage import DynamoDoor
from tdev_state.usage import UsageEmitter

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client


class DynamoLayer(DynamoDoor):
    """DynamoDB, payload S3 and usage events for one environment. Create one per process and share it.

    Clients may be injected (moto, LocalStack, a pre-configured session); otherwise they are created once,
    from the config. boto3 clients are thread-safe, so one layer serves every thread.
    """

    def __init__(
        self,
        config: StateConfig,
        *,
        session: boto3.session.Session | None = None,
        dynamodb: DynamoDBClient | None = None,
        s3: S3Client | None = None,
    ) -> None:
        super().__init__(config, session=session, dynamodb=dynamodb)
        #: Payload placement, the payload bucket, sealing and each call's payload scope.
        self.payloads = PayloadStore(self, s3=s3)
        #: Usage events of this client's stores (a no-op until a sink, the metrics collector, attaches).
        self.usage = UsageEmitter()
