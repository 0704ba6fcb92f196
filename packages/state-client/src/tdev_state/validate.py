"""Input checks shared by every public call: they run before anything is written, and say how to fix it."""

from __future__ import annotations

import base64
import binascii
import json
import math
import unicodedata
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


#: Unicode categories that have no place in an identifier: controls (C0, DEL, C1: terminal escapes), format
#: characters (bidi overrides and isolates, zero-width characters, the BOM: they make one id display as
#: another), surrogates, private use, and every space or line/paragraph separator.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zs", "Zl", "Zp"})

#: Characters that change what a URL or an S3 key means where an id becomes one of its parts: a path
#: separator (both slashes: browsers read a backslash as `/`), the query and fragment marks, and `%`.
_URL_STRUCTURE = "/\\?#%"

#: A key a lookup may name: an id stored before the rule (written behind the library's back) can still be
#: read, up to DynamoDB's own partition-key limit.
MAX_LOOKUP_BYTES = 2048


def encodable(name: str, value: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (a lone surrogate from badly decoded input)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{name} contains a lone surrogate (invalid Unicode); decode the text properly first"
        ) from None
    return value


def identifier(name: str, value: Any, *, existing: bool = False) -> str:
    """A key value (session, user, project, execution, worker id): the one rule for every public call.

    An id is at most 256 UTF-8 bytes of visible characters: letters, digits and punctuation, such as
    T-Developer's `prod_20250101_120000_0042`, `project_<uuid>`, `user-1` or `f"{project_id}-{agent}"`.
    Refused, because an id becomes a URL path segment (the console), part of an S3 key and a line on an
    operator's terminal: whitespace; control, format (bidi, zero-width) and private-use characters; lone
    surrogates; `/`, `\\`, `?`, `#` and `%`; `..` anywhere and the id `.` (path traversal).

    `existing=True` is for reads that look a stored item up (get, list, history): the key only has to be a
    non-empty string DynamoDB could hold, so a run stored before this rule can still be opened; such a read
    writes nothing and finds nothing for a key no item has.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value:
        raise ValidationError(f"{name} must not be empty")
    size = len(encodable(name, value).encode("utf-8"))
    if existing:
        if size > MAX_LOOKUP_BYTES:
            raise ValidationError(f"{name} is {size} bytes; no stored key has more than {MAX_LOOKUP_BYTES}")
        return value
    if not value.strip():
        raise ValidationError(f"{name} must not be empty or blank")
    if size > MAX_ID_BYTES:
        raise ValidationError(f"{name} is {size} bytes; keys may be at most {MAX_ID_BYTES} bytes")
    for char in value:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            kind = "whitespace" if char.isspace() else "an invisible or control character"
            raise ValidationError(
                f"{name} contains {kind} (U+{ord(char):04X}); ids are visible characters without spaces: "
                "letters, digits and punctuation such as - _ . : @ +"
            )
        if char in _URL_STRUCTURE:
            raise ValidationError(
                f"{name} contains {char!r}, which would change a URL or S3 key the id is part of; ids may "
                "not contain / \\ ? # %: use - _ . : @ + instead"
            )
    if ".." in value or value == ".":
        raise ValidationError(f"{name} {value!r:.80} contains '..' or is '.': a path step, not an id")
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
    """One of the declared agents' names (tdev_state.agents.PIPELINE)."""
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
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):  # forged: nested thousands deep
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


#: An attempt's `agent_version`: at most this many fields, each name and value this long.
MAX_VERSION_FIELDS = 8
MAX_VERSION_NAME_CHARS = 32
MAX_VERSION_VALUE_CHARS = 128


def agent_version(value: Any) -> dict[str, str]:
    """Which code, model and prompt produced an attempt (free-form: {"code": "1.4.2", "model": "…"}).

    A mapping of at most MAX_VERSION_FIELDS names (the identifier rule, short) to short texts without
    control, format or line-breaking characters (a value is shown on an operator's terminal and in the
    console); a model name such as `anthropic/claude-x` or a prompt hash is fine."""
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"agent_version must be a mapping of names to texts (e.g. {{'code': '1.4.2', 'model': 'm'}}), "
            f"got {type(value).__name__}"
        )
    if not value or len(value) > MAX_VERSION_FIELDS:
        raise ValidationError(f"agent_version holds 1 to {MAX_VERSION_FIELDS} fields, got {len(value)}")
    checked: dict[str, str] = {}
    for name, text in value.items():
        identifier("an agent_version name", name)
        if len(name) > MAX_VERSION_NAME_CHARS:
            raise ValidationError(f"agent_version name {name[:40]!r} is over {MAX_VERSION_NAME_CHARS} chars")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_VERSION_VALUE_CHARS:
            raise ValidationError(
                f"agent_version[{name!r}] must be a non-blank text of at most {MAX_VERSION_VALUE_CHARS} "
                f"chars, got {text!r:.60}"
            )
        for char in encodable(f"agent_version[{name!r}]", text):
            if char != " " and unicodedata.category(char) in _REFUSED_CATEGORIES:
                raise ValidationError(
                    f"agent_version[{name!r}] contains an invisible, control or line-breaking character "
                    f"(U+{ord(char):04X}); versions are visible text"
                )
        checked[name] = text
    return checked
