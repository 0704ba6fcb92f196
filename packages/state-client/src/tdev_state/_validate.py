"""Input checks shared by every public call: they run before anything is written, and say how to fix it."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from tdev_state.exceptions import ValidationError
from tdev_state.models import AGENT_STEP, AGENTS

E = TypeVar("E", bound=StrEnum)

MAX_ID_BYTES = 256
MAX_TEXT_CHARS = 4096
MAX_ERROR_CHARS = 4000


#: Characters that have no place in an identifier: C0/C1 controls, bidi overrides and isolates (they make a
#: terminal show another id than the stored one), zero-width characters and the BOM.
_INVISIBLE = frozenset(
    [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x200B, 0x2010), 0x2060, 0xFEFF, *range(0x202A, 0x202F)]
) | frozenset(range(0x2066, 0x206A))


def encodable(name: str, value: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (a lone surrogate from badly decoded input)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{name} contains a lone surrogate (invalid Unicode); decode the text properly first"
        ) from None
    return value


def identifier(name: str, value: Any) -> str:
    """A key value: a non-empty string of at most 256 UTF-8 bytes, printable: no control, bidi-override or
    zero-width characters (they would let one id display as another)."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise ValidationError(f"{name} must not be empty or blank")
    size = len(encodable(name, value).encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise ValidationError(f"{name} is {size} bytes; keys may be at most {MAX_ID_BYTES} bytes")
    bad = next((c for c in value if ord(c) in _INVISIBLE), None)
    if bad is not None:
        raise ValidationError(
            f"{name} contains the invisible or control character U+{ord(bad):04X}; use printable text"
        )
    if "#" in value and name in ("agent_name",):
        raise ValidationError(f"{name} must not contain '#'")
    return value


def text(name: str, value: Any, *, allow_empty: bool = True, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A free-text attribute of bounded length."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValidationError(f"{name} must not be empty")
    if len(value) > max_chars:
        raise ValidationError(f"{name} is {len(value)} characters; the limit is {max_chars}")
    return encodable(name, value)


def error_text(value: Any) -> str:
    """An agent's error message. Over-long tracebacks are cut (marked), since refusing to record a
    failure would lose it; payloads, by contrast, are never cut."""
    if not isinstance(value, str):
        raise ValidationError(f"error_message must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError("error_message must say what failed; it is empty")
    encodable("error_message", value)
    if len(value) > MAX_ERROR_CHARS:
        cut = len(value) - MAX_ERROR_CHARS
        return value[:MAX_ERROR_CHARS] + f"… [{cut} more characters cut]"
    return value


def agent(value: Any) -> str:
    """One of the nine agent names."""
    if not isinstance(value, str) or value not in AGENT_STEP:
        raise ValidationError(f"unknown agent {value!r}; agents are, in order: {', '.join(AGENTS)}")
    return str(value)


def enum(kind: type[E], name: str, value: Any) -> E:
    """A member of a string enum, accepted as the enum or its value."""
    try:
        return kind(value)
    except (ValueError, TypeError):
        allowed = ", ".join(m.value for m in kind)
        raise ValidationError(f"{name} {value!r} is not one of: {allowed}") from None


def whole(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """An int (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
    if value < low or (high is not None and value > high):
        upper = f"..{high}" if high is not None else " or more"
        raise ValidationError(f"{name} is {value}; it must be {low}{upper}")
    return value


def number(name: str, value: Any, *, low: float = 0.0) -> float:
    """A finite float or int >= low."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if number < low:
        raise ValidationError(f"{name} is {str(value)[:40]}; it must be a finite number >= {low}")
    if not math.isfinite(number) or (number and not 1e-130 <= abs(number) < 1e126):
        raise ValidationError(
            f"{name} is {str(value)[:40]}: DynamoDB numbers must be 0 or have a magnitude from 1e-130 "
            "to 9.99e125 (NaN and Infinity have no stored form)"
        )
    return number


def string_list(name: str, value: Any, *, max_items: int = 100) -> list[str]:
    """A list of short non-empty strings (e.g. tech_stack)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValidationError(f"{name} must be a list of strings, got {type(value).__name__}")
    items = list(value)
    if len(items) > max_items:
        raise ValidationError(f"{name} has {len(items)} entries; at most {max_items}")
    return [text(f"{name}[{i}]", v, allow_empty=False, max_chars=200) for i, v in enumerate(items)]


def limit(value: Any) -> int:
    """A page size."""
    return whole("limit", value, low=1, high=1000)


def plan_dict(name: str, value: Any, required: Iterable[str], allowed: Iterable[str]) -> dict[str, Any]:
    """The plan's dict arguments: a Mapping with the required keys and no unknown ones."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} takes a dict, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValidationError(f"{name}: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValidationError(
            f"{name}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"accepted keys: {', '.join(sorted(allowed))}"
        )
    return dict(value)


def encode_cursor(last_key: Mapping[str, Any] | None) -> str | None:
    """An opaque page cursor for a LastEvaluatedKey (string and number keys, types kept)."""
    if last_key is None:
        return None
    typed = {k: ["N", str(v)] if isinstance(v, Decimal | int) else ["S", str(v)] for k, v in last_key.items()}
    raw = json.dumps(typed, sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(
    cursor: Any, *, expected_keys: Iterable[str], expect: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """Inverse of encode_cursor, refusing cursors that were not made for this listing (other keys, or
    `expect`ed key values that differ: another user's cursor) and forged ones."""
    if cursor is None:
        return None
    if not isinstance(cursor, str) or not cursor:
        raise ValidationError("cursor must be the next_cursor string of a previous page")
    key = _parse_cursor(cursor)
    if key is None:
        raise ValidationError("cursor is not a valid page cursor; pass next_cursor unchanged")
    if set(key) != set(expected_keys):
        raise ValidationError("cursor belongs to a different listing; pass this listing's next_cursor")
    for name, value in (expect or {}).items():
        if key.get(name) != value:
            raise ValidationError("cursor belongs to another listing (another user); start without one")
    return key


def _parse_cursor(cursor: str) -> dict[str, Any] | None:  # noqa: PLR0911 - one exit per malformation
    """The typed key inside a cursor, or None when it is not one of ours."""
    try:
        data = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    key: dict[str, Any] = {}
    for name, typed in data.items():
        if not (isinstance(typed, list) and len(typed) == 2 and isinstance(typed[1], str)):
            return None
        kind, text = typed
        if kind == "S":
            key[name] = text
        elif kind == "N":
            try:
                number = Decimal(text)
            except ArithmeticError:
                return None
            if not number.is_finite():
                return None
            key[name] = number
        else:
            return None
    return key
