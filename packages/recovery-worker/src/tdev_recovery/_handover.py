"""What a resume hands the pipeline: the completed agents with their outputs, the next agent and its input.

Built under the worker's claim, from the stored agent records; a record that is not whole (an expired or
deleted agent item) stops the resume rather than dropping that agent's output.
"""

from __future__ import annotations

from tdev_recovery.exceptions import IncompleteRecordError
from tdev_recovery.resumers import CompletedAgent, ResumeRequest
from tdev_state import AGENTS, AgentExecution, AgentStatus, Claim, StateClient
from tdev_state.resume import NO_INPUT


def build_request(client: StateClient, claim: Claim) -> ResumeRequest | None:
    """The completed agents (with outputs) and the agent to run next: the one after the last agent the
    run finished (completed, or failed and tolerated), so neither kind is ever rerun. An agent left
    RUNNING by a dead pipeline is closed as FAILED first, under the claim, so the pipeline retries it.

    It also carries the run's original request (the first agent's stored input) and the next agent's
    last stored input exactly as stored: the pipeline gives that agent the same `pipeline_data` a live
    run gave it, instead of re-merging stored outputs — a merge that is not the live run's (an output
    stored as a dict where the live run had an object would be promoted over the request's values)."""
    if claim.progress >= len(AGENTS):
        return None
    run = {e.agent_name: e for e in client.executions.list(claim.session_id)}
    _require_whole(claim, run)
    completed = [
        CompletedAgent(agent, run[agent].output_data)
        for agent in AGENTS[: claim.progress]
        if agent in run and run[agent].status is AgentStatus.COMPLETED
    ]
    next_agent = AGENTS[claim.progress]
    execution = run.get(next_agent)
    if execution is not None and execution.status is AgentStatus.RUNNING:
        client.executions.interrupt(
            claim.session_id,
            next_agent,
            reason=f"interrupted: the pipeline stopped heartbeating; recovered by "
            f"{claim.worker_id} (fencing token {claim.fencing_token})",
            fencing_token=claim.fencing_token,
            worker_id=claim.worker_id,
        )
    first = run.get(AGENTS[0])
    return ResumeRequest(
        session_id=claim.session_id,
        next_agent=next_agent,
        fencing_token=claim.fencing_token,
        attempt=claim.attempt,
        reason=claim.status.value,
        completed=completed,
        tolerated_failures=list(claim.failed_agents),
        request=first.input_data if first is not None else None,
        next_input=execution.input_data if execution is not None else NO_INPUT,
        worker_id=claim.worker_id,
    )


def _require_whole(claim: Claim, run: dict[str, AgentExecution]) -> None:
    """IncompleteRecordError unless every agent the run finished is stored as finished: COMPLETED, or FAILED
    and tolerated. A missing item (expired, deleted) would make the resume drop its output silently."""
    tolerated = set(claim.failed_agents)
    problems = []
    for agent in AGENTS[: claim.progress]:
        execution = run.get(agent)
        expected = AgentStatus.FAILED if agent in tolerated else AgentStatus.COMPLETED
        if execution is None:
            problems.append(f"{agent} is missing (expired or deleted)")
        elif execution.status is not expected:
            problems.append(f"{agent} is {execution.status.value}, not {expected.value}")
    if problems:
        raise IncompleteRecordError(
            f"record incomplete: the run finished {claim.progress} agent(s) but "
            + "; ".join(problems)
            + ": resuming would drop their output, so the run is not resumed"
        )
