"""Client-side envelope encryption of payload fields: a KMS data key, AES-256-GCM, the item's keys as AAD.

Why by hand, on `cryptography`, and not the AWS Database Encryption SDK: the SDK encrypts whole items through
its own client and does not support UpdateItem on encrypted or signed attributes — and every agent
transition here is an UpdateItem inside a transaction. The AWS Encryption SDK's message format would add a
signature and a header per field. What is left to write is small: this module.

Sealed form: 0x02 | version 0x01 | len(key blob) (2 bytes) | KMS key blob | nonce (12) | ciphertext+tag

- One data key (GenerateDataKey, AES-256) seals many fields, within bounds: at most `max_uses` fields and
  `max_age` seconds, so a process makes one KMS call per burst instead of one per write. Random 96-bit
  nonces stay far below GCM's 2^32-messages-per-key limit at these bounds.
- Opened keys are cached by their blob (bounded LRU with the same age bound), so reading a run's nine
  agents costs one KMS Decrypt, not nine.
- The associated data binds a ciphertext to its table, item and field: moved or swapped into another
  item or attribute, it fails to open (PayloadIntegrityError), never decrypts to someone else's data.
- The KMS encryption context names the environment and purpose, so CloudTrail shows what a key was used
  for and a key policy can require it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tdev_state.exceptions import EncryptionError, PayloadIntegrityError, StorageUnavailableError

SEALED_TAG = b"\x02"
_VERSION = 1
_NONCE = 12
_INTEGRITY_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
_UNAVAILABLE_CODES = frozenset({"KMSInternalException", "ThrottlingException", "LimitExceededException"})


@dataclass
class _DataKey:
    plaintext: bytes
    blob: bytes
    created: float
    uses: int = 0


@dataclass(frozen=True)
class CipherStats:
    """KMS calls made and fields sealed/opened, for benchmarks and logs."""

    generate_calls: int
    decrypt_calls: int
    sealed: int
    opened: int


class FieldCipher:
    """Seals and opens payload fields under one KMS key. Thread-safe; one per client."""

    def __init__(
        self,
        kms: Any,
        key_id: str,
        *,
        env: str,
        max_age_seconds: float = 300.0,
        max_uses: int = 1000,
        cache_size: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kms = kms
        self.key_id = key_id
        self._context = {"t-developer:env": env, "t-developer:purpose": "payload-field"}
        self._max_age = max_age_seconds
        self._max_uses = max_uses
        self._cache_size = cache_size
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _DataKey | None = None
        self._opened: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._generate_calls = self._decrypt_calls = self._sealed = self._opened_count = 0

    def stats(self) -> CipherStats:
        return CipherStats(self._generate_calls, self._decrypt_calls, self._sealed, self._opened_count)

    def seal(self, plaintext: bytes, aad: bytes, *, field: str) -> bytes:
        """Encrypt `plaintext` bound to `aad`; the result starts with SEALED_TAG."""
        key = self._data_key(field)
        nonce = os.urandom(_NONCE)
        body = AESGCM(key.plaintext).encrypt(nonce, plaintext, aad)
        with self._lock:
            self._sealed += 1
        return SEALED_TAG + bytes([_VERSION]) + len(key.blob).to_bytes(2, "big") + key.blob + nonce + body

    def open(self, sealed: bytes, aad: bytes, *, field: str) -> bytes:
        """Decrypt what `seal` made for the same `aad`; PayloadIntegrityError if anything does not match."""
        if len(sealed) < 4 or sealed[:1] != SEALED_TAG or sealed[1] != _VERSION:
            raise PayloadIntegrityError(f"{field}: not a sealed payload (unknown tag or version)")
        blob_len = int.from_bytes(sealed[2:4], "big")
        blob = sealed[4 : 4 + blob_len]
        nonce = sealed[4 + blob_len : 4 + blob_len + _NONCE]
        body = sealed[4 + blob_len + _NONCE :]
        if len(blob) != blob_len or len(nonce) != _NONCE or len(body) < 16:
            raise PayloadIntegrityError(f"{field}: sealed payload is truncated")
        key = self._open_key(blob, field)
        try:
            plaintext = AESGCM(key).decrypt(nonce, body, aad)
        except InvalidTag:
            raise PayloadIntegrityError(
                f"{field}: ciphertext does not authenticate — it was altered, or belongs to another item "
                "or field; nothing was returned"
            ) from None
        with self._lock:
            self._opened_count += 1
        return plaintext

    # --- data keys ----------------------------------------------------------------------------------------

    def _data_key(self, field: str) -> _DataKey:
        with self._lock:
            key = self._current
            now = self._clock()
            if key is None or key.uses >= self._max_uses or now - key.created >= self._max_age:
                response = self._call(
                    "GenerateDataKey",
                    field,
                    KeyId=self.key_id,
                    KeySpec="AES_256",
                    EncryptionContext=self._context,
                )
                self._generate_calls += 1
                key = self._current = _DataKey(response["Plaintext"], response["CiphertextBlob"], now)
                self._remember(key.blob, key.plaintext, now)
            key.uses += 1
            return key

    def _open_key(self, blob: bytes, field: str) -> bytes:
        now = self._clock()
        with self._lock:
            hit = self._opened.get(blob)
            if hit is not None and now - hit[1] < self._max_age:
                self._opened.move_to_end(blob)
                return hit[0]
        # KeyId pins the key: a blob made under any other key is refused by KMS, not silently opened.
        response = self._call(
            "Decrypt", field, CiphertextBlob=blob, KeyId=self.key_id, EncryptionContext=self._context
        )
        plaintext: bytes = response["Plaintext"]
        with self._lock:
            self._decrypt_calls += 1
            self._remember(blob, plaintext, now)
        return plaintext

    def _remember(self, blob: bytes, plaintext: bytes, now: float) -> None:
        self._opened[blob] = (plaintext, now)
        self._opened.move_to_end(blob)
        while len(self._opened) > self._cache_size:
            self._opened.popitem(last=False)

    def _call(self, op: str, field: str, **kwargs: Any) -> dict[str, Any]:
        fn = self._kms.generate_data_key if op == "GenerateDataKey" else self._kms.decrypt
        try:
            result: dict[str, Any] = fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _INTEGRITY_CODES:
                raise PayloadIntegrityError(
                    f"{field}: KMS refused the data key ({code}): it was made under another key than "
                    f"{self.key_id}, or altered; nothing was returned"
                ) from None
            if code in _UNAVAILABLE_CODES:
                raise StorageUnavailableError(f"KMS {op} for {field} failed after retries ({code})") from exc
            raise EncryptionError(
                f"KMS {op} on {self.key_id} for {field} was refused ({code}: {message}); this caller needs "
                "kms:GenerateDataKey and kms:Decrypt on the key (the pipeline-client policy grants both)"
            ) from None
        except BotoCoreError as exc:
            raise StorageUnavailableError(f"KMS {op} for {field} failed: {exc}") from exc
        return result
