"""One process's figure for the 1 MB profile: seconds (and client CPU) per 9-agent run.

Runs inside ANY checkout of this repository, old or new (it uses only the public `StateClient` calls that
every version has, and the payload generators wherever that version keeps them), so `compare.sh` can run it
alternately in two checkouts and compare them as ratios measured in the same session. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.getcwd())  # the checkout under test, whatever its layout

import boto3

try:
    from tdev_state.testing import agent_payload, generated_project
except ImportError:  # versions before the test doubles were public kept them in tests/
    from tests.payloads import agent_payload, generated_project  # type: ignore[no-redef,import-not-found]
from tdev_state import AGENTS, StateClient, StateConfig


def main(runs: int) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    env = f"v{uuid.uuid4().hex[:8]}"
    bucket = f"tdev-{env}-payloads"
    config = StateConfig(env=env, endpoint_url=endpoint, payload_bucket=bucket)
    boto3.client("s3", endpoint_url=endpoint, region_name=config.region).create_bucket(Bucket=bucket)
    client = StateClient(config)
    client.create_tables()
    # The profile: 1 KB inputs, 3 KB outputs, 1 MB of generated code from `generation`.
    payloads = {
        agent: (
            agent_payload(1, seed=100 + i),
            generated_project(1_000_000, seed=i) if agent == "generation" else agent_payload(3, seed=i),
        )
        for i, agent in enumerate(AGENTS)
    }
    wall: list[float] = []
    cpu: list[float] = []
    try:
        for run in range(runs + 1):  # the first run warms connections and imports up; not counted
            started, started_cpu = time.perf_counter(), time.process_time()
            session_id = client.sessions.create(user_id="bench", project_name="bench").session_id
            for agent in AGENTS:
                input_data, output_data = payloads[agent]
                client.executions.start(session_id, agent, input_data=input_data, project_id="bench-project")
                client.executions.complete(session_id, agent, output_data=output_data)
            if run:
                wall.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
    finally:
        client.close()
    print(json.dumps({"run_s_median": statistics.median(wall), "cpu_s_median": statistics.median(cpu)}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
