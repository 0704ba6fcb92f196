"""`tdev backlog` on moto: the backlog listed with the worker's rule, actions through the worker's claim
path, refusals as one line and exit 1, dry runs that write nothing, --json that parses."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
import pytest

from tdev_recovery import backlog_cli
from tdev_state import AGENTS, SessionStatus, StateClient, StateConfig
from tdev_state.cli import main as tdev
from tdev_state.testing import FakeClock, serve_resume_endpoint

#: The worker's settings the CLI reads; a developer's shell must not change what these tests see.
_SETTINGS = (
    "TDEV_STALL_THRESHOLD",
    "TDEV_RESUME_COOLDOWN",
    "TDEV_RESUMER",
    "TDEV_MAX_ATTEMPTS",
    "TDEV_MAX_RESUMES",
    "TDEV_USAGE",
)


@dataclass
class Runs:
    stalled: str  # crashed after 4 agents, match_rate left RUNNING, silent 65 min
    failed: str  # the pipeline failed it at generation, 5 min ago
    healthy: str  # ACTIVE, its first agent just started


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the worker's settings from the shell."""
    for name in _SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def runs(client: StateClient, clock: FakeClock, settings: None) -> Runs:
    stalled = client.sessions.create(user_id="ops", project_name="shop").session_id
    for agent in AGENTS[:4]:
        client.executions.start(stalled, agent, input_data={"in": agent})
        client.executions.complete(stalled, agent, output_data={"out": agent})
    client.executions.start(stalled, AGENTS[4])
    clock.advance(hours=1)
    failed = client.sessions.create(user_id="ops", project_name="blog").session_id
    for agent in AGENTS[:6]:
        client.executions.start(failed, agent, input_data={"in": agent})
        client.executions.complete(failed, agent, output_data={"out": agent})
    client.executions.start(failed, "generation")
    client.executions.fail(failed, "generation", error_message="llm quota")
    client.sessions.update(failed, status="FAILED")
    clock.advance(minutes=5)
    healthy = client.sessions.create(user_id="ops", project_name="live").session_id
    client.executions.start(healthy, AGENTS[0], input_data={"in": "x"})
    return Runs(stalled=stalled, failed=failed, healthy=healthy)


def backlog(client: StateClient, *argv: str) -> int:
    return backlog_cli.main(list(argv), client=client)


@pytest.fixture
def pipeline() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The pipeline's resume endpoint, in this process: records each request, answers 202."""
    received: list[dict[str, Any]] = []

    def accept(body: dict[str, Any]) -> int:
        received.append(body)
        return 202

    server, url = serve_resume_endpoint(accept)
    yield url, received
    server.shutdown()
    server.server_close()


def _items(client: StateClient) -> list[dict[str, Any]]:
    """Every session and agent item as stored (behind the library's back)."""
    dynamo = boto3.client("dynamodb", region_name="us-east-1")
    tables = (client.layer.tables.sessions, client.layer.tables.executions)
    return [item for table in tables for item in dynamo.scan(TableName=table)["Items"]]


# --- list ------------------------------------------------------------------------------------------------


