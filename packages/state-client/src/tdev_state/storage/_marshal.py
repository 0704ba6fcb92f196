"""Marshalling: Python values to DynamoDB's wire format and back.

Floats become exact Decimals (`repr` is the shortest text that reads back as the same float); NaN, Infinity,
numbers out of DynamoDB's range and non-string map keys are refused with a ValidationError that says where.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Context, Decimal, Inexact, Rounded
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

from tdev_state.exceptions import ValidationError

Item = dict[str, Any]
# DynamoDB numbers carry 38 significant digits; repr() of a float needs at most 17.
_DECIMAL_CONTEXT = Context(prec=38, traps=[Inexact, Rounded])
_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def safe_repr(value: Any, limit: int = 60) -> str:
    """repr() that never raises (an object whose __repr__ raises is named by its type) and never holds a
    memory address: a marked lossy text must be the same for the same value in a retried call, or the
    retry would not be recognised as a duplicate."""
    try:
        text = _ADDRESS.sub("", repr(value))
    except Exception as exc:
        text = f"<{type(value).__name__} object; its repr() raised {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_dynamo(value: Any, *, path: str = "value") -> Any:
    """Convert a Python value for DynamoDB: floats to exact Decimals, tuples to lists; refuse NaN/Infinity."""
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, int | Decimal):
        return _in_range(value, path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"{path} is {value!r}: DynamoDB cannot store NaN or Infinity; "
                "send a finite number, or null for a missing value"
            )
        # repr() is the shortest text that reads back as the same float, so the round trip is exact.
        return _in_range(_DECIMAL_CONTEXT.create_decimal(repr(value)), path)
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):  # str(k) could merge 1 and "1" into one attribute, silently
                raise ValidationError(
                    f"{path} has a key of type {type(k).__name__} ({safe_repr(k, 40)}); DynamoDB map keys "
                    "are strings: convert the keys yourself (two keys with the same text would merge)"
                )
        return {k: to_dynamo(v, path=f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v, path=f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return {to_dynamo(v, path=path) for v in value}
    raise ValidationError(f"{path} has type {type(value).__name__}, which DynamoDB cannot store")


_LARGEST = Decimal("1E126")
_SMALLEST = Decimal("1E-130")


def _in_range(number: int | Decimal, path: str) -> int | Decimal:
    """DynamoDB's real number limits: magnitude below 1e126, at least 1e-130 unless zero."""
    try:
        size = abs(Decimal(number))
        fits = not size or _SMALLEST <= size < _LARGEST
    except ArithmeticError:
        fits = False
    if not fits:
        raise ValidationError(
            f"{path} is {_number_text(number)}: DynamoDB numbers must be 0 or have a magnitude from 1e-130 "
            "to 9.99e125 (38 significant digits)"
        )
    return number


def _number_text(number: int | Decimal) -> str:
    """A number for a message, however large (str() of an int over 4,300 digits raises ValueError)."""
    if isinstance(number, int) and number.bit_length() > 1_000:
        return f"an integer of about {int(number.bit_length() * 0.30103)} digits"
    return str(number)[:40]


def serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    """Python values to DynamoDB's wire format (after `to_dynamo`); a number DynamoDB cannot hold
    (beyond 9.99e125, below 1e-130, or more than 38 digits) is a ValidationError, not a raw decimal
    error."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        try:
            out[key] = _SERIALIZER.serialize(to_dynamo(value, path=key))
        except (ArithmeticError, TypeError) as exc:
            raise ValidationError(
                f"{key} holds a number DynamoDB cannot store ({type(exc).__name__}): its numbers have "
                "at most 38 significant digits and a magnitude between 1e-130 and 9.99e125"
            ) from None
    return out


def deserialize(item: Mapping[str, Any] | None) -> Item | None:
    """DynamoDB's wire format to Python values (numbers come back as Decimal, binary as bytes)."""
    if item is None:
        return None
    out: Item = {}
    for k, v in item.items():
        value = _DESERIALIZER.deserialize(v)
        out[k] = value.value if isinstance(value, Binary) else value  # type: ignore[attr-defined]
    return out
