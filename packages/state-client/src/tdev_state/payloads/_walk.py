"""The walk behind `_jsonform.to_json`: one pass over a payload that converts, checks and escapes it."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import re
import sys
import types
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from tdev_state.exceptions import ValidationError
from tdev_state.payloads._marks import (
    _IP_TYPES,
    _MAX_TEXT,
    LOSSY_KEY,
    LOSSY_MARK,
    MAX_DEPTH,
    NUL,
    Encoders,
    LossyValue,
)
from tdev_state.storage import safe_repr


class _Path:
    """Where a value sits, built only when a message needs it (most walks never format one)."""

    __slots__ = ("key", "parent")

    def __init__(self, parent: _Path | None, key: object) -> None:
        self.parent, self.key = parent, key

    def text(self) -> str:
        parts: list[str] = []
        node: _Path | None = self
        while node is not None:
            parts.append(f"[{node.key}]" if isinstance(node.key, int) else f".{node.key}")
            node = node.parent
        return "".join(reversed(parts))


def _set_order(member: Any) -> tuple[str, str]:
    """The order of a set whose members do not compare: by type, then text — never by hash, which differs
    from process to process for strings (the stored text must be canonical)."""
    return type(member).__name__, safe_repr(member, 200)


class _Walk:
    """One `to_json` walk: conversion, key checks, escapes and (lossy) marked forms, with their warnings."""

    def __init__(self, field: str, *, lossy: bool, encoders: Encoders, check_text: bool) -> None:
        self.field, self.lossy, self.encoders, self.check_text = field, lossy, encoders, check_text
        self.warnings: list[str] = []
        self.active: set[int] = set()
        limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
        self.int_limit = limit
        #: Below this many bits an int surely has fewer digits than the limit (log2(10) > 3.32).
        self.int_bits = int(limit * 3.32) - 8 if limit else 0
        self._big: int | None = None

    # --- outcomes that are not exact -------------------------------------------------------------------

    def refuse_or_mark(self, path: _Path | None, what: str, why: str, text: str, fix: str) -> Any:
        """Strict: a ValidationError naming the place; lossy: the marked form, and a warning."""
        where = f"{self.field}{path.text() if path else ''}"
        if not self.lossy:
            raise ValidationError(f"{where} {why}; {fix}. Nothing was written.")
        self.warnings.append(f"{where}: {why}; stored as the marked lossy text {text[:80]!r}")
        return {LOSSY_MARK: {"type": what, "text": text[:_MAX_TEXT], "why": why}}

    def big_int(self, value: int, path: _Path | None) -> Any:
        if self._big is None:
            self._big = 10**self.int_limit
        if abs(value) < self._big:
            return value
        return self.refuse_or_mark(
            path,
            "int",
            f"is an integer of more than {self.int_limit} digits, which Python will not convert to text",
            hex(value),
            "send it as a string (or raise sys.set_int_max_str_digits in the reader and the writer)",
        )

    def text(self, value: str, path: _Path | None) -> Any:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return self.refuse_or_mark(
                path,
                "str",
                "contains a lone surrogate (invalid Unicode)",
                value.encode("utf-8", "replace").decode("utf-8"),
                "decode your text properly first",
            )
        return value

    # --- the walk ----------------------------------------------------------------------------------------

    def value(self, value: Any, path: _Path | None, depth: int) -> Any:  # noqa: PLR0911 - one per kind
        kind = type(value)
        if kind is str:
            return self.text(value, path) if self.check_text else value
        if kind is bool or value is None:
            return value
        if kind is int:
            return (
                value
                if not self.int_limit or value.bit_length() < self.int_bits
                else self.big_int(value, path)
            )
        if kind is float:
            if math.isfinite(value):
                return value
            text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            return self.refuse_or_mark(
                path, "float", f"is {text}, which JSON cannot hold", text, "send null or a finite number"
            )
        if kind is dict:
            return self.mapping(value, path, depth)
        if kind is list or kind is tuple:
            return self.sequence(value, path, depth)
        return self.other(value, path, depth)

    def nested(self, container: Any, path: _Path | None, depth: int) -> Any | None:
        """The marked form (or refusal) of a container that refers to itself or nests too deeply."""
        if id(container) in self.active:
            return self.refuse_or_mark(
                path,
                type(container).__name__,
                "refers to itself (a circular reference)",
                f"<circular reference to a {type(container).__name__}>",
                "send a tree",
            )
        if depth >= MAX_DEPTH:
            return self.refuse_or_mark(
                path,
                type(container).__name__,
                f"is nested more than {MAX_DEPTH} levels deep",
                f"<{type(container).__name__} nested too deeply>",
                "flatten it",
            )
        return None

    def mapping(self, mapping: dict[Any, Any], path: _Path | None, depth: int) -> Any:
        stop = self.nested(mapping, path, depth)
        if stop is not None:
            return stop
        self.active.add(id(mapping))
        try:
            out: dict[str, Any] | None = None
            check_text = self.check_text
            for key, item in mapping.items():
                if type(key) is not str or key[:1] == NUL or check_text:
                    return self.keyed(mapping, path, depth)
                kind = type(item)
                if kind is bool or item is None or (kind is str and not check_text):
                    continue
                new = self.value(item, _Path(path, key), depth + 1)
                if new is not item:
                    if out is None:
                        out = dict(mapping)
                    out[key] = new
            return mapping if out is None else out
        finally:
            self.active.discard(id(mapping))

    def keyed(self, mapping: dict[Any, Any], path: _Path | None, depth: int) -> dict[str, Any]:
        """A dict with keys to convert or escape: keys become their JSON text; two that would merge are
        refused (strict) or the later non-string one is kept under its marked lossy key."""
        texts = {key for key in mapping if type(key) is str}
        out: dict[str, Any] = {}
        for key, item in mapping.items():
            if isinstance(key, LossyValue):
                out[LOSSY_KEY + str(key)] = self.value(item, _Path(path, str(key)), depth + 1)
                continue
            if type(key) is str:
                text = self.text(key, path) if self.check_text else key
                stored = NUL + text if text[:1] == NUL else text
            else:
                text = self.key_text(key, path)
                stored = NUL + text if text[:1] == NUL else text
                if text in texts or stored in out:
                    stored = self.collision(key, text, path, out)
                texts.add(text)
            out[stored] = self.value(item, _Path(path, text), depth + 1)
        return out

    def key_text(self, key: Any, path: _Path | None) -> str:
        """A non-string key as JSON writes it (FastAPI's encoder does the same): 1 -> "1", True -> "true",
        None -> "null", an Enum by its value; any other key has no JSON form."""
        if isinstance(key, Enum):
            key = key.value
        if isinstance(key, str):
            return str(key)
        if key is None or isinstance(key, bool | int | float):
            converted = self.value(key, path, 0)
            if isinstance(converted, dict):  # NaN or a huge int: the marked text stands for the key
                return str(converted[LOSSY_MARK]["text"])
            return json.dumps(converted)
        converted = self.value(key, path, 0)
        if isinstance(converted, str):  # a UUID, date, Path…: its text
            return converted
        if converted is None or isinstance(converted, bool | int | float):  # a Decimal, a timedelta…
            return json.dumps(converted)
        marked = self.refuse_or_mark(
            path,
            type(key).__name__,
            f"has a key of type {type(key).__name__} ({safe_repr(key, 40)}), which has no JSON form",
            safe_repr(key, 200),
            "use str, int, float, bool, None or Enum keys",
        )
        return str(marked[LOSSY_MARK]["text"])

    def collision(self, key: Any, text: str, path: _Path | None, out: dict[str, Any]) -> str:
        where = f"{self.field}{path.text() if path else ''}"
        why = (
            f"has the key {safe_repr(key, 40)} ({type(key).__name__}) and another whose JSON text is also "
            f"{text!r:.40}: JSON would merge them and lose a value"
        )
        if not self.lossy:
            raise ValidationError(f"{where} {why}; use distinct string keys. Nothing was written.")
        label = f"{type(key).__name__}:{safe_repr(key, 200)}"
        stored, n = LOSSY_KEY + label, 1
        while stored in out:
            n += 1
            stored = f"{LOSSY_KEY}{label}#{n}"
        self.warnings.append(
            f"{where}: {why}; stored under the marked lossy key {stored[len(LOSSY_KEY) :]!r}"
        )
        return stored

    def sequence(self, items: list[Any] | tuple[Any, ...], path: _Path | None, depth: int) -> Any:
        stop = self.nested(items, path, depth)
        if stop is not None:
            return stop
        self.active.add(id(items))
        try:
            out: list[Any] | None = None
            for i, item in enumerate(items):
                kind = type(item)
                if (kind is str and not self.check_text) or kind is bool or item is None:
                    continue
                new = self.value(item, _Path(path, i), depth + 1)
                if new is not item:
                    if out is None:
                        out = list(items)
                    out[i] = new
            return items if out is None else out
        finally:
            self.active.discard(id(items))

    def other(self, value: Any, path: _Path | None, depth: int) -> Any:  # noqa: PLR0911
        """Plain Python values: the pipeline's own encoders first, then FastAPI's conversions."""
        for cls in type(value).__mro__:
            encoder = self.encoders.get(cls)
            if encoder is not None:
                return self.converted(
                    value, path, depth, functools.partial(encoder, value), f"its encoder {cls.__name__}"
                )
        if isinstance(value, Enum):
            return self.value(value.value, path, depth)
        if isinstance(value, LossyValue):  # read back marked, stored marked again: an exact round trip
            return {LOSSY_MARK: {"type": value.type_name, "text": str(value), "why": value.reason}}
        if isinstance(value, str):
            return self.text(str(value), path) if self.check_text else value
        if isinstance(value, int):
            return self.value(int(value), path, depth)
        if isinstance(value, float):
            return self.value(float(value), path, depth)
        if isinstance(value, datetime | date | time):
            return value.isoformat()
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, (uuid.UUID, PurePath, *_IP_TYPES)):
            return str(value)
        if isinstance(value, re.Pattern):
            return self.value(value.pattern, path, depth)
        if isinstance(value, Decimal):
            if not value.is_finite():
                return self.refuse_or_mark(
                    path, "Decimal", f"is {value}, which JSON cannot hold", str(value), "send a finite number"
                )
            exponent = value.as_tuple().exponent
            return self.value(
                int(value) if isinstance(exponent, int) and exponent >= 0 else float(value), path, depth
            )
        if isinstance(value, bytes):
            try:
                return self.value(value.decode("utf-8"), path, depth)
            except UnicodeDecodeError:
                return self.refuse_or_mark(
                    path,
                    "bytes",
                    "is bytes that are not UTF-8 text",
                    "base64:" + base64.b64encode(value[:700]).decode(),
                    "send text, or base64-encode binary data yourself",
                )
        if isinstance(value, set | frozenset):
            try:
                ordered = sorted(value)
            except TypeError:
                ordered = sorted(value, key=_set_order)
            return self.sequence(ordered, path, depth)
        if isinstance(value, tuple | deque | types.GeneratorType):
            return self.converted(value, path, depth, lambda: list(value), "list()")
        if isinstance(value, Mapping):
            return self.converted(value, path, depth, lambda: dict(value), "dict()")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.converted(
                value,
                path,
                depth,
                lambda: {f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
                "reading its fields",
            )
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            return self.converted(value, path, depth, dump, "model_dump()")
        if hasattr(value, "__dict__") and not isinstance(value, type | types.ModuleType | types.FunctionType):
            return self.converted(value, path, depth, lambda: dict(vars(value)), "vars()")
        return self.refuse_or_mark(
            path,
            type(value).__name__,
            f"contains a {type(value).__name__} ({safe_repr(value)}), which has no JSON form",
            safe_repr(value, _MAX_TEXT),
            "send dicts, lists, str, numbers, bool, None, or values FastAPI's encoder accepts (datetimes, "
            "UUIDs, Enums, dataclasses, objects with model_dump() or attributes…), or register an encoder "
            "for the type (StateConfig.encoders)",
        )

    def converted(
        self, value: Any, path: _Path | None, depth: int, convert: Callable[[], Any], how: str
    ) -> Any:
        """The JSON form of what `convert()` returns; a conversion that raises is the caller's error."""
        if id(value) in self.active:
            return self.nested(value, path, depth)
        try:
            plain = convert()
        except Exception as exc:
            return self.refuse_or_mark(
                path,
                type(value).__name__,
                f"is a {type(value).__name__} whose {how} raised {type(exc).__name__}: {str(exc)[:120]}",
                safe_repr(value, _MAX_TEXT),
                "fix the object, or register an encoder for its type (StateConfig.encoders)",
            )
        self.active.add(id(value))
        try:
            return self.value(plain, path, depth + 1)
        finally:
            self.active.discard(id(value))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
