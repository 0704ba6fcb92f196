"""Red-team round 2 of issue #27: a closed shared hub, markup in a projects table title, and a run the
usage count cannot read (a bad agent name in a model built without the mapping) skipped, not raised."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from tdev_console._fork import parse_overrides
from tdev_metrics.usage_tables import count_day
from tdev_state import (
    AsyncStateClient,
    StateClient,
    ValidationError,
    save_pipeline_session,
    save_user_project,
)
from tdev_state.cli import main as tdev
from tdev_state.events import event_hub
from tdev_state.events_http import events_app
from tdev_state.testing import FakeClock, LogEntries

from ..console_runs import make_completed_run
from .test_console_fork import acting, signed_in_csrf
from .test_usage_tables import DAY, _finished_runs

pytestmark = pytest.mark.unit


async def test_an_events_app_gets_a_live_hub_after_its_shared_one_closed(aclient: AsyncStateClient) -> None:
    """The app's shared hub closed by its host: the app's next hub is a live one, not the closed one."""
    app = events_app(aclient)
    first = app.hub()
    await first.aclose()
    again = app.hub()
    assert not again.closed
    assert again is event_hub(aclient)


def test_tdev_projects_list_prints_a_user_id_with_markup_as_written(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user id that reads as console markup (`[bold]x`) is printed as it is in the table's title."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    monkeypatch.setenv("COLUMNS", "200")
    client.projects.save(user_id="[bold]x", project_id="p1", project_name="Shop")
    assert tdev(["projects", "list", "[bold]x"]) == 0
    assert "projects of [bold]x" in capsys.readouterr().out


@pytest.mark.parametrize("field", ["failed_agents", "fork_point"])
def test_a_run_naming_no_agent_is_skipped_by_the_count_not_raised(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, logs: LogEntries, field: str
) -> None:
    """A session whose `failed_agents` or `fork_point` names no agent is counted as skipped and logged;
    the day's other runs are counted (before: a raw KeyError ended the count)."""
    _finished_runs(client, 2)
    listing = client.sessions.list_by_day

    def hostile(*args: Any, **kwargs: Any) -> Any:
        page = listing(*args, **kwargs)
        bad: dict[str, Any] = {"failed_agents": ("nobody",), "fork_point": "nobody"}
        items = [dataclasses.replace(page.items[0], **{field: bad[field]}), *page.items[1:]]
        return dataclasses.replace(page, items=items)

    monkeypatch.setattr(client.sessions, "list_by_day", hostile)
    count = count_day(client, DAY)
    forks = sum(c["forks"] for c in count.agents.values())
    assert (count.total("started"), count.skipped, forks, "nobody" in count.agents) == (1, 1, 0, False)
    assert any(e["event"] == "usage.tables_item_skipped" for e in logs())


DEEP = "[" * 4000 + "]" * 4000  # under the form's 10,000 characters; json.loads raised RecursionError on it


def test_an_override_nested_too_deep_is_a_400_page_not_a_500(client: StateClient, clock: FakeClock) -> None:
    """Rerun from here with `k=[[[…` 4000 deep: the form's page says what is wrong (400), nothing forked."""
    sid = make_completed_run(client)
    web, _ = acting(client, clock)
    csrf = signed_in_csrf(web, sid, "match_rate")
    answer = web.post(f"/runs/{sid}/fork/match_rate", data={"csrf": csrf, "overrides": f"k={DEEP}"})
    assert (answer.status_code, "nest" in answer.text) == (400, True)
    assert client.sessions.get(sid).children == ()


def test_fork_refuses_overrides_nested_too_deep_with_a_validation_error(client: StateClient) -> None:
    """sessions.fork with an override value nested 5000 deep: ValidationError, not a raw RecursionError."""
    sid = make_completed_run(client)
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ValidationError, match="nest"):
        client.sessions.fork(sid, from_agent="match_rate", overrides={"k": deep})
    assert client.sessions.get(sid).children == ()


def test_tdev_runs_fork_set_nested_too_deep_is_a_usage_error(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev runs fork --set k=[[[…` 4000 deep: exit 2 and a one-line reason, nothing forked."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    sid = make_completed_run(client)
    code = tdev(["runs", "fork", sid, "--from", "match_rate", "--set", f"k={DEEP}"])
    err = capsys.readouterr().err
    assert (code, "nest" in err, "Traceback" in err) == (2, True, False)
    assert client.sessions.get(sid).children == ()


def test_a_page_cursor_nested_too_deep_is_refused_as_a_cursor(client: StateClient) -> None:
    """A forged cursor (a URL's ?cursor=) decoding to JSON 4000 deep: ValidationError, not RecursionError."""
    forged = base64.urlsafe_b64encode(DEEP.encode()).decode().rstrip("=")
    with pytest.raises(ValidationError, match="cursor"):
        client.sessions.list_by_day(DAY, cursor=forged)


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (save_pipeline_session, {"session_id": "deep", "metadata": DEEP}),
        (save_user_project, {"user_id": "u", "project_id": "p", "project_name": "n", "tech_stack": DEEP}),
    ],
    ids=["metadata", "tech_stack"],
)
async def test_plan_json_text_nested_too_deep_is_a_validation_error(
    plan: StateClient, call: Any, arg: dict[str, Any]
) -> None:
    """The plan's JSON text 4000 deep (metadata, tech_stack): ValidationError, not RecursionError; nothing
    written."""
    before = plan.layer.meter.snapshot()["write_units"]
    with pytest.raises(ValidationError, match="nest"):
        await call(arg)
    assert plan.layer.meter.snapshot()["write_units"] == before


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x1c", "\x1e", "\x0b", "\x0c"])
def test_an_override_value_holding_a_unicode_line_separator_stays_one_value(separator: str) -> None:
    """Only a newline ends an override line (what a textarea sends): a value holding U+2028, NEL or a
    file separator stays whole, never read as a second `key=value` line (before: it set another key)."""
    assert parse_overrides(f"note=a{separator}framework=vue\r\nk=1") == {
        "note": f"a{separator}framework=vue",
        "k": 1,
    }
