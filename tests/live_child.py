"""A pipeline process for the live-events SIGKILL test (run with `python -m tests.live_child`): it opens a
run under `--ref`, completes its first three agents (a short pause between transitions, so a watcher sees
them arrive), starts the fourth, writes `--ready` and waits to be SIGKILLed — leaving the run ACTIVE with an
agent RUNNING, as a crashed orchestrator does."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tdev_state import AGENTS, StateClient, StateConfig

#: Transitions the run holds at the kill: opened, three agents started and completed, the fourth started.
SEQ_AT_KILL = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", required=True)
    parser.add_argument("--endpoint", default=None)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--ref", required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()
    config = StateConfig(env=args.env, endpoint_url=args.endpoint, region=args.region, payload_bucket=None)
    client = StateClient(config)
    sid = client.sessions.create(refs=[args.ref]).session_id
    for agent in AGENTS[:3]:
        time.sleep(0.1)
        client.executions.start(sid, agent, input_data={"agent": agent})
        time.sleep(0.1)
        client.executions.complete(sid, agent, output_data={"by": "original"})
    client.executions.start(sid, AGENTS[3], input_data={"agent": AGENTS[3]})
    args.ready.write_text(sid)
    time.sleep(600)  # the test SIGKILLs this process here


if __name__ == "__main__":
    main()
