"""The IAM grants cover every write the run lifecycle declares: derived from the rows, not from one flow.

tests/unit/test_access.py proves the grants equal what the flows call; a transition variant no flow happens
to reach (the move-on past a tolerated failure, the end of a run whose last agent failed) would slip through
there and be AccessDenied in AWS. Here every declared transition's parts are checked against the grants of
the component that applies it.
"""

from __future__ import annotations

from tdev_recovery.access import RECOVERY_WORKER
from tdev_state.access import PIPELINE_CLIENT
from tdev_state.runs.rules import AGENT_RULES, SESSION_RULES, transition_actions

GRANTED = {"pipeline": PIPELINE_CLIENT.pairs(), "worker": RECOVERY_WORKER.pairs()}


def test_every_declared_transition_is_granted_to_the_component_that_applies_it() -> None:
    """Each (item action, table) of every transition is in its writer's declared grants."""
    missing = sorted(
        f"{who} {kind}: {action} on {table}"
        for (who, kind), actions in transition_actions().items()
        for action, table in actions
        if (action, f"table:{table}") not in GRANTED[who]
    )
    assert not missing, missing


def test_the_derivation_covers_every_row_and_the_condition_checks() -> None:
    """Every row is derived, and the variants that check another item name ConditionCheckItem."""
    derived = transition_actions()
    kinds = {kind for _, kind in derived}
    assert kinds == {f"agent.{k}" for k in AGENT_RULES} | {f"session.{k}" for k in SESSION_RULES}
    check = ("dynamodb:ConditionCheckItem", "agent-executions")
    assert check in derived[("pipeline", "agent.start")]  # moving past a tolerated failure
    assert check in derived[("pipeline", "session.set_status")]  # ending after a failed last agent
    assert check not in derived[("worker", "agent.interrupt")]
