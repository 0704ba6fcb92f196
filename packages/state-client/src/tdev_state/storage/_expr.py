"""A small builder for DynamoDB update and condition expressions.

Every conditional write of the state client (agent transitions, session updates, claims) is built with it,
so placeholders are generated the same way everywhere and no method hand-concatenates expression strings.
Attribute names are always aliased (`#status`), values numbered (`:v3`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from tdev_state.storage._door import TransactAction


class Expr:
    """SET / REMOVE / ADD clauses and AND-ed conditions, with their placeholders."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self._sets: list[str] = []
        self._removes: list[str] = []
        self._adds: list[str] = []
        self._conditions: list[str] = []

    # --- placeholders -------------------------------------------------------------------------------

    def n(self, attribute: str) -> str:
        """The placeholder of an attribute name."""
        alias = f"#{attribute}"
        self.names[alias] = attribute
        return alias

    def v(self, value: Any) -> str:
        """A new placeholder for a value."""
        alias = f":v{len(self.values)}"
        self.values[alias] = value
        return alias

    # --- update clauses -----------------------------------------------------------------------------

    def set(self, attribute: str, value: Any) -> Expr:
        self._sets.append(f"{self.n(attribute)} = {self.v(value)}")
        return self

    def set_many(self, values: Mapping[str, Any]) -> Expr:
        for attribute, value in values.items():
            self.set(attribute, value)
        return self

    def set_default(self, attribute: str, value: Any) -> Expr:
        """SET only when the attribute is absent (`if_not_exists`)."""
        alias = self.n(attribute)
        self._sets.append(f"{alias} = if_not_exists({alias}, {self.v(value)})")
        return self

    def increment(self, attribute: str, by: int = 1) -> Expr:
        """SET attribute = (attribute or 0) + by."""
        alias = self.n(attribute)
        self._sets.append(f"{alias} = if_not_exists({alias}, {self.v(0)}) + {self.v(by)}")
        return self

    def append(self, attribute: str, entries: list[Any]) -> Expr:
        """SET attribute = (attribute or []) + entries (`list_append`)."""
        alias = self.n(attribute)
        self._sets.append(f"{alias} = list_append(if_not_exists({alias}, {self.v([])}), {self.v(entries)})")
        return self

    def remove(self, *attributes: str) -> Expr:
        self._removes += [self.n(a) for a in attributes]
        return self

    def add_to_set(self, attribute: str, members: AbstractSet[str]) -> Expr:
        self._adds.append(f"{self.n(attribute)} {self.v(members)}")
        return self

    # --- conditions ---------------------------------------------------------------------------------

    def require(self, condition: str) -> Expr:
        """AND a condition written with this builder's `n()` / `v()` placeholders."""
        self._conditions.append(condition)
        return self

    def require_equal(self, attribute: str, value: Any) -> Expr:
        return self.require(f"{self.n(attribute)} = {self.v(value)}")

    def require_in(self, attribute: str, values: Iterable[Any]) -> Expr:
        listed = [self.v(v) for v in values]
        if len(listed) == 1:
            return self.require(f"{self.n(attribute)} = {listed[0]}")
        return self.require(f"{self.n(attribute)} IN ({', '.join(listed)})")

    def require_exists(self, attribute: str) -> Expr:
        return self.require(f"attribute_exists({self.n(attribute)})")

    # --- rendering ----------------------------------------------------------------------------------

    @property
    def update(self) -> str:
        parts = []
        for word, clauses in (
            ("SET", self._sets),
            ("REMOVE", self._removes),
            ("ADD", self._adds),
        ):
            if clauses:
                parts.append(f"{word} " + ", ".join(dict.fromkeys(clauses)))
        return " ".join(parts)

    @property
    def condition(self) -> str | None:
        return " AND ".join(f"({c})" for c in self._conditions) or None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `DynamoDoor.update`."""
        return {
            "update": self.update,
            "condition": self.condition,
            "names": self.names or None,
            "values": self.values or None,
        }

    def action(self, table: str, key: Mapping[str, Any]) -> TransactAction:
        """This update as one action of a transaction."""
        return TransactAction(
            "Update",
            table,
            key=key,
            update=self.update,
            condition=self.condition,
            names=self.names or None,
            values=self.values or None,
        )
