"""The pipeline's agents, declared once: every per-agent fact lives in `PIPELINE` and nowhere else.

Why one declaration: the order of the agents decides progress (N means agents 1..N finished), the progress
messages the orchestrator sends (agent_id 1..N), the default run policy (limits, critical agents), the
console's timeline and the demo's charts. When these
facts lived in a dozen files, adding an agent meant editing all of them. Now a new agent is one row here
(plus a line in the docs); everything else iterates over `PIPELINE` (docs/data-model.md, "Agents declared
once").

Stored data never depends on an agent's position: an agent item's sort key is `<key>#<name>` with the
row's own `key`, fixed forever (the nine agents of 2026 keep 01..09); a new agent takes a key that sorts
between its neighbours' (`085` between `08` and `09`, `10` after `09`), so a Query still returns a run's
agents in pipeline order and no stored item moves. Usage is keyed by agent name; days stored before that
are read through `tdev_metrics.usage.LEGACY_AGENTS` (docs/data-model.md).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from tdev_state.exceptions import ConfigurationError, ValidationError

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_COLOR = re.compile(r"#[0-9a-f]{6}")
_KEY = re.compile(r"[0-9]{2,6}")


@dataclass(frozen=True)
class Agent:
    """One agent of the pipeline. Its place (1-based `step`) is its position in `PIPELINE`."""

    #: The agent's name as the orchestrator spells it (`[a-z][a-z0-9_]*`): in execution ids
    #: (`{project_id}-{name}`), stored items, metrics and usage counters.
    name: str
    #: The agent item's sort-key prefix (`<key>#<name>`): digits, fixed once an item was stored under it;
    #: keys increase in pipeline order as text, so a Query returns a run's agents in that order.
    key: str
    #: One attempt's timeout, seconds, and attempts in all (in-process retries + 1): T-Developer's
    #: `ProductionECSPipeline` profile, the default `RunPolicy.agent_limits`.
    timeout_seconds: float
    attempts: int
    #: Whether its failure for good stops the run (the default `RunPolicy.critical_agents`).
    critical: bool
    #: Its colour (#rrggbb), the same in every chart the demo draws (timelines, per-agent metrics).
    color: str
    #: How long it typically works, seconds (the benchmarks' simulated clock); the demo runs it
    #: for `demo_seconds` (its proportions, short enough for a demo).
    typical_seconds: float
    demo_seconds: float
    #: Whether the demo may make it fail for good in a run that goes on (tolerated). Critical agents never.
    demo_tolerated: bool

    @property
    def step(self) -> int:
        """Its place in the pipeline, 1-based (progress messages, `AgentExecution.step`)."""
        return AGENT_STEP[self.name]


# fmt: off
#: The agents, in pipeline order. A new agent is one row, at its place.
PIPELINE: tuple[Agent, ...] = (
    # Agent(name,             key, timeout_seconds, attempts, critical, color, typical_seconds,
    #       demo_seconds, demo_tolerated)
    Agent("nl_input",           "01",  30.0, 3, False, "#1f77b4",    5, 0.10, False),
    Agent("ui_selection",       "02",  20.0, 3, False, "#ff7f0e",   10, 0.15, True),
    Agent("parser",             "03",  45.0, 2, False, "#2ca02c",   15, 0.20, False),
    Agent("component_decision", "04",  60.0, 2, False, "#9467bd",   20, 0.20, True),
    Agent("match_rate",         "05",  30.0, 3, False, "#8c564b",   10, 0.15, True),
    Agent("search",             "06",  90.0, 3, False, "#e377c2",   30, 0.30, True),
    Agent("generation",         "07", 300.0, 2, True,  "#7f7f7f",  120, 0.60, False),
    Agent("assembly",           "08", 180.0, 2, True,  "#bcbd22",   40, 0.35, False),
    Agent("download",           "09",  60.0, 2, False, "#17becf",    5, 0.10, False),
)
# fmt: on

#: The agents' names, in pipeline order. Progress N means agents 1..N finished.
AGENTS: tuple[str, ...] = tuple(a.name for a in PIPELINE)
#: An agent's place, 1-based.
AGENT_STEP: dict[str, int] = {name: i + 1 for i, name in enumerate(AGENTS)}
_BY_NAME: dict[str, Agent] = {a.name: a for a in PIPELINE}


def sort_key(name: str) -> str:
    """An agent item's stored sort key, `<key>#<name>`: a Query returns a run's agents in pipeline order."""
    return f"{agent(name).key}#{name}"


def agent(name: str) -> Agent:
    """The declaration of agent `name`; ValidationError naming the agents for anything else."""
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValidationError(f"unknown agent {str(name)[:60]!r}; agents are, in order: {', '.join(AGENTS)}")
    return found


def check_pipeline(pipeline: tuple[Agent, ...]) -> list[str]:
    """What is wrong with a pipeline declaration (empty: nothing). Checked at import and by a unit test,
    so a bad new row fails the first import, with the row named, rather than a run in production."""
    problems: list[str] = []
    seen: set[str] = set()
    for row in pipeline:
        where = f"agent {row.name!r}"
        if not _NAME.fullmatch(row.name):
            problems.append(f"{where}: a name is [a-z][a-z0-9_]*, at most 40 characters")
        if row.name in seen:
            problems.append(f"{where}: declared twice")
        seen.add(row.name)
        if not row.timeout_seconds > 0 or not row.typical_seconds > 0 or not row.demo_seconds > 0:
            problems.append(f"{where}: timeout, typical and demo seconds must be > 0")
        if isinstance(row.attempts, bool) or not isinstance(row.attempts, int) or row.attempts < 1:
            problems.append(f"{where}: attempts is a whole number >= 1 (retries + 1)")
        if not _COLOR.fullmatch(row.color):
            problems.append(f"{where}: the colour is #rrggbb in lower case")
        if row.critical and row.demo_tolerated:
            problems.append(f"{where}: a critical agent's failure is never tolerated")
    if len({a.color for a in pipeline}) != len(pipeline):
        problems.append("two agents share a colour: charts could not tell them apart")
    keys = [row.key for row in pipeline]
    if not all(isinstance(k, str) and _KEY.fullmatch(k) for k in keys):
        problems.append("a key is 2 to 6 digits (the sort-key prefix of the agent's stored items)")
    elif any(a >= b for a, b in itertools.pairwise(keys)):
        problems.append(
            "keys must increase in pipeline order as text (a new agent takes one between its neighbours', "
            "e.g. 085 between 08 and 09); a stored key never changes"
        )
    return problems


_problems = check_pipeline(PIPELINE)
if _problems:  # pragma: no cover - a bad row fails the first import (and tests/unit/test_agents.py)
    raise ConfigurationError("tdev_state.agents.PIPELINE: " + "; ".join(_problems))
