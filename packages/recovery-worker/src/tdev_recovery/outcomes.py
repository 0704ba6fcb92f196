"""How the worker's resumes and an operator's actions end: `Outcome`, and `ActionResult` for one run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How one resume ended."""

    RESUMED = "resumed"  # the pipeline accepted the run
    ABANDONED = "abandoned"  # attempts or resumes exhausted, or a non-retryable refusal
    STALE = "stale"  # the pipeline has a newer claim: another worker owns the run
    LOST = "lost"  # our lease was taken over (we were too slow to heartbeat)
    RELEASED = "released"  # shutdown: handed back untouched
    ERROR = "error"  # an unexpected error ended this claim; the lease expires and the attempt counts


@dataclass(frozen=True)
class ActionResult:
    """What an operator's `resume_now` or `abandon_now` did to one run: the outcome, under which claim."""

    session_id: str
    outcome: Outcome
    #: The claim's fencing token: the pipeline (and the run's recovery history) knows the action by it.
    fencing_token: int

    def to_dict(self) -> dict[str, Any]:
        """The plan's shape: {"session_id", "outcome", "fencing_token"}, the outcome as its text."""
        return {
            "session_id": self.session_id,
            "outcome": self.outcome.value,
            "fencing_token": self.fencing_token,
        }
