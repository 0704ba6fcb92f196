"""User projects: upsert keeps counters, listing by last access, atomic downloads, delete."""

from __future__ import annotations

import pytest

from tdev_state import ProjectNotFoundError, StateClient, ValidationError
from tdev_state.testing import FakeClock


def test_save_is_an_upsert_that_keeps_downloads(client: StateClient) -> None:
    """Saving again updates fields but keeps download_count and created_at."""
    first = client.projects.save(user_id="u", project_id="p1", project_name="Todo", tech_stack=["react"])
    client.projects.record_download("u", "p1")
    again = client.projects.save(user_id="u", project_id="p1", project_name="Todo v2", size_mb=1.25)
    assert again.download_count == 1
    assert again.created_at == first.created_at
    assert (again.project_name, again.size_mb, again.tech_stack) == ("Todo v2", 1.25, ["react"])


def test_list_is_most_recently_accessed_first(client: StateClient, clock: FakeClock) -> None:
    """A download moves a project to the front; pages follow."""
    for i in range(4):
        clock.advance(seconds=1)
        client.projects.save(user_id="u", project_id=f"p{i}", project_name=f"P{i}")
    clock.advance(seconds=1)
    client.projects.record_download("u", "p0")
    page = client.projects.list_for_user("u", limit=3)
    assert [p.project_id for p in page.items] == ["p0", "p3", "p2"]
    rest = client.projects.list_for_user("u", limit=3, cursor=page.next_cursor)
    assert [p.project_id for p in rest.items] == ["p1"]


def test_downloads_count_atomically(client: StateClient) -> None:
    """Each record_download adds exactly one."""
    client.projects.save(user_id="u", project_id="p", project_name="P")
    for _ in range(5):
        client.projects.record_download("u", "p")
    assert client.projects.get("u", "p").download_count == 5


def test_missing_project(client: StateClient) -> None:
    """Downloading or getting a missing project is ProjectNotFoundError; delete says False."""
    with pytest.raises(ProjectNotFoundError):
        client.projects.record_download("u", "ghost")
    with pytest.raises(ProjectNotFoundError):
        client.projects.get("u", "ghost")
    assert client.projects.delete("u", "ghost") is False


def test_delete(client: StateClient) -> None:
    """Delete removes the project and reports that it existed."""
    client.projects.save(user_id="u", project_id="p", project_name="P")
    assert client.projects.delete("u", "p") is True
    assert client.projects.list_for_user("u").items == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"project_name": ""},
        {"tech_stack": "react"},
        {"tech_stack": [1]},
        {"size_mb": -1},
        {"size_mb": float("nan")},
        {"project_id": ""},
        {"user_id": "x" * 300},
    ],
)
def test_bad_input_is_refused(client: StateClient, kwargs: dict[str, object]) -> None:
    """Malformed fields raise ValidationError and nothing is written."""
    args: dict[str, object] = {"user_id": "u", "project_id": "p", "project_name": "P", **kwargs}
    with pytest.raises(ValidationError):
        client.projects.save(**args)  # type: ignore[arg-type]
    assert client.projects.list_for_user("u").items == []
