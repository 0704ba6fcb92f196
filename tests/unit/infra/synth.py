"""What the infra tests read from a synth: the stacks, the settings the synth is run with, and `Synth`, the
synthesized output (the session-wide `synth` fixture that makes it is in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STACKS = ("local", "dev", "prod")
STATE_BUCKET = "tdev-tfstate-test"
TASK_PRINCIPAL = "ecs-tasks.amazonaws.com"
DEV_ACCOUNT, PROD_ACCOUNT = "111111111111", "222222222222"
PROD_ROLE = f"arn:aws:iam::{PROD_ACCOUNT}:role/t-developer-deploy"


@dataclass(frozen=True)
class Synth:
    """The synthesized output: the stacks directory and each stack's JSON (text and parsed)."""

    root: Path

    def path(self, env: str) -> Path:
        return self.root / "stacks" / f"t-developer-{env}" / "cdk.tf.json"

    def text(self, env: str) -> str:
        return self.path(env).read_text()

    def json(self, env: str) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text(env))
        return parsed

    def resources(self, env: str, kind: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.json(env).get("resource", {}).get(kind, {})
        return found
