"""Typed reads of one stored item: the only way the item->model functions read attributes.

Every stored record has exactly one function from item to model, all in `runs.records`
(`session_from_item`, `candidate_from_item`, `history_from_item`, `execution_from_item`,
`project_from_item`). They read attributes through an
`ItemReader`, so an item that is not as the library writes it — a status typed `Failed` in the AWS console,
a missing `version`, `last_updated` written as text — is a `MalformedItemError` naming the item's key, the
attribute and what was wrong, never a KeyError/ValueError/TypeError three layers up. Listings and the
recovery sweep catch exactly that error, skip the one item (logged and counted) and go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

from tdev_state.exceptions import MalformedItemError
from tdev_state.log import get_logger
from tdev_state.models import from_epoch
from tdev_state.storage import Item

E = TypeVar("E", bound=StrEnum)
M = TypeVar("M")
log = get_logger(__name__)

_REQUIRED: Any = object()
#: Characters of a wrong value quoted in the error (the rest of the item is never echoed).
_QUOTED = 40


class ItemReader:
    """Read typed attributes of one item of `table` (its logical name), keyed by `key_names`."""

    def __init__(self, item: Mapping[str, Any], table: str, key_names: tuple[str, ...]) -> None:
        self._item = item
        self._table = table
        self.key = {k: item.get(k) for k in key_names}

    def malformed(self, attribute: str, problem: str) -> MalformedItemError:
        """The error for `attribute`, with a message saying which item, what was wrong and what to do."""
        where = ", ".join(f"{k}={v!r:.80}" for k, v in self.key.items())
        return MalformedItemError(
            f"{self._table} item ({where}) is unreadable: {attribute!r} {problem}; fix or delete the item "
            "(listings and recovery skip it until then)",
            table=self._table,
            key=dict(self.key),
            attribute=attribute,
            problem=problem,
        )

    def _value(self, name: str, default: Any) -> Any:
        value = self._item.get(name)
        if value is None:
            if default is _REQUIRED:
                raise self.malformed(name, "is missing")
            return default
        return value

    def text(self, name: str, default: Any = _REQUIRED) -> Any:
        """A string attribute (`default` when absent; required without one)."""
        value = self._value(name, default)
        if value is not default and not isinstance(value, str):
            raise self.malformed(name, f"is a {_kind(value)}, not a string")
        return value

    def whole(self, name: str, default: Any = _REQUIRED) -> Any:
        """A whole-number attribute (stored as a Number; a bool, text or a negative number is refused: every
        one stored is a count, a version, a step or a size, so a negative one was edited by hand)."""
        value = self._value(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.malformed(name, f"is a {_kind(value)}, not a whole number")
        if isinstance(value, Decimal) and (not value.is_finite() or value != value.to_integral_value()):
            raise self.malformed(name, f"is {str(value)[:_QUOTED]}, not a whole number")
        if value < 0:
            raise self.malformed(name, f"is {str(value)[:_QUOTED]}, a negative number")
        return int(value)

    def moment(self, name: str, default: Any = _REQUIRED) -> Any:
        """An epoch-seconds Number attribute as a UTC datetime."""
        value = self._value(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.malformed(name, f"is a {_kind(value)}, not epoch seconds (a Number)")
        try:
            return from_epoch(value)
        except (ArithmeticError, ValueError, InvalidOperation):
            raise self.malformed(name, f"is {str(value)[:_QUOTED]}, not a representable moment") from None

    def number(self, name: str) -> float | None:
        """An optional Number attribute as a float (None when absent)."""
        value = self._item.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal | float):
            raise self.malformed(name, f"is a {_kind(value)}, not a Number")
        return float(value)

    def enum(self, cls: type[E], name: str, default: Any = _REQUIRED) -> E:
        """A string attribute that must be one of `cls`'s values (case matters: `Failed` is not FAILED)."""
        value = self.text(name, default)
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise self.malformed(name, f"is {str(value)[:_QUOTED]!r}, not one of {allowed}") from None

    def texts(self, name: str) -> tuple[str, ...]:
        """A list or set of strings (empty when absent)."""
        value = self._item.get(name)
        if value is None:
            return ()
        if not isinstance(value, list | set | tuple) or not all(isinstance(v, str) for v in value):
            raise self.malformed(name, f"is a {_kind(value)}, not a list of strings")
        return tuple(value)

    def entries(self, name: str) -> list[Mapping[str, Any]]:
        """A list of maps (empty when absent)."""
        value = self._item.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.malformed(name, f"is a {_kind(value)}, not a list of maps")
        return value


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "Boolean"),
    (str, "String"),
    ((int, Decimal, float), "Number"),
    ((bytes, bytearray), "Binary"),
    (dict, "Map"),
    (list, "List"),
    ((set, frozenset), "Set"),
)


def _kind(value: Any) -> str:
    """How DynamoDB would name the stored type of `value` (what an operator sees in the console)."""
    return next((name for types, name in _KINDS if isinstance(value, types)), type(value).__name__)


def readable(
    items: Iterable[Item],
    to_model: Callable[[Item], M],
    *,
    skipped: list[MalformedItemError] | None = None,
    on_malformed: Callable[[MalformedItemError], None] | None = None,
) -> list[M]:
    """The models of `items`, skipping each unreadable one: logged (a warning naming the key, the attribute
    and what was wrong), added to `skipped` and passed to `on_malformed`. One bad item never costs a page
    (or a sweep) its other items."""
    models = []
    for item in items:
        try:
            models.append(to_model(item))
        except MalformedItemError as exc:
            log.warning(
                "item.malformed", table=exc.table, key=exc.key, attribute=exc.attribute, problem=exc.problem
            )
            if skipped is not None:
                skipped.append(exc)
            if on_malformed is not None:
                on_malformed(exc)
    return models
