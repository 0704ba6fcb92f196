"""Payloads: a pure codec (value ⇄ bytes), content-addressed chunks, sealing as a wrapper over the codec,
accumulated-input references, and a `PayloadStore` that decides placement (inline / S3 / chunks) and owns
the payload bucket, each call's payload scope and orphan cleanup.

Built on `tdev_state.storage` only; the run stores build on it. The serializer knows bytes, the store knows
places: no layer below the store knows the codec's byte format.
"""

from tdev_state.payloads._codec import EncodedPayload, PayloadContext
from tdev_state.payloads._codec import describe as describe_payload
from tdev_state.payloads._inputs import KnownOutputs, with_references
from tdev_state.payloads._inputs import references as output_references
from tdev_state.payloads._inputs import resolve as resolve_outputs
from tdev_state.payloads._inputs import substitute as substitute_outputs
from tdev_state.payloads._marks import LossyValue, OutputRef
from tdev_state.payloads._objects import PayloadWrite, current_write
from tdev_state.payloads._sealing import SEALED_TAG, CipherStats, FieldCipher
from tdev_state.payloads._store import PayloadStore

__all__ = [
    "SEALED_TAG",
    "CipherStats",
    "EncodedPayload",
    "FieldCipher",
    "KnownOutputs",
    "LossyValue",
    "OutputRef",
    "PayloadContext",
    "PayloadStore",
    "PayloadWrite",
    "current_write",
    "describe_payload",
    "output_references",
    "resolve_outputs",
    "substitute_outputs",
    "with_references",
]
