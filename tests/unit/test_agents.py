"""The agents are declared once (tdev_state.agents.PIPELINE); every per-agent fact derives from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tdev_state import AGENTS, PIPELINE, Agent, RunPolicy, ValidationError
from tdev_state.agents import AGENT_STEP, agent, check_pipeline
from tdev_state.models import TDEVELOPER_AGENT_LIMITS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_declaration_is_well_formed() -> None:
    """The shipped declaration passes its own checks (names, limits, colours, critical vs tolerated)."""
    assert check_pipeline(PIPELINE) == []


def test_a_bad_row_is_named_with_what_is_wrong() -> None:
    """A duplicate name, a bad colour and a critical agent marked tolerable are each reported."""
    bad = dataclasses.replace(PIPELINE[0], color="red", critical=True, demo_tolerated=True)
    problems = check_pipeline((*PIPELINE, bad))
    assert any("declared twice" in p for p in problems)
    assert any("#rrggbb" in p for p in problems)
    assert any("never tolerated" in p for p in problems)


def test_names_order_and_steps_come_from_the_declaration() -> None:
    """AGENTS, AGENT_STEP and each agent's step are the declaration's order."""
    assert tuple(a.name for a in PIPELINE) == AGENTS
    assert (
        [agent(n).step for n in AGENTS]
        == list(range(1, len(PIPELINE) + 1))
        == [AGENT_STEP[n] for n in AGENTS]
    )
    assert isinstance(agent("generation"), Agent)


def test_the_default_run_policy_is_the_declarations() -> None:
    """The default limits and critical agents are the declared ones, not a second list."""
    policy = RunPolicy()
    assert policy.agent_limits == TDEVELOPER_AGENT_LIMITS
    assert [policy.limits(a.name) for a in PIPELINE] == [(a.timeout_seconds, a.attempts) for a in PIPELINE]
    assert policy.critical_agents == frozenset(a.name for a in PIPELINE if a.critical)


def test_no_agent_list_outside_the_declaration() -> None:
    """No source file outside tdev_state.agents (and the usage reader's fixed legacy table) spells two agent
    names in a row: a list of agents there would be a second declaration."""
    pair = re.compile(r'"(?:' + "|".join(AGENTS) + r')",?\s*"(?:' + "|".join(AGENTS) + r')"')
    allowed = {
        ROOT / "packages/state-client/src/tdev_state/agents.py",
        ROOT / "packages/metrics-collector/src/tdev_metrics/usage.py",  # LEGACY_AGENTS, fixed on purpose
    }
    sources = [
        p
        for top in ("packages", "demo", "benchmarks", "chaos", "infra/src", "examples")
        for p in (ROOT / top).rglob("*")
        if p.suffix in {".py", ".html", ".js"} and p not in allowed and ".venv" not in p.parts
    ]
    offenders = [str(p.relative_to(ROOT)) for p in sources if pair.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_an_unknown_agent_is_a_validation_error_naming_the_agents() -> None:
    """`agent("coder")` raises the package's ValidationError listing the declared agents, not a KeyError."""
    with pytest.raises(ValidationError, match="agents are, in order: nl_input, ui_selection"):
        agent("coder")


def test_sort_keys_follow_the_pipeline_and_the_nine_keep_theirs() -> None:
    """Stored sort keys sort in pipeline order, and the nine agents of 2026 keep 01..09 (items exist)."""
    from tdev_metrics.usage import LEGACY_AGENTS  # the nine of 2026, in their order then
    from tdev_state.agents import sort_key

    keys = [sort_key(n) for n in AGENTS]
    assert keys == sorted(keys)
    assert [sort_key(n) for n in LEGACY_AGENTS] == [f"{i:02d}#{n}" for i, n in enumerate(LEGACY_AGENTS, 1)]


def test_an_agent_inserted_between_two_keeps_every_stored_key() -> None:
    """A new agent between assembly (08) and download (09) takes 085: the others' keys do not move, and the
    keys still sort in pipeline order; a key out of order is refused."""
    review = dataclasses.replace(PIPELINE[-1], name="x_inserted", key=PIPELINE[-2].key + "5", color="#010203")
    inserted = (*PIPELINE[:-1], review, PIPELINE[-1])
    assert check_pipeline(inserted) == []
    keys = [f"{a.key}#{a.name}" for a in inserted]
    assert keys == sorted(keys)
    misplaced = (*PIPELINE[:-1], dataclasses.replace(review, key="10"), PIPELINE[-1])
    assert any("keys must increase" in p for p in check_pipeline(misplaced))