def test_list_shows_failed_and_stalled_runs_and_not_healthy_ones(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json lists the FAILED and the stalled run, oldest first, with idle time, attempts and lease."""
    assert backlog(client, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["session_id"], r["state"]) for r in rows] == [
        (runs.stalled, "stalled"),
        (runs.failed, "FAILED"),
    ]
    assert rows[0]["idle_seconds"] == pytest.approx(65 * 60, abs=1)
    assert rows[0]["current_agent"] == "match_rate"
    assert (rows[0]["resume_attempts"], rows[0]["resume_count"], rows[0]["lease_owner"]) == (0, 0, None)
    assert all(r["actionable"] for r in rows)


def test_list_prints_full_ids_and_human_times(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has the whole session ids (copyable) and idle times people read (1h05m, 5m ago)."""
    assert backlog(client, "list") == 0
    out = capsys.readouterr().out
    assert runs.stalled in out
    assert runs.failed in out
    assert runs.healthy not in out
    assert "1h05m" in out
    assert "5m ago" in out
    assert "2 run(s): 1 FAILED, 1 stalled; 2 ready" in out


def test_list_time_formats(client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """--time-format iso prints UTC timestamps, epoch the seconds scripts compare, relative "… ago"."""
    stamp = client.sessions.candidate(runs.failed).last_updated
    assert backlog(client, "list", "--failed-only", "--time-format", "iso") == 0
    assert stamp.strftime("%Y-%m-%dT%H:%M:%SZ") in capsys.readouterr().out
    assert backlog(client, "list", "--failed-only", "--time-format", "epoch") == 0
    assert f"{stamp.timestamp():.3f}" in capsys.readouterr().out


def test_list_filters(client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """--failed-only, --stalled-only, --older-than and --agent each narrow the listing (-q: ids only)."""
    cases = {
        ("--failed-only",): [runs.failed],
        ("--stalled-only",): [runs.stalled],
        ("--older-than", "30m"): [runs.stalled],
        ("--agent", "generation"): [runs.failed],
    }
    for flags, expected in cases.items():
        capsys.readouterr()
        assert backlog(client, "list", "-q", *flags) == 0, flags
        assert capsys.readouterr().out.split() == expected, flags


def test_the_stall_threshold_is_the_workers_setting(
    client: StateClient, runs: Runs, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$TDEV_STALL_THRESHOLD (the worker's variable) decides what is stalled; --stall-threshold wins."""
    monkeypatch.setenv("TDEV_STALL_THRESHOLD", "2h")
    assert backlog(client, "list", "-q", "--stalled-only") == 1  # 65 min of silence is not 2 h
    clock.advance(seconds=30)
    assert backlog(client, "list", "-q", "--stalled-only", "--stall-threshold", "20s") == 0


def test_an_empty_backlog_is_exit_1_and_json_still_parses(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing matching is the shared "nothing found" (1); --json still prints a JSON array."""
    assert backlog(client, "list", "--json", "--agent", "download") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "empty" in captured.err


def test_a_held_lease_is_shown_and_refused(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str], pipeline: tuple[str, list[Any]]
) -> None:
    """A run a worker holds lists its lease owner; resuming it is one line naming the holder, exit 1."""
    claim = client.claims.claim(
        client.sessions.candidate(runs.failed), worker_id="w9", lease=timedelta(minutes=5)
    )
    assert claim is not None
    assert backlog(client, "list", "--json", "--failed-only") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["lease_owner"], row["actionable"]) == ("w9", False)
    assert backlog(client, "resume", runs.failed, "--resumer", pipeline[0]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "w9" in err
    assert "force" not in err  # no flag lifts a worker's lease
    assert pipeline[1] == []


# --- resume and abandon one run --------------------------------------------------------------------------


def test_resume_sends_the_run_to_the_pipeline_through_a_claim(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str], pipeline: tuple[str, list[Any]]
) -> None:
    """`resume ID` claims the stalled run and the pipeline gets it at its next agent with a fencing token."""
    url, received = pipeline
    assert backlog(client, "resume", runs.stalled, "--resumer", url, "--no-usage") == 0
    assert f"resumed {runs.stalled}" in capsys.readouterr().out
    (request,) = received
    assert (request["session_id"], request["next_agent"], request["fencing_token"]) == (
        runs.stalled,
        "match_rate",
        1,
    )
    assert client.sessions.get(runs.stalled).resume_count == 1


def test_resume_json_parses(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str], pipeline: tuple[str, list[Any]]
) -> None:
    """--json on an action is one object with the outcome and the fencing token."""
    assert backlog(client, "resume", runs.failed, "--resumer", pipeline[0], "--json", "--no-usage") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["outcome"], result["fencing_token"]) == (True, "resumed", 1)


def test_abandon_records_the_reason(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`abandon ID --reason` gives the run up under a claim; the run carries the operator's reason."""
    assert backlog(client, "abandon", runs.failed, "--reason", "customer cancelled", "--no-usage") == 0
    assert f"abandoned {runs.failed}" in capsys.readouterr().out
    session = client.sessions.get(runs.failed)
    assert session.status is SessionStatus.ABANDONED
    assert "customer cancelled" in (session.error_message or "")


def test_a_live_run_is_refused_in_one_line_and_left_alone(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Abandoning a run inside its window is refused by the worker's rule: one line, exit 1, no write."""
    before = client.sessions.candidate(runs.healthy)
    assert backlog(client, "abandon", runs.healthy, "--reason", "oops") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"refused {runs.healthy}: ")
    assert "live" in err
    assert "pass --force" in err  # the flag, not the plan's Python argument
    assert len(err.strip().splitlines()) == 1
    assert client.sessions.candidate(runs.healthy).version == before.version


def test_force_takes_a_live_run_as_the_plan_does(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--force` with one id is the plan's force=True: the live run is abandoned under a claim."""
    assert backlog(client, "abandon", runs.healthy, "--reason", "wrong request", "--force", "--no-usage") == 0
    assert client.sessions.get(runs.healthy).status is SessionStatus.ABANDONED


def test_a_final_run_is_refused(client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """A run already ABANDONED is not recoverable: one line saying so, exit 1."""
    assert backlog(client, "abandon", runs.failed, "--reason", "first", "--no-usage") == 0
    capsys.readouterr()
    assert backlog(client, "abandon", runs.failed, "--reason", "again") == 1
    assert "ABANDONED" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["resume", "", "--resumer", "http://pipeline/resume"], 2, "session_id"),
        (["resume", "no-such-run", "--resumer", "http://pipeline/resume"], 1, "not found"),
        (["resume", "some-run"], 2, "no resumer"),
        (["resume", "some-run", "--resumer", "not a resumer"], 2, "neither a URL"),
        (["resume", "--all", "some-run", "--dry-run"], 2, "not both"),
        (["resume", "--dry-run"], 2, "or pass --all"),
        (["abandon", "--all", "--reason", "  "], 2, "--reason"),
        (["abandon", "--all"], 2, "--reason"),
        (["abandon", "--all", "--reason", "bytes \udcff from a shell"], 2, "surrogate"),
        (["list", "--older-than", "soon"], 2, "not a duration"),
        (["resume", "x", "--failed-only", "--dry-run"], 2, "go with --all"),
        (["abandon", "--all", "--force", "--reason", "r"], 2, "one named run"),
    ],
)
def test_bad_arguments_are_one_line_without_a_traceback(  # noqa: PLR0917 - fixtures and parameters
    client: StateClient,
    settings: None,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    says: str,
) -> None:
    """Bad ids, a missing or broken resumer, contradictory flags: one line, the shared exit code."""
    assert backlog(client, *argv) == code
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_a_store_that_does_not_answer_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No store at the endpoint: `tdev backlog list` says so in one line, exit 3."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    config = StateConfig(env="unit", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    down = StateClient(config)
    try:
        assert backlog(down, "list") == 3
    finally:
        down.close()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


# --- batches ---------------------------------------------------------------------------------------------


def test_a_batch_dry_run_writes_nothing(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`resume --all --dry-run` says what it would do per run and writes no item (no resumer needed)."""
    before = _items(client)
    assert backlog(client, "resume", "--all", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"would resume {runs.stalled}" in out
    assert f"would resume {runs.failed}" in out
    assert "dry run, nothing written: 2 run(s); 2 would be resumed, 0 would be refused" in out
    assert _items(client) == before


def test_a_batch_resumes_each_run_and_exits_1_when_one_is_refused(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str], pipeline: tuple[str, list[Any]]
) -> None:
    """`resume --all`: one line per run, a refusal (a worker's lease) with its reason, a summary, exit 1."""
    client.claims.claim(client.sessions.candidate(runs.stalled), worker_id="w9", lease=timedelta(minutes=5))
    url, received = pipeline
    assert backlog(client, "resume", "--all", "--resumer", url, "--no-usage") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"refused {runs.stalled}: ")
    assert out[1].startswith(f"resumed {runs.failed} ")
    assert out[2] == "2 run(s): 1 resumed, 1 refused"
    assert [r["session_id"] for r in received] == [runs.failed]


def test_a_batch_with_filters_and_json(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str], pipeline: tuple[str, list[Any]]
) -> None:
    """`abandon --all --older-than 30m --json` takes only the old run; the document has a summary; exit 0."""
    assert (
        backlog(
            client, "abandon", "--all", "--older-than", "30m", "--reason", "stale", "--json", "--no-usage"
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert [r["session_id"] for r in document["results"]] == [runs.stalled]
    assert document["summary"] == {"selected": 1, "ok": 1, "refused": 0}
    assert client.sessions.get(runs.stalled).status is SessionStatus.ABANDONED
    assert client.sessions.get(runs.failed).status is SessionStatus.FAILED


def test_resume_now_is_counted_into_usage_as_the_workers(
    client: StateClient, runs: Runs, pipeline: tuple[str, list[Any]]
) -> None:
    """With usage on (the default), a resume from the terminal is counted like the worker's."""
    from tdev_metrics.usage_reader import UsageReader

    assert backlog(client, "resume", runs.stalled, "--resumer", pipeline[0]) == 0
    day = client.clock().date()
    assert UsageReader(client).report(day, day)["runs"]["resumes"] == 1


def test_tdev_finds_the_backlog_command(
    runs: Runs, client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The umbrella `tdev` runs `tdev backlog` from its entry point (here: a dry run on moto's tables)."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    assert tdev(["backlog", "list", "--failed-only", "-q"]) == 0


@pytest.fixture
def refusing_pipeline() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A resume endpoint that refuses every run for good (HTTP 400)."""
    received: list[dict[str, Any]] = []

    def refuse(body: dict[str, Any]) -> int:
        received.append(body)
        return 400

    server, url = serve_resume_endpoint(refuse)
    yield url, received
    server.shutdown()
    server.server_close()


def test_a_resume_the_pipeline_refuses_is_one_line_with_what_became_of_the_run(
    client: StateClient,
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    refusing_pipeline: tuple[str, list[Any]],
) -> None:
    """The claim went through but the pipeline refused for good: exit 1, the run's fate and why."""
    assert backlog(client, "resume", runs.failed, "--resumer", refusing_pipeline[0], "--no-usage") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"refused {runs.failed}: outcome abandoned: ")
    assert "400" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_batch_stops_at_the_first_run_the_pipeline_does_not_take(
    client: StateClient,
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    refusing_pipeline: tuple[str, list[Any]],
) -> None:
    """A pipeline that refuses (or a wrong resumer) costs one run, not the backlog: the rest are not tried."""
    url, received = refusing_pipeline
    assert backlog(client, "resume", "--all", "--resumer", url, "--no-usage") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"refused {runs.failed}: not tried: the pipeline did not take {runs.stalled}")
    assert [r["session_id"] for r in received] == [runs.stalled]
    assert client.sessions.get(runs.failed).status is SessionStatus.FAILED


def test_a_malformed_worker_setting_is_exit_2_naming_the_variable(
    client: StateClient, settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad $TDEV_STALL_THRESHOLD (shared with the worker) is one line naming it, exit 2."""
    monkeypatch.setenv("TDEV_STALL_THRESHOLD", "soon")
    assert backlog(client, "list") == 2
    err = capsys.readouterr().err
    assert "$TDEV_STALL_THRESHOLD" in err
    assert len(err.strip().splitlines()) == 1
