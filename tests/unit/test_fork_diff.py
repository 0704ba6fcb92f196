"""Versions of attempts, the diff of two runs, and `tdev runs fork|diff` on moto (#27)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tdev_state import AGENTS, AsyncStateClient, PipelineRun, StateClient, ValidationError
from tdev_state import validate as check
from tdev_state.cli import main as tdev
from tdev_state.diff import MAX_PATHS, diff_runs, mixed_versions

pytestmark = pytest.mark.unit

V1 = {"code": "1.4.2", "model": "anthropic/claude-x"}
V2 = {"code": "1.5.0", "model": "anthropic/claude-y"}


def finished_run(client: StateClient, output: Any = None, version: dict[str, str] | None = None) -> str:
    """A COMPLETED run whose agents output `output` (default: their own name), made by `version`."""
    sid = client.sessions.create(user_id="ops", project_name="shop").session_id
    for agent in AGENTS:
        client.executions.start(sid, agent, input_data={"framework": "react"}, agent_version=version)
        client.executions.complete(sid, agent, output_data=output if output is not None else {"by": agent})
    return sid


def test_an_attempts_version_is_stored_and_read_back(client: StateClient) -> None:
    """agent_version given at start is on the AgentExecution."""
    sid = finished_run(client, version=V1)
    assert client.executions.get(sid, "parser").agent_version == V1


def test_a_retry_without_a_version_does_not_keep_the_earlier_attempts(client: StateClient) -> None:
    """A retry records its own version, or none: the failed attempt's never stands for the new output."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input", agent_version=V1)
    client.executions.fail(sid, "nl_input", error_message="boom")
    client.executions.retry(sid, "nl_input")
    assert client.executions.get(sid, "nl_input").agent_version is None
    client.executions.fail(sid, "nl_input", error_message="boom")
    client.executions.retry(sid, "nl_input", agent_version=V2)
    assert client.executions.get(sid, "nl_input").agent_version == V2


@pytest.mark.parametrize(
    "version",
    [
        "1.4.2",
        {},
        {"code": 1},
        {"code": ""},
        {"co de": "1"},
        {"code": "1\n2"},
        {"code": "\x1b[31mred"},
        {"code": "x" * 200},
        {f"k{i}": "v" for i in range(9)},
    ],
)
def test_a_hostile_or_malformed_version_is_refused(version: Any) -> None:
    """Versions are short visible texts under identifier names: anything else is ValidationError."""
    with pytest.raises(ValidationError):
        check.agent_version(version)


def test_a_start_with_a_refused_version_writes_nothing(client: StateClient) -> None:
    """executions.start checks the version before writing: the agent is not started."""
    sid = client.sessions.create().session_id
    with pytest.raises(ValidationError):
        client.executions.start(sid, "nl_input", agent_version={"code": "1\n2"})
    assert client.executions.list(sid) == []


async def test_the_adoption_helper_records_each_attempts_version(
    client: StateClient, aclient: AsyncStateClient
) -> None:
    """PipelineRun.agent(..., agent_version=) stores it with the attempt."""
    run = await PipelineRun.open(aclient, "run-v", on_store_error="raise")
    async with run.agent("nl_input", input_data={"q": 1}, agent_version=V1) as step:
        step.complete({"ok": True})
    assert client.executions.get("run-v", "nl_input").agent_version == V1


def test_a_fork_that_continues_with_a_new_model_mixes_versions(client: StateClient) -> None:
    """mixed_versions names the fields whose values differ across a run's agents."""
    parent = finished_run(client, version=V1)
    child = client.sessions.fork(parent, from_agent="generation").session_id
    client.executions.start(child, "generation", agent_version={**V1, "model": "anthropic/claude-y"})
    mixed = mixed_versions(client.executions.list(child))
    assert mixed == {"model": ("anthropic/claude-x", "anthropic/claude-y")}
    assert mixed_versions(client.executions.list(child), keys=["code"]) == {}
    assert mixed_versions(client.executions.list(parent)) == {}


def test_a_diff_names_the_agents_and_paths_that_differ(client: StateClient) -> None:
    """Same outputs are 'same'; a differing one lists its JSON paths and both values."""
    a = finished_run(client, output={"files": {"App.jsx": "react", "n": 1}, "ok": True})
    b = finished_run(client, output={"files": {"App.vue": "vue", "n": 1}, "ok": True})
    diff = diff_runs(client, a, b)
    first = diff.agents[0]
    assert not first.same_output
    assert [(p.path, p.a, p.b) for p in first.paths] == [
        ('$.files["App.jsx"]', '"react"', "(absent)"),
        ('$.files["App.vue"]', "(absent)", '"vue"'),
    ]
    assert diff.differing == AGENTS
    assert diff_runs(client, a, a).differing == ()


