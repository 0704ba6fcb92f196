"""A run's lineage: the run it was forked from, and the runs forked from it (issue #27).

A fork is a new run whose agents before the fork point are its parent's finished results, copied as stored
(`sessions.fork`). The child records its parent and fork point; the parent lists its children in the same
transaction that creates the child, so a lineage read is one GetItem of each run, never a search.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ForkChild:
    """One run forked from this one: its id, the agent it runs from, when it was created."""

    run_id: str
    fork_point: str
    created_at: datetime


@dataclass(frozen=True)
class Lineage:
    """Where a run comes from and what was forked from it.

    `replay` is True for a fork without overrides (its agents from the fork point rerun on the same inputs:
    what an engineer compares with the parent to reproduce a bug or check a new model)."""

    run_id: str
    parent_id: str | None
    fork_point: str | None
    replay: bool
    children: tuple[ForkChild, ...]

    @property
    def is_fork(self) -> bool:
        """True when this run was forked from another."""
        return self.parent_id is not None
