"""AFTER: `before.py` adopted exactly as docs/adoption.md shows — every run, agent attempt, failure and
verdict stored through `tdev_state.PipelineRun`, and the resume route mounted. A store problem never fails
a run (the helper's default `on_store_error="defer"`). tests/unit/test_adoption_diff.py measures the
difference from `before.py` and checks the figure docs/adoption.md states.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from examples.orchestrator.agents import (
    AGENT_NAMES,
    CRITICAL_AGENTS,
    AgentExecutionResult,
    ProductionPipelineResult,
    Script,
    make_agents,
)
from tdev_state import AsyncStateClient, PipelineRun, resume_app

logger = logging.getLogger(__name__)

PROMOTED = {
    "nl_input": ["requirements", "project_type", "intent", "features"],
    "ui_selection": ["framework", "ui_library", "components"],
    "generation": ["files", "generated_files"],
    "assembly": ["package_path", "assembled_project"],
    "download": ["download_url", "download_id"],
}


class ProductionECSPipeline:
    def __init__(self, config: dict[str, Any] | None = None):
        self.config = config or {}
        self.initialized = False
        self.agent_pipeline = list(AGENT_NAMES)  # T-Developer lists its nine here; the miniature runs the declared ones
        self.agent_configs = {
            "nl_input": {"timeout": 30, "retry_count": 2},
            "ui_selection": {"timeout": 20, "retry_count": 2},
            "parser": {"timeout": 45, "retry_count": 1},
            "component_decision": {"timeout": 60, "retry_count": 1},
            "match_rate": {"timeout": 30, "retry_count": 2},
            "search": {"timeout": 90, "retry_count": 2},
            "generation": {"timeout": 300, "retry_count": 1},
            "assembly": {"timeout": 180, "retry_count": 1},
            "download": {"timeout": 60, "retry_count": 1},
        }

    async def initialize(self):
        if self.initialized:
            return
        self.agents = make_agents(self.config.get("script") or Script())
        self.state = self.config.get("state") or await AsyncStateClient.from_config()  # one client per process
        self.initialized = True

    async def execute(self, user_input, project_name=None, project_type=None, features=None, context=None,
                      ws_manager=None, run=None):  # fmt: skip
        start_time = time.time()
        errors = []
        agent_results = []
        if not self.initialized:
            await self.initialize()
        hash_input = json.dumps(user_input, sort_keys=True) if isinstance(user_input, dict) else str(user_input)
        project_id = f"prod_{datetime.now().strftime('%Y%m%d_%H%M%S')}_{hash(hash_input) % 10000:04d}"
        run = run or await PipelineRun.open(self.state, project_id, pipeline_type="PRODUCTION", variant=self.config.get("variant"))
        project_id = run.requested_id  # a resumed run keeps its id
        pipeline_data = {
            "user_input": user_input,
            "project_name": project_name or "my-app",
            "project_type": project_type or "react",
            "features": features or [],
            "project_id": project_id,
            "context": context or {},
            "timestamp": datetime.now().isoformat(),
        }
        pipeline_data.update(run.resumed_input or {})  # a resume goes on from the data it stopped with
        try:
            for i, agent_name in enumerate(self.agent_pipeline, 1):
                stage_start = time.time()
                if ws_manager and project_id:
                    await ws_manager.send_progress(project_id=project_id, agent_id=i, progress=0, status="processing")
                    await ws_manager.send_log(project_id=project_id, message=f"{agent_name.upper()} started", level="info")
                result = await self._execute_agent_with_retry(agent_name, pipeline_data, {"stage": i, "total": 9}, run)
                agent_results.append(result)
                stage_time = time.time() - stage_start
                if result.success:
                    pipeline_data[f"{agent_name}_result"] = result.output_data
                    if result.output_data and isinstance(result.output_data, dict):
                        for key in PROMOTED.get(agent_name, []):
                            if key in result.output_data:
                                pipeline_data["generated_files" if key == "files" else key] = result.output_data[key]
                    if ws_manager and project_id:
                        await ws_manager.send_progress(project_id=project_id, agent_id=i, progress=100, status="completed")
                        await ws_manager.send_log(project_id=project_id, message=f"{agent_name.upper()} done ({stage_time:.2f}s)", level="success")
                else:
                    errors.append(f"{agent_name}: {result.error}")
                    logger.warning(f"{agent_name} failed: {result.error}")
                    if ws_manager and project_id:
                        await ws_manager.send_progress(project_id=project_id, agent_id=i, progress=0, status="error")
                        await ws_manager.send_log(project_id=project_id, message=f"{agent_name.upper()} failed: {result.error}", level="error")
                critical_agents = CRITICAL_AGENTS  # T-Developer lists generation and assembly here
                if not result.success and agent_name in critical_agents:
                    logger.error(f"Critical agent {agent_name} failed, stopping pipeline")
                    break
            execution_time = time.time() - start_time
            successful_agents = sum(1 for r in agent_results if r.success)
            success = successful_agents >= 7 and len(errors) < 3
            await run.finish(success=success, errors=errors)  # the orchestrator's verdict is the stored one
            return ProductionPipelineResult(
                success=success,
                project_id=project_id,
                project_path=f"/tmp/{project_id}" if any(r.agent_name == "generation" and r.success for r in agent_results) else None,
                metadata={"pipeline_data": pipeline_data, "timestamp": datetime.now().isoformat()},
                errors=errors,
                execution_time=execution_time,
            )
        except Exception as e:
            logger.error(f"Production pipeline failed: {e}")
            await run.finish(success=False, errors=[str(e)])
            return ProductionPipelineResult(False, project_id, None, {"error": str(e)}, [str(e)], time.time() - start_time)

    async def _execute_agent_with_retry(self, agent_name, data, context, run):
        config = self.agent_configs.get(agent_name, {})
        retry_count = config.get("retry_count", 1)
        timeout = config.get("timeout", 30)
        agent = self.agents.get(agent_name)
        if not agent:
            return AgentExecutionResult(agent_name, False, 0, None, "Neither real agent nor proxy found")
        if agent_name in run.earlier:  # finished before a resume: its outcome again, never a rerun
            return AgentExecutionResult(agent_name, *run.earlier[agent_name])
        for attempt in range(retry_count + 1):
            try:
                async with run.agent(agent_name, input_data=data) as step:
                    result = await asyncio.wait_for(agent(data, context), timeout=timeout)
                    step.complete(result.output_data, success=result.success, error=result.error)
                if result.success:
                    return result
                logger.warning(f"Agent {agent_name} attempt {attempt + 1} failed: {result.error}")
                if attempt == retry_count:
                    return result
            except asyncio.TimeoutError:
                error_msg = f"Agent {agent_name} timed out after {timeout}s"
                logger.error(error_msg)
                if attempt == retry_count:
                    return AgentExecutionResult(agent_name, False, timeout, None, error_msg)
            except Exception as e:
                error_msg = f"Agent {agent_name} execution error: {e!s}"
                logger.error(error_msg)
                if attempt == retry_count:
                    return AgentExecutionResult(agent_name, False, 0, None, error_msg)
        return AgentExecutionResult(agent_name, False, 0, None, "All retry attempts failed")


production_pipeline = ProductionECSPipeline()
# main_api.py: app.mount("/api/v1/pipeline/resume", resume_route) — the recovery worker's resumer URL.
resume_route = resume_app(lambda: production_pipeline.state, lambda run, req: production_pipeline.execute(None, run=run))


# main_api.py, abridged: POST /api/v1/generate runs the pipeline inside the request handler.
async def generate(request: dict[str, Any], ws_manager: Any = None) -> dict[str, Any]:
    project_id = f"project_{uuid.uuid4().hex[:8]}"
    result = await production_pipeline.execute(
        user_input=request["description"],
        project_name=request["name"],
        project_type=request["framework"],
        features=request.get("features"),
        context={"project_id": project_id, "user_id": request.get("userId", "user-1")},
        ws_manager=ws_manager,
    )
    return {"success": result.success, "project_id": project_id, "errors": result.errors}
