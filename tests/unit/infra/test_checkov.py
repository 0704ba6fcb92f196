"""checkov on every synthesized stack: zero failed checks, except skips written in the stack code with a
reason — and every written skip is still needed.

checkov runs in its own environment (`uv tool run`): it pins an old boto3 that must not leak into ours.
Its JSON runner ignores inline skips, so the stack writes them under the resource's "//" key and this test
holds each failure against them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from .synth import STACKS, Synth

CHECKOV = "checkov==3.3.30"


def _run_checkov(synth: Synth) -> dict[str, list[dict[str, Any]]]:
    uv = shutil.which("uv")
    assert uv, "uv is needed to run checkov in its own environment (make setup installs it)"
    proc = subprocess.run(
        [
            uv,
            "tool",
            "run",
            "--from",
            CHECKOV,
            "checkov",
            "-d",
            str(synth.root / "stacks"),
            "--framework",
            "terraform_json",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100  # it really scanned three stacks
    failed: dict[str, list[dict[str, Any]]] = {env: [] for env in STACKS}
    for check in report["results"].get("failed_checks", []):
        env = check["file_path"].split("/t-developer-")[1].split("/")[0]
        failed[env].append(check)
    return failed


def _declared_skips(synth: Synth, env: str) -> dict[tuple[str, str], str]:
    skips = {}
    for resources in synth.json(env)["resource"].values():
        for name, body in resources.items():
            for entry in body.get("//", {}).get("checkov_skip", []):
                check, _, reason = entry.partition(": ")
                skips[(name, check)] = reason
    return skips


def test_no_failed_checks_beyond_written_skips(synth: Synth) -> None:
    failed = _run_checkov(synth)
    for env in STACKS:
        skips = _declared_skips(synth, env)
        assert all(len(reason) > 20 for reason in skips.values()), skips
        hits = {(c["resource"].split(".")[-1], c["check_id"]) for c in failed[env]}
        unexplained = hits - set(skips)
        assert not unexplained, f"{env}: checkov fails {sorted(unexplained)} with no written reason"
        stale = set(skips) - hits
        assert not stale, f"{env}: skips for checks that pass now, remove them: {sorted(stale)}"
    # The checks the plan names pass where they apply (prod: CMK, rotation, autoscaling, PITR).
    assert not [
        c
        for c in failed["prod"]
        if c["check_id"] in {"CKV_AWS_28", "CKV_AWS_119", "CKV2_AWS_16", "CKV_AWS_7", "CKV_AWS_33"}
    ]
