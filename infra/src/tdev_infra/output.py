"""`make output ENV=dev`: the clients' environment, as an env file, from the deployed stack's outputs.

    python -m tdev_infra.output dev [--outputs-json FILE] [--out infra/dev.env]

Why: the payload bucket's name carries the account id, the key is an ARN, and the items' retention must
equal the bucket's (items never outlive their payloads: TDEV_RETENTION_DAYS = the stack's retention_days).
Copying them by hand is how a client ends up writing to the wrong bucket or keeping items longer than their
payloads. The outputs come from `terraform output -json` in the synthesized stack's directory (after a
deploy), or from a file holding that JSON. Load the file with `set -a; . infra/dev.env; set +a`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tdev_infra.paths import repository_root

#: Client variable <- stack output (the state client's StateConfig.from_env reads these).
CLIENT_VARIABLES = {
    "TDEV_ENV": "environment",
    "AWS_REGION": "region",
    "TDEV_PAYLOAD_BUCKET": "payload_bucket",
    "TDEV_KMS_KEY_ID": "state_key_arn",
    "TDEV_RETENTION_DAYS": "retention_days",
}


class OutputError(Exception):
    """The outputs cannot be read or lack what the clients need."""


def render(outputs: Mapping[str, Any]) -> str:
    """The env file for `terraform output -json`'s mapping ({name: {"value": …}} or {name: value})."""

    def value(name: str) -> str:
        if name not in outputs:
            raise OutputError(f"the stack has no output {name!r}: deploy the current infra (make deploy)")
        raw = outputs[name]
        got = raw.get("value") if isinstance(raw, Mapping) else raw
        if got is None or str(got) == "":
            raise OutputError(f"the stack's output {name!r} is empty: has the stack been deployed?")
        return str(got)

    lines = ["# Written by `make output` from the stack's outputs; load with: set -a; . FILE; set +a"]
    env = value("environment")
    for variable, output in CLIENT_VARIABLES.items():
        lines.append(f"{variable}={value(output)}")
    if env == "local":
        lines.append("TDEV_TARGET=local")
    return "\n".join(lines) + "\n"


def stack_directory(env: str, root: Path | None = None) -> Path:
    """Where `make synth` (cdktf) writes the stack and `make deploy` runs Terraform: the repository's
    `infra/cdktf.out/stacks/t-developer-ENV`."""
    return (root or repository_root()) / "infra" / "cdktf.out" / "stacks" / f"t-developer-{env}"


def terraform_outputs(env: str) -> dict[str, Any]:
    stack_dir = stack_directory(env)
    terraform = shutil.which("terraform")
    if terraform is None:
        raise OutputError("Terraform is not on PATH; or pass --outputs-json FILE (terraform output -json)")
    if not (stack_dir / "cdk.tf.json").exists():
        raise OutputError(f"{stack_dir} has no synthesized stack: run make synth and make deploy ENV={env}")
    if not (stack_dir / ".terraform").exists():
        # Synthesized, never deployed from this checkout: Terraform would ask for `terraform init`.
        raise OutputError(
            f"t-developer-{env} has not been deployed from this checkout ({stack_dir} has no .terraform): "
            f"run make deploy ENV={env} first, or pass --outputs-json FILE (terraform output -json)"
        )
    done = subprocess.run(  # noqa: S603 - terraform from PATH, fixed arguments
        [terraform, "output", "-json"],
        cwd=stack_dir,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        said = next((line.strip(" │╷╵") for line in done.stderr.splitlines() if "Error" in line), "")
        raise OutputError(f"terraform output failed in {stack_dir}: {said or done.stderr.strip()[:200]}")
    parsed: dict[str, Any] = json.loads(done.stdout or "{}")
    if not parsed:
        raise OutputError(
            f"the stack t-developer-{env} has no outputs: deploy it first (make deploy ENV={env})"
        )
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdev_infra.output", description=__doc__.split("\n")[0])
    parser.add_argument("env", choices=("local", "dev", "prod"))
    parser.add_argument("--outputs-json", type=Path, default=None, help="terraform output -json, saved")
    parser.add_argument("--out", type=Path, default=None, help="the env file (default: infra/ENV.env)")
    args = parser.parse_args(argv)
    try:
        out = args.out or repository_root() / "infra" / f"{args.env}.env"
        outputs = (
            json.loads(args.outputs_json.read_text()) if args.outputs_json else terraform_outputs(args.env)
        )
        text = render(outputs)
        out.write_text(text)
    except (OutputError, OSError, json.JSONDecodeError) as exc:
        print(f"make output: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}: load it with  set -a; . {out}; set +a", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
