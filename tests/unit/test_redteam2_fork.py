"""Red-team round 2 of issue #27: a closed shared hub, markup in a projects table title, and a run the
usage count cannot read (a bad agent name in a model built without the mapping) skipped, not raised."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tdev_metrics.usage_tables import count_day
from tdev_state import AsyncStateClient, StateClient
from tdev_state.cli import main as tdev
from tdev_state.events import event_hub
from tdev_state.events_http import events_app
from tdev_state.testing import LogEntries

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
