"""The resume request: what a recovery worker (or the console, or `tdev`) hands the pipeline to go on.

It lives in the base package because both sides use it: `tdev_recovery` builds and sends it, and the
pipeline's receiving side (`tdev_state.pipeline_run`) reads it. It carries everything the pipeline needs to
go on without re-reading or re-merging stored outputs: the run's original request, the completed agents'
outputs, and the next agent's last stored input exactly as it was stored — so a resumed agent receives the
same `pipeline_data` a live run would have given it.

The JSON form (`to_json` / `from_json`) is the wire format of the HTTP resumer; `from_json` validates it and
raises `ValidationError` (never `KeyError`/`TypeError`) for a malformed body.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tdev_state.exceptions import ValidationError
from tdev_state.models import AGENTS

#: Sentinel for "the next agent never stored an input" (it had not started when the run stopped).
NO_INPUT: Any = None


@dataclass(frozen=True)
class CompletedAgent:
    """An agent that finished before the run stopped, with its output: never run again."""

    agent_name: str
    output_data: Any


@dataclass(frozen=True)
class ResumeRequest:
    """What the pipeline needs to continue a run from its first unfinished agent."""

    session_id: str
    next_agent: str
    #: The claim's fencing token: the receiving side refuses a token lower than the run's stored one.
    fencing_token: int
    attempt: int
    #: The status the run had when it was claimed (FAILED, or ACTIVE for a stalled run).
    reason: str
    completed: list[CompletedAgent] = field(default_factory=list)
    #: Agents that failed for good and were tolerated by the run policy: never rerun either.
    tolerated_failures: list[str] = field(default_factory=list)
    #: The run's original request (the first agent's stored input), or None when it was never stored.
    request: Any = None
    #: The next agent's last stored input, exactly as stored (None: it never started).
    next_input: Any = None
    #: Who sent it (worker id, `console-<host>-<pid>`, `tdev-cli-…`), for the run's history.
    worker_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The wire form (plain JSON types only)."""
        return asdict(self)

    @classmethod
    def from_json(cls, body: Any) -> ResumeRequest:
        """Parse the wire form; a malformed body is a `ValidationError` that says what is wrong."""
        if not isinstance(body, dict):
            raise ValidationError(f"a resume request is a JSON object, got {type(body).__name__}")
        try:
            session_id = body["session_id"]
            next_agent = body["next_agent"]
            token = body["fencing_token"]
        except KeyError as exc:
            raise ValidationError(
                f"the resume request lacks {exc.args[0]!r} (it needs session_id, next_agent, fencing_token)"
            ) from None
        if not isinstance(session_id, str) or not session_id:
            raise ValidationError("the resume request's session_id must be a non-empty string")
        if next_agent not in AGENTS:
            raise ValidationError(
                f"the resume request's next_agent {next_agent!r} is not an agent ({', '.join(AGENTS)})"
            )
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValidationError("the resume request's fencing_token must be a non-negative integer")
        completed_raw = body.get("completed") or []
        if not isinstance(completed_raw, list) or not all(
            isinstance(c, dict) and c.get("agent_name") in AGENTS for c in completed_raw
        ):
            raise ValidationError(
                "the resume request's completed must be a list of {agent_name, output_data} objects"
            )
        tolerated = body.get("tolerated_failures") or []
        if not isinstance(tolerated, list) or not all(t in AGENTS for t in tolerated):
            raise ValidationError("the resume request's tolerated_failures must be a list of agent names")
        attempt = body.get("attempt", 1)
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValidationError("the resume request's attempt must be a positive integer")
        return cls(
            session_id=session_id,
            next_agent=next_agent,
            fencing_token=token,
            attempt=attempt,
            reason=str(body.get("reason", "")),
            completed=[CompletedAgent(c["agent_name"], c.get("output_data")) for c in completed_raw],
            tolerated_failures=list(tolerated),
            request=body.get("request"),
            next_input=body.get("next_input"),
            worker_id=str(body.get("worker_id", "")),
        )
