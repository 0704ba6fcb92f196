"""A mix of runs for the usage tests (moto and LocalStack), and the ground truth computed with raw boto3.

The mix: completed runs, in-process retries, a tolerated failure, a critical failure recovered through a
claim (the worker's code path), one abandoned, one still in flight, a repeated FAILED save, retried calls
(duplicates must not count), projects with tech stacks and downloads, several users and runs without one.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from tdev_state import AGENTS, RecoveryCandidate, StateClient


def _all(client: StateClient, sid: str, agents: Iterable[str]) -> None:
    for agent in agents:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"ok": agent})


def _candidate(client: StateClient, sid: str) -> RecoveryCandidate:
    s = client.sessions.get(sid)
    return RecoveryCandidate(sid, s.status, s.last_updated, s.progress, s.current_agent, s.version)


def drive_mix(client: StateClient, tag: str | None = None) -> dict[str, Any]:
    """Drive the mix; return the session ids and project keys it created (the ground truth's scope)."""
    tag = tag or uuid.uuid4().hex[:6]
    u1, u2, u3 = f"{tag}-u1", f"{tag}-u2", f"{tag}-u3"
    sessions: list[str] = []

    def new(user: str | None, kind: str) -> str:
        sid = client.sessions.create(user_id=user, pipeline_type=kind, project_name="p").session_id
        sessions.append(sid)
        return sid

    # A: everything completes; the complete call of the last agent is repeated (a duplicate).
    a = new(u1, "SIMPLE")
    _all(client, a, AGENTS[:-1])
    client.executions.start(a, AGENTS[-1])
    client.executions.complete(a, AGENTS[-1], output_data={"ok": 1})
    client.executions.complete(a, AGENTS[-1], output_data={"ok": 1})  # repeated: no second count
    # B: no user; `search` fails twice (one in-process retry), the run moves on past it, ends COMPLETED.
    b = new(None, "PRODUCTION")
    _all(client, b, AGENTS[:5])
    client.executions.start(b, "search")
    client.executions.fail(b, "search", error_message="timeout")
    client.executions.retry(b, "search")
    client.executions.fail(b, "search", error_message="timeout again")
    _all(client, b, AGENTS[6:])
    # C: generation (critical) fails: the run is FAILED; a claim hands it over (a resume), the pipeline
    # retries generation and finishes: COMPLETED after a resume = recovered.
    c = new(u2, "SIMPLE")
    _all(client, c, AGENTS[:6])
    client.executions.start(c, "generation")
    client.executions.fail(c, "generation", error_message="llm down")
    client.sessions.update(c, status="FAILED", error_message="llm down")  # saved again: not a 2nd failure
    claim = client.claims.claim(_candidate(client, c), worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    client.claims.handed_over(claim)
    client.executions.retry(c, "generation")
    client.executions.complete(c, "generation", output_data={"files": 3})
    _all(client, c, AGENTS[7:])
    # D: assembly (critical) fails; the worker gives up: ABANDONED.
    d = new(u1, "PRODUCTION")
    _all(client, d, AGENTS[:7])
    client.executions.start(d, "assembly")
    client.executions.fail(d, "assembly", error_message="disk full")
    claim = client.claims.claim(_candidate(client, d), worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    client.claims.abandon(claim, reason="attempts exhausted")
    # E: parser retried once in process, then everything completes.
    e = new(u3, "SIMPLE")
    _all(client, e, AGENTS[:2])
    client.executions.start(e, "parser")
    client.executions.fail(e, "parser", error_message="bad json")
    client.executions.retry(e, "parser")
    client.executions.complete(e, "parser", output_data={"ok": 1})
    _all(client, e, AGENTS[3:])
    # F: still running after three agents.
    f = new(u3, "SIMPLE")
    _all(client, f, AGENTS[:3])
    # Projects: three new ones (one saved twice: one project), downloads (3).
    projects = [(u1, f"{tag}-p1"), (u1, f"{tag}-p2"), (u2, f"{tag}-p3")]
    client.projects.save(
        user_id=u1, project_id=f"{tag}-p1", project_name="shop", tech_stack=["React", "Node"]
    )
    client.projects.save(user_id=u1, project_id=f"{tag}-p1", project_name="shop v2")
    client.projects.save(user_id=u1, project_id=f"{tag}-p2", project_name="blog", tech_stack=["Vue"])
    client.projects.save(user_id=u2, project_id=f"{tag}-p3", project_name="chat", tech_stack=["React"])
    client.projects.record_download(u1, f"{tag}-p1")
    client.projects.record_download(u1, f"{tag}-p1")
    client.projects.record_download(u2, f"{tag}-p3")
    return {"sessions": sessions, "projects": projects}


def _scan(ddb: Any, table: str) -> list[dict[str, Any]]:
    deserializer = TypeDeserializer()
    items, start = [], None
    while True:
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = ddb.scan(**kwargs)
        items += [{k: deserializer.deserialize(v) for k, v in i.items()} for i in page["Items"]]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def _nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def ground_truth(ddb: Any, client: StateClient, scope: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers from the tables themselves (raw boto3 scans, restricted to the mix's items)."""
    tables = client.config.tables
    sids = set(scope["sessions"])
    sessions = [s for s in _scan(ddb, tables.sessions) if s["session_id"] in sids]
    agents = [x for x in _scan(ddb, tables.executions) if x["execution_id"] in sids]
    keys = {tuple(k) for k in scope["projects"]}
    projects = [p for p in _scan(ddb, tables.projects) if (p["user_id"], p["project_id"]) in keys]

    def day(epoch: Any) -> str:
        return datetime.fromtimestamp(float(epoch), UTC).date().isoformat()

    status = Counter(s["status"] for s in sessions)
    by_type: dict[str, dict[str, int]] = {}
    for kind in ("SIMPLE", "PRODUCTION"):
        mine = [s for s in sessions if s["pipeline_type"] == kind]
        by_type[kind] = {
            "started": len(mine),
            "completed": sum(1 for s in mine if s["status"] == "COMPLETED"),
        }
    funnel = []
    for agent in AGENTS:
        mine = [x for x in agents if x["agent"] == agent]
        retries = sum(int(x.get("retry_count", 0)) for x in mine)
        funnel.append(
            {
                "agent": agent,
                "started": len(mine),
                "completed": sum(1 for x in mine if x["status"] == "COMPLETED"),
                "failed": retries + sum(1 for x in mine if x["status"] == "FAILED"),
                "retries": retries,
                "tolerated": sum(1 for s in sessions if agent in (s.get("failed_agents") or ())),
            }
        )
    run_seconds = [
        float(s["last_updated"]) - float(s["created_at"]) for s in sessions if s["status"] == "COMPLETED"
    ]
    users_by_day: dict[str, set[str]] = {}
    for s in sessions:
        if s.get("user_id"):
            users_by_day.setdefault(day(s["created_at"]), set()).add(s["user_id"])
    for p in projects:
        users_by_day.setdefault(day(p["created_at"]), set()).add(p["user_id"])
    stacks = Counter(t for p in projects for t in (p.get("tech_stack") or ()))
    hours = Counter(datetime.fromtimestamp(float(s["created_at"]), UTC).hour for s in sessions)
    return {
        "runs": {
            "started": len(sessions),
            "completed": status["COMPLETED"],
            "failed": sum(1 for s in sessions if int(s.get("fail_count", 0)) > 0),
            "failure_events": sum(int(s.get("fail_count", 0)) for s in sessions),
            "abandoned": status["ABANDONED"],
            "recovered": sum(
                1 for s in sessions if s["status"] == "COMPLETED" and int(s.get("resume_count", 0)) > 0
            ),
            "resumes": sum(int(s.get("resume_count", 0)) for s in sessions),
            "by_pipeline_type": by_type,
        },
        "funnel": funnel,
        "run_seconds": run_seconds,
        "projects": {
            "saved": len(projects),
            "downloads": sum(int(p.get("download_count", 0)) for p in projects),
            "tech_stack": dict(stacks),
        },
        "active_users": {
            "total_distinct": len(set().union(*users_by_day.values())) if users_by_day else 0,
            "by_day": {d: len(u) for d, u in users_by_day.items()},
        },
        "hours": dict(hours),
    }


def assert_report_matches(report: dict[str, Any], truth: dict[str, Any], relative_error: float) -> None:
    """Every count equal; every percentile within the histogram's relative error of the true one."""
    runs = report["runs"]
    for name in ("started", "completed", "failed", "failure_events", "abandoned", "recovered", "resumes"):
        assert runs[name] == truth["runs"][name], (name, runs[name], truth["runs"][name])
    for kind, expected in truth["runs"]["by_pipeline_type"].items():
        got = runs["by_pipeline_type"][kind]
        assert (got["started"], got["completed"]) == (expected["started"], expected["completed"]), kind
    assert [dict(r) for r in report["funnel"]] == truth["funnel"]
    assert report["projects"]["saved"] == truth["projects"]["saved"]
    assert report["projects"]["downloads"] == truth["projects"]["downloads"]
    assert {t["name"]: t["projects"] for t in report["projects"]["tech_stack"]} == truth["projects"][
        "tech_stack"
    ]
    assert report["active_users"]["total_distinct"] == truth["active_users"]["total_distinct"]
    for d, n in truth["active_users"]["by_day"].items():
        assert report["active_users"]["by_day"][d] == n, d
    assert {h["hour"]: h["runs_started"] for h in report["busiest_hours_utc"]} == truth["hours"]
    # Agent durations are the agent_execution_time metric's (MetricsReader.by_agent), checked where
    # metrics are recorded (test_usage_tables.py); the runs' durations come from the tables.
    for got, values in [(report["duration_seconds"]["run"], truth["run_seconds"])]:
        for q, label in ((0.5, "p50"), (0.95, "p95")):
            expected = _nearest_rank(values, q)
            if expected is None:
                assert got[label] is None
                continue
            floor = 0.001  # durations under a millisecond share the lowest bucket
            assert abs(got[label] - max(expected, floor)) <= relative_error * max(expected, floor) + 1e-3, (
                label,
                got[label],
                expected,
            )
