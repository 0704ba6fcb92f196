"""`PipelineRun`: the adoption helper — the few lines an orchestrator wraps around each agent attempt.

    run = await PipelineRun.open(client, project_id, pipeline_type="PRODUCTION")   # once per run
    for attempt in range(retry_count + 1):                                          # the orchestrator's loop
        async with run.agent(agent_name, input_data=pipeline_data) as step:
            result = await asyncio.wait_for(agent.process(pipeline_data), timeout)
            step.complete(result.output_data, success=result.success, error=result.error)
    await run.finish(success=success, errors=errors)                                # its own verdict

Entering records the attempt (RUNNING, or a retry of the failed previous attempt); leaving records
COMPLETED with the output, or FAILED — for a result returned with `success=False` exactly as for an
exception (which is re-raised) or a timeout. While the agent works, a heartbeat keeps the run from looking
stalled. Each attempt's duration and outcome go to the metrics sink; progress goes to `on_progress` once
per agent, in the orchestrator's own WebSocket terms (`ProgressEvent.agent_id`, `.progress`, `.status`).

**Do no harm** (`on_store_error="defer"`, the default): no state error ever reaches the orchestrator.
Each state call has a time budget (`DeferPolicy.call_budget_seconds`); a call that runs out of it, or that
the store refuses for a transient reason, is retried in the background, in order per run, within a bounded
memory budget (tdev_state.adoption.deferred). A payload the store refuses is stored in a marked form
instead, so a refused write never leaves an agent RUNNING; what is finally lost is counted (`run.writes_lost`,
`DeferredWrites.lost`), recorded as the `state_writes_lost` metric and logged once per run. With
`on_store_error="raise"` (tests, tools) every store problem is raised as the `StateError` family — and is
never recorded as the agent's failure.

Run identity: `open` creates a NEW run and refuses an id that exists (`RunExistsError`, the other run
untouched); `resume` continues an existing one. In the defer mode a taken id (two double-clicked requests
in one second get the same `prod_…` id) is not an error for the user: the run is stored under
`<id>-dup-<8 hex>` (`run.session_id`; `run.requested_id` keeps the orchestrator's), and that is logged.
"""

from tdev_state.adoption.deferred import DeferPolicy, DeferredWrites
from tdev_state.adoption.events import UNSTORED_MARK, MetricsSink, ProgressCallback, ProgressEvent
from tdev_state.adoption.run import PipelineRun, deferred_writes
from tdev_state.adoption.step import AgentStep
from tdev_state.adoption.writes import StoreErrorMode

__all__ = [
    "UNSTORED_MARK",
    "AgentStep",
    "DeferPolicy",
    "DeferredWrites",
    "MetricsSink",
    "PipelineRun",
    "ProgressCallback",
    "ProgressEvent",
    "StoreErrorMode",
    "deferred_writes",
]
