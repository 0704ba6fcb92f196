"""The DynamoDB door: marshalling, error translation, retries, capacity metering and expressions.

The bottom layer of `tdev_state`. It knows DynamoDB only — no S3, no KMS, no payloads, no usage events — so
a component that needs a table and nothing else (the metrics collector) takes a `DynamoDoor`. The rule:
run stores → `tdev_state.payloads` → `tdev_state.storage`, never back.
"""

from tdev_state.storage._door import DynamoDoor, QueryPage, TransactAction
from tdev_state.storage._expr import Expr
from tdev_state.storage._marshal import Item, safe_repr, to_dynamo
from tdev_state.storage._meter import CapacityMeter
from tdev_state.storage._refusals import CancellationReason, ConditionFailed, TransactionCancelled

__all__ = [
    "CancellationReason",
    "CapacityMeter",
    "ConditionFailed",
    "DynamoDoor",
    "Expr",
    "Item",
    "QueryPage",
    "TransactAction",
    "TransactionCancelled",
    "safe_repr",
    "to_dynamo",
]