def test_a_diff_lists_at_most_twenty_paths_and_counts_the_rest(client: StateClient) -> None:
    """A large difference is bounded: MAX_PATHS listed, the rest counted, each value cut short."""
    a = finished_run(client, output={"items": list(range(100)), "text": "a" * 500})
    b = finished_run(client, output={"items": list(range(100, 200)), "text": "b" * 500})
    first = diff_runs(client, a, b).agents[0]
    assert len(first.paths) == MAX_PATHS
    assert first.more_paths == 101 - MAX_PATHS
    assert all(len(p.a) <= 80 and len(p.b) <= 80 for p in first.paths)


def test_a_diff_of_a_replay_shows_the_rerun_agents_and_versions(client: StateClient) -> None:
    """Parent vs its replay: copied agents are the same, a rerun agent differs, versions per side."""
    parent = finished_run(client, version=V1)
    child = client.sessions.fork(parent, from_agent="download").session_id
    client.executions.start(child, "download", input_data={"framework": "react"}, agent_version=V2)
    client.executions.complete(child, "download", output_data={"by": "someone else"})
    diff = diff_runs(client, parent, child).to_json()
    assert diff["differing"] == ["download"]
    last = diff["agents"][-1]
    assert (last["version_a"], last["version_b"]) == (V1, V2)
    assert json.loads(json.dumps(diff)) == diff


@pytest.fixture
def cli_env(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> StateClient:
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    return client


def test_tdev_runs_fork_prints_the_new_runs_id(
    cli_env: StateClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev runs fork ID --from AGENT --set k=v` prints the id; --set values are JSON when they parse."""
    parent = finished_run(cli_env)
    code = tdev(["runs", "fork", parent, "--from", "parser", "--set", "framework=vue", "--set", "retries=3"])
    child = capsys.readouterr().out.strip()
    assert code == 0
    assert cli_env.executions.get(child, "parser").input_data == {"framework": "vue", "retries": 3}


def test_tdev_runs_fork_json(cli_env: StateClient, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the new run's session."""
    parent = finished_run(cli_env)
    assert tdev(["runs", "fork", parent, "--from", "parser", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parent_id"] == parent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "nope"], "unknown agent"),
        (["--from", "parser", "--set", "noequals"], "key=value"),
    ],
)
def test_tdev_runs_fork_refuses_bad_arguments_in_one_line(
    cli_env: StateClient, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """A bad agent or --set is exit 2 with one line, no traceback (refused before any read)."""
    assert tdev(["runs", "fork", "some-run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_tdev_runs_fork_of_an_active_run_is_exit_2(
    cli_env: StateClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Forking a run still ACTIVE is the caller's to fix: one line, exit 2."""
    sid = cli_env.sessions.create().session_id
    assert tdev(["runs", "fork", sid, "--from", "nl_input"]) == 2
    err = capsys.readouterr().err
    assert "ACTIVE" in err
    assert len(err.strip().splitlines()) == 1


def test_tdev_runs_diff(cli_env: StateClient, capsys: pytest.CaptureFixture[str]) -> None:
    """`tdev runs diff A B` shows each agent; --json gives the RunDiff's JSON."""
    a = finished_run(cli_env, output={"x": 1})
    b = finished_run(cli_env, output={"x": 2})
    assert tdev(["runs", "diff", a, b]) == 0
    out = capsys.readouterr().out
    assert all(agent in out for agent in AGENTS)
    assert "differs" in out
    assert tdev(["runs", "diff", a, b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agents"][0]["paths"] == [{"path": "$.x", "a": "1", "b": "2"}]
    assert tdev(["runs", "diff", a, "nope"]) == 1


def test_tdev_sessions_show_prints_the_lineage(
    cli_env: StateClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev sessions show` names a fork's parent and fork point, and a parent's forks."""
    parent = finished_run(cli_env)
    child = cli_env.sessions.fork(parent, from_agent="parser", overrides={"framework": "vue"}).session_id
    assert tdev(["sessions", "show", child]) == 0
    assert f"forked from {parent} at parser" in capsys.readouterr().out.replace("\n", "")
    assert tdev(["sessions", "show", parent]) == 0
    assert f"{child} (at parser)" in capsys.readouterr().out.replace("\n", "")


def test_tdev_runs_diff_of_one_fork_compares_it_with_its_parent(
    cli_env: StateClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev runs diff CHILD` diffs the fork against its parent; a run that is no fork is exit 2, one line."""
    parent = finished_run(cli_env)
    child = cli_env.sessions.fork(parent, from_agent="parser").session_id
    assert tdev(["runs", "diff", child, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["run_a"], shown["run_b"]) == (parent, child)
    assert tdev(["runs", "diff", parent]) == 2
    err = capsys.readouterr().err
    assert "is not a fork" in err
    assert len(err.strip().splitlines()) == 1
