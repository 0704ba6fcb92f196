"""Concurrency: 20 writers advancing one session — exactly one wins each step, nothing is lost."""

from __future__ import annotations

import asyncio

from tdev_state import AGENTS, AgentStatus, AsyncStateClient, ConflictError, StateClient


async def test_twenty_tasks_advancing_one_session(client: StateClient) -> None:
    """For every agent, 20 concurrent starts then 20 concurrent completes: one winner each, 19 conflicts."""
    aclient = AsyncStateClient(StateClient(client.config))
    try:
        sid = (await aclient.sessions.create(user_id="race", project_name="r")).session_id
        winners: dict[str, tuple[int, int]] = {}
        for agent in AGENTS:
            results = {}
            for phase in ("start", "complete"):

                async def attempt(task: int, phase: str = phase, agent: str = agent) -> str:
                    try:
                        if phase == "start":
                            await aclient.executions.start(sid, agent, input_data={"task": task})
                        else:
                            await aclient.executions.complete(sid, agent, output_data={"task": task})
                    except ConflictError:
                        return "conflict"
                    return "won"

                outcomes = await asyncio.gather(*(attempt(t) for t in range(20)))
                assert outcomes.count("won") == 1, (agent, phase, outcomes)
                assert outcomes.count("conflict") == 19
                results[phase] = outcomes.index("won")
            winners[agent] = (results["start"], results["complete"])

        session = await aclient.sessions.get(sid)
        assert session.progress == len(AGENTS)
        assert session.version == 1 + 2 * len(AGENTS)  # one bump per winning transition, none lost
        run = await aclient.executions.list(sid)
        for execution in run:
            start_task, complete_task = winners[execution.agent_name]
            assert execution.status is AgentStatus.COMPLETED
            assert execution.input_data == {"task": start_task}
            assert execution.output_data == {"task": complete_task}
    finally:
        await aclient.aclose()
