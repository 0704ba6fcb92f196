"""Compare two runs agent by agent (issue #27): how an engineer reproduces a bug or checks a new model.

A replay (a fork without overrides) reruns agents k..9 on the same inputs; `diff_runs(client, parent, fork)`
says, per agent, its status in each run, whether the outputs are the same, the first differing JSON paths
(values cut short) and the `agent_version` each attempt recorded. Outputs are read through the client's
ordinary reads (`executions.list`: S3, chunks and sealed fields as for any reader, every checksum checked).

`mixed_versions` tells when one run's agents were made by different versions — a fork continuing with a new
model, a resume after a deploy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tdev_state import validate as check
from tdev_state.client import StateClient
from tdev_state.exceptions import ValidationError
from tdev_state.models import AGENTS, AgentExecution

#: Differing paths listed per agent (the rest are counted), and characters kept of each value shown.
MAX_PATHS = 20
VALUE_CHARS = 80
#: Differences counted per agent before the walk stops (a bound on the work for huge outputs).
_COUNT_LIMIT = 10_000
_ABSENT = "(absent)"


@dataclass(frozen=True)
class PathDiff:
    """One JSON path whose values differ: each side's value as JSON text, cut to VALUE_CHARS."""

    path: str
    a: str
    b: str


@dataclass(frozen=True)
class AgentDiff:
    """One agent in both runs."""

    agent: str
    status_a: str
    status_b: str
    same_output: bool
    paths: tuple[PathDiff, ...] = ()
    #: Differences beyond the listed paths (at least this many: the walk stops at 10,000).
    more_paths: int = 0
    version_a: dict[str, str] | None = None
    version_b: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (the CLI's --json and the console)."""
        return {
            "agent": self.agent,
            "status_a": self.status_a,
            "status_b": self.status_b,
            "same_output": self.same_output,
            "paths": [{"path": p.path, "a": p.a, "b": p.b} for p in self.paths],
            "more_paths": self.more_paths,
            "version_a": self.version_a,
            "version_b": self.version_b,
        }


@dataclass(frozen=True)
class RunDiff:
    """Two runs compared agent by agent, in pipeline order."""

    run_a: str
    run_b: str
    agents: tuple[AgentDiff, ...]
    #: Per run, the version fields whose values differ across its agents (`mixed_versions`).
    mixed_a: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mixed_b: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def differing(self) -> tuple[str, ...]:
        """The agents whose outputs or statuses differ."""
        return tuple(d.agent for d in self.agents if not d.same_output or d.status_a != d.status_b)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (the CLI's --json and the console)."""
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "differing": list(self.differing),
            "agents": [d.to_json() for d in self.agents],
            "mixed_versions_a": {k: list(v) for k, v in self.mixed_a.items()},
            "mixed_versions_b": {k: list(v) for k, v in self.mixed_b.items()},
        }


def diff_runs(client: StateClient, a: str, b: str) -> RunDiff:
    """Compare run `a` with run `b` (ids or refs), agent by agent: two reads of each run's agents.

    SessionNotFoundError for an unknown run; the typed payload errors of `executions.list` when an output
    cannot be read (vanished object, changed bytes, a key the caller may not use)."""
    if not isinstance(client, StateClient):  # an AsyncStateClient would hand back coroutines
        raise ValidationError(
            f"diff_runs reads through a StateClient, got {type(client).__name__}; from async code: "
            "await asyncio.to_thread(diff_runs, aclient.sync, a, b)"
        )
    run_a = client.sessions.resolve(check.identifier("a", a, existing=True))
    run_b = client.sessions.resolve(check.identifier("b", b, existing=True))
    side_a = {e.agent_name: e for e in client.executions.list(run_a)}
    side_b = {e.agent_name: e for e in client.executions.list(run_b)}
    agents = tuple(_agent_diff(agent, side_a.get(agent), side_b.get(agent)) for agent in AGENTS)
    return RunDiff(
        run_a=run_a,
        run_b=run_b,
        agents=agents,
        mixed_a=mixed_versions(side_a.values()),
        mixed_b=mixed_versions(side_b.values()),
    )


def mixed_versions(
    executions: Iterable[AgentExecution], *, keys: Iterable[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """The version fields whose values differ across a run's agents, with the values in pipeline order
    (empty: one version made the whole run, or none was recorded).

    Agents without a version are left out. `keys` limits the look to the fields the pipeline means
    run-wide (a code release, a model): a field that differs per agent by design, such as each agent's
    own prompt hash, would otherwise always show as mixed."""
    wanted = set(keys) if keys is not None else None
    seen: dict[str, dict[str, None]] = {}
    for execution in sorted(executions, key=lambda e: e.step):
        for name, value in (execution.agent_version or {}).items():
            if wanted is None or name in wanted:
                seen.setdefault(name, {})[value] = None
    return {name: tuple(values) for name, values in sorted(seen.items()) if len(values) > 1}


def _agent_diff(agent: str, a: AgentExecution | None, b: AgentExecution | None) -> AgentDiff:
    output_a = a.output_data if a is not None else None
    output_b = b.output_data if b is not None else None
    found: list[PathDiff] = []
    count = 0
    for difference in _differences(output_a, output_b, "$"):
        count += 1
        if len(found) < MAX_PATHS:
            found.append(difference)
        if count >= _COUNT_LIMIT:
            break
    return AgentDiff(
        agent=agent,
        status_a=a.status.value if a is not None else "PENDING",
        status_b=b.status.value if b is not None else "PENDING",
        same_output=count == 0,
        paths=tuple(found),
        more_paths=count - len(found),
        version_a=a.agent_version if a is not None else None,
        version_b=b.agent_version if b is not None else None,
    )


def _differences(a: Any, b: Any, path: str) -> Iterator[PathDiff]:
    """Every path where `a` and `b` differ, depth first: object keys in sorted order, list items by index
    (an item only one side has is its own difference)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if str(key).isidentifier() else f"{path}[{json.dumps(str(key))}]"
            if key not in a or key not in b:
                yield PathDiff(where, _shown(a, key), _shown(b, key))
            else:
                yield from _differences(a[key], b[key], where)
        return
    if isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            where = f"{path}[{index}]"
            if index >= len(a) or index >= len(b):
                yield PathDiff(where, _shown(a, index), _shown(b, index))
            else:
                yield from _differences(a[index], b[index], where)
        return
    if type(a) is not type(b) or a != b:
        yield PathDiff(path, _cut(a), _cut(b))


def _shown(container: Any, key: Any) -> str:
    if isinstance(container, dict):
        return _cut(container[key]) if key in container else _ABSENT
    return _cut(container[key]) if key < len(container) else _ABSENT


def _cut(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"
