"""The payload store: where a payload lives — inline, one S3 object, or chunks of its run.

The codec (`_codec`) knows bytes; this store knows places. It decides placement from the configuration
(`offload_threshold`, `compress_threshold`, the item budget), seals what the configuration marks sensitive
(`_sealing` wraps the codec's bytes; the codec never sees a key), and owns the payload bucket and each call's
payload scope (`_objects`).

A field the configuration marks sensitive (`StateConfig.encrypt_fields`) is sealed after compression, so it
is stored as `B` with the sealed tag, or offloaded as a sealed S3 object whose name and checksum are those
of the ciphertext (never a hash of the plaintext, which would let a reader confirm a guess). Its associated
data is the item's table, id, agent and field (`PayloadContext`).

Every read is checked: an offloaded payload against the SHA-256 recorded in its item (after each chunk
against its own), a sealed one by its authentication tag; a mismatch is a PayloadIntegrityError, never wrong
data.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tdev_state.config import StateConfig
from tdev_state.exceptions import ConfigurationError, PayloadIntegrityError, PayloadTooLargeError
from tdev_state.payloads import _chunks, _codec, _jsonform
from tdev_state.payloads._codec import EncodedPayload, JSONValue, PayloadContext
from tdev_state.payloads._objects import PayloadObjects, PayloadWrite, current_write
from tdev_state.payloads._sealing import SEALED_TAG, FieldCipher
from tdev_state.storage import DynamoDoor, Item

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Room kept in an item for its keys and non-payload attributes.
_ITEM_OVERHEAD = 8 * 1024


class PayloadStore:
    """Payloads of one client: encode and place them, read and check them, take back a refused call's
    objects. Built on the DynamoDB door (for its session, error boundary and meter), never on a run store."""

    def __init__(self, door: DynamoDoor, *, s3: S3Client | None = None) -> None:
        self.config: StateConfig = door.config
        self._door = door
        self.objects = PayloadObjects(door, s3=s3)

    # --- what the client and the tests look at -------------------------------------------------------

    @property
    def s3(self) -> S3Client | None:
        """The payload bucket's client (None when no bucket is configured)."""
        return self.objects.s3

    @property
    def discarded_objects(self) -> int:
        """Payload objects deleted because the call that created them was refused."""
        return self.objects.discarded_objects

    @property
    def orphaned_objects(self) -> int:
        """Payload objects left to the bucket's lifecycle (outcome unknown, or cleanup failed)."""
        return self.objects.orphaned_objects

    @functools.cached_property
    def cipher(self) -> FieldCipher:
        """The field cipher (KMS data keys, AES-GCM); ConfigurationError when no KMS key is configured."""
        if not self.config.kms_key_id:
            raise ConfigurationError(
                "a sealed payload needs a KMS key: set kms_key_id (TDEV_KMS_KEY_ID) to the key it was "
                "sealed with"
            )
        return FieldCipher(
            self._door.extra_client("kms"),
            self.config.kms_key_id,
            env=self.config.env,
            max_age_seconds=self.config.data_key_max_age_seconds,
            max_uses=self.config.data_key_max_uses,
        )

    def scope(self, run_items: Callable[[], list[Item]]) -> AbstractContextManager[PayloadWrite]:
        """One public call's payload objects: kept when it is acknowledged, taken back when it is refused
        (see `PayloadObjects.scope`; `run_items` reads the run's items consistently)."""
        return self.objects.scope(run_items)

    # --- writing --------------------------------------------------------------------------------------

    def encode(
        self,
        value: JSONValue,
        *,
        field: str,
        object_key: str,
        context: PayloadContext,
        share_of_item: float = 0.5,
        lossy: bool = False,
        seal: bool | None = None,
    ) -> EncodedPayload:
        """Encode `value` for the attribute `field`; offload to S3 under `object_key` when too large.

        `share_of_item` is the part of the item budget this field may use when no bucket is configured (an
        execution item holds an input and an output, so each gets half). `seal` overrides the
        configuration's choice (an accumulated input that carries a sealed output is sealed too)."""
        raw, warnings = _jsonform.to_json(value, field=field, lossy=lossy, encoders=self.config.encoders)
        return self.store_json(
            raw,
            field=field,
            object_key=object_key,
            context=context,
            share_of_item=share_of_item,
            warnings=warnings,
            seal=seal,
        )

    def store_json(
        self,
        raw: bytes,
        *,
        field: str,
        object_key: str,
        context: PayloadContext,
        share_of_item: float = 0.5,
        warnings: tuple[str, ...] = (),
        seal: bool | None = None,
    ) -> EncodedPayload:
        """Place canonical JSON text (from `_jsonform.to_json`, or built from its parts by `_inputs`)."""
        config = self.config
        raw_digest = hashlib.sha256(raw).hexdigest()
        run = object_key.split("/", 1)[0]
        sealed = config.should_encrypt(field, context.agent) if seal is None else seal
        packed: bytes | None = None
        if config.payload_bucket and not sealed and len(raw) > config.offload_threshold:
            packed = _codec.compressed_within(raw, config.offload_threshold)
            if packed is None:
                return self._offload_chunked(raw, raw_digest, run=run, warnings=warnings)
        elif len(raw) >= config.compress_threshold:
            packed = _codec.compress(raw)
        stored, form = _codec.inline_form(raw, packed, compress_threshold=config.compress_threshold)
        if sealed:
            inner = _codec.sealable(stored, raw)
            stored, form = self.cipher.seal(inner, context.aad(field), field=field), form + "+sealed"
        size = len(stored) if isinstance(stored, bytes) else len(raw)

        if config.payload_bucket and size > config.offload_threshold and not sealed:
            return self._offload_chunked(raw, raw_digest, run=run, warnings=warnings)
        if config.payload_bucket and size > config.offload_threshold:
            assert isinstance(stored, bytes)
            return self._offload_sealed(
                stored, raw, raw_digest, field=field, object_key=object_key, warnings=warnings
            )
        budget = int((config.max_item_bytes - _ITEM_OVERHEAD) * share_of_item)
        if size > budget:
            raise PayloadTooLargeError(
                f"{field} is {len(raw):,} bytes of JSON ({size:,} bytes stored), over the {budget:,}-byte "
                "share of a DynamoDB item it may use; configure a payload bucket (TDEV_PAYLOAD_BUCKET / "
                "payload_bucket) so large payloads go to S3. Nothing was written."
            )
        return EncodedPayload(
            value=stored,
            json_bytes=len(raw),
            stored_bytes=size,
            form=form,
            digest=raw_digest,
            warnings=warnings,
        )

    def _offload_sealed(
        self,
        stored: bytes,
        raw: bytes,
        raw_digest: str,
        *,
        field: str,
        object_key: str,
        warnings: tuple[str, ...],
    ) -> EncodedPayload:
        """A sealed payload, whole, as one object. Sealed objects are named and checked by their ciphertext:
        a plaintext hash would be an oracle."""
        config = self.config
        digest = hashlib.sha256(stored).hexdigest()
        write = current_write()
        write_id = write.id if write is not None else secrets.token_hex(8)
        key = f"{config.payload_prefix}{object_key}/{field}-{digest}.{write_id}.json.z"
        self.objects.put_object(key, stored, metadata={"sha256": digest, "json-bytes": str(len(raw))})
        ref: dict[str, Any] = {
            "bucket": config.payload_bucket,
            "key": key,
            "sha256": digest,
            "bytes": len(raw),
            "sealed": True,
            "write": write_id,
        }
        return EncodedPayload(
            value={"s3": ref},
            json_bytes=len(raw),
            stored_bytes=len(stored),
            form="s3+sealed",
            digest=raw_digest,
            warnings=warnings,
        )

    def _offload_chunked(
        self, raw: bytes, digest: str, *, run: str, warnings: tuple[str, ...]
    ) -> EncodedPayload:
        """Store a large payload's big subtrees as chunks of its run (see `_chunks`); the item keeps the
        skeleton. A chunk an acknowledged write of this process stored is referred to, not PUT again; new
        ones are named with this call's write id (private to it until it is acknowledged)."""
        config = self.config
        bucket = config.payload_bucket
        assert bucket is not None
        prefix = f"{config.payload_prefix}{run}/chunks/"
        write = current_write()
        write_id = write.id if write is not None else secrets.token_hex(8)
        pending: dict[str, str] = write.chunks if write is not None else {}
        chunk_names = self.objects.chunk_names
        written = [0]

        def store(sha256: str, text: bytes) -> str:
            known = pending.get(prefix + sha256) or chunk_names.get(prefix + sha256)
            if known is not None:
                return known
            name = f"{sha256}.{write_id}"
            body = _chunks.pack(text)
            self.objects.put_object(
                f"{prefix}{name}.json.z", body, metadata={"sha256": sha256, "json-bytes": str(len(text))}
            )
            pending[prefix + sha256] = name
            written[0] += len(body)
            return name

        skeleton = _chunks.split(raw, min_bytes=config.chunk_min_bytes, store=store)
        if (
            len(skeleton) > config.offload_threshold
            and len(_chunks.pack(skeleton, 6)) > config.offload_threshold
        ):
            skeleton = _chunks.reference(store(hashlib.sha256(skeleton).hexdigest(), skeleton))
        if write is None:  # outside a payload scope there is nothing to take back: share at once
            chunk_names.publish(pending)
        tree: str | bytes = skeleton.decode("utf-8")
        if len(skeleton) >= config.compress_threshold:
            tree = _chunks.pack(skeleton, 6)
        ref = {"bucket": bucket, "prefix": prefix, "tree": tree, "bytes": len(raw), "sha256": digest}
        ref["write"] = write_id
        return EncodedPayload(
            value={"chunks": ref},
            json_bytes=len(raw),
            stored_bytes=written[0] + len(tree),
            form="chunks",
            digest=digest,
            warnings=warnings,
        )

    # --- shared objects -------------------------------------------------------------------------------

    def objects_of(self, stored: Any) -> list[tuple[str, str]]:
        """The (bucket, key) of every S3 object a stored payload attribute refers to: its offloaded object,
        or its chunks — nested ones too, which costs a GET of each chunk that refers to others."""
        if not isinstance(stored, Mapping):
            return []
        if isinstance(stored.get("s3"), Mapping):
            return [(str(stored["s3"]["bucket"]), str(stored["s3"]["key"]))]
        ref = stored.get("chunks")
        if not isinstance(ref, Mapping):
            return []
        bucket, prefix, tree = str(ref["bucket"]), str(ref["prefix"]), ref["tree"]
        skeleton = (
            tree.encode("utf-8") if isinstance(tree, str) else _chunks.unpack(bytes(tree), field="tree")
        )
        found: dict[str, None] = {}
        todo = _chunks.names(skeleton)
        while todo:
            name = todo.pop()
            key = f"{prefix}{name}.json.z"
            if key in found:
                continue
            found[key] = None
            body = _chunks.unpack(self.objects.get_object(bucket, key), field="chunk")
            todo.extend(_chunks.names(body))
        return [(bucket, key) for key in found]

    def keep_alive(self, stored: Any, *, created_before: datetime) -> int:
        """Restart the lifecycle age of each object `stored` refers to that was created before
        `created_before` (`PayloadObjects.refresh`); the number copied."""
        return sum(
            self.objects.refresh(bucket, key, created_before=created_before)
            for bucket, key in self.objects_of(stored)
        )

    # --- reading --------------------------------------------------------------------------------------

    def decode(self, stored: Any, *, field: str, context: PayloadContext) -> JSONValue:
        """The original value of a stored payload attribute (fetching from S3, opening sealed ones, checking
        every checksum). An accumulated input's references to earlier outputs come back as `OutputRef`s."""
        raw = self.stored_json(stored, field=field, context=context)
        return None if raw is None else _codec.loads(raw, field)

    def stored_json(self, stored: Any, *, field: str, context: PayloadContext) -> bytes | None:
        """The canonical JSON text a stored payload attribute holds (None for no payload), checked."""
        if stored is None:
            return None
        if isinstance(stored, str):
            return stored.encode("utf-8")
        if isinstance(stored, bytes | bytearray):
            return self._unpack(bytes(stored), field, context)
        if isinstance(stored, Mapping) and isinstance(stored.get("chunks"), Mapping):
            return self._joined(stored["chunks"], field)
        if isinstance(stored, Mapping) and isinstance(stored.get("s3"), Mapping):
            ref = stored["s3"]
            body = self.objects.get_object(str(ref["bucket"]), str(ref["key"]))
            checked = body if ref.get("sealed") else None
            raw = self._unpack(body, field, context)
            if hashlib.sha256(checked if checked is not None else raw).hexdigest() != ref.get("sha256"):
                raise PayloadIntegrityError(
                    f"{field}: s3://{ref['bucket']}/{ref['key']} does not match its recorded SHA-256; "
                    "the object was changed or truncated outside this client"
                )
            return raw
        raise PayloadIntegrityError(f"{field}: stored value of type {type(stored).__name__} is not a payload")

    def _joined(self, ref: Mapping[str, Any], field: str) -> bytes:
        """A chunked payload's JSON text: its skeleton with every chunk spliced back, checked."""
        bucket, prefix, tree = str(ref["bucket"]), str(ref["prefix"]), ref["tree"]
        skeleton = tree.encode("utf-8") if isinstance(tree, str) else _chunks.unpack(bytes(tree), field=field)
        fetched: dict[str, bytes] = {}

        def fetch(name: str) -> bytes:
            if name not in fetched:
                body = self.objects.get_object(bucket, f"{prefix}{name}.json.z")
                fetched[name] = _chunks.unpack(body, field=field)
            return fetched[name]

        # One SHA-256 over the whole payload checks the skeleton and every chunk; only when it fails is each
        # chunk checked against its name, to say which one was changed.
        raw = _chunks.join(skeleton, fetch, field=field, check_each=not ref.get("sha256"))
        if hashlib.sha256(raw).hexdigest() != ref.get("sha256"):
            _chunks.join(skeleton, fetch, field=field)
            raise PayloadIntegrityError(
                f"{field}: the payload assembled from s3://{bucket}/{prefix} does not match the SHA-256 "
                "recorded in its item; its skeleton or a chunk was changed outside this client, nothing "
                "was returned"
            )
        return raw

    def _unpack(self, body: bytes, field: str, context: PayloadContext) -> bytes:
        """An inline or object body's JSON text, opening the sealed envelope first when there is one."""
        if body.startswith(SEALED_TAG):
            return _codec.unpack(
                self.cipher.open(body, context.aad(field), field=field), field=field, opened=True
            )
        return _codec.unpack(body, field=field)
