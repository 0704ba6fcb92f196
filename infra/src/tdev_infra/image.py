"""`make image ENV=dev`: build the recovery worker's image from its Dockerfile and push it to the stack's
ECR repository, with Docker or a compatible builder (Podman).

    python -m tdev_infra.image dev [--tag TAG]

The tag defaults to the commit (`git rev-parse --short HEAD`); `latest` moves too. Deploy that tag with
`TDEV_WORKER_IMAGE_TAG=<tag> make deploy ENV=dev`. Without a builder on PATH it stops with exit 2 and says so.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys
from collections.abc import Sequence

from botocore.exceptions import NoCredentialsError

from tdev_infra.paths import repository_root
from tdev_infra.preflight import PreflightError, session_for, verify_account
from tdev_infra.settings import from_environment

BUILDERS = ("docker", "podman")


def builder() -> str:
    """The first container builder on PATH whose engine answers (`docker info`: a Docker CLI without a
    running engine would only fail later, at the login, with a less useful message)."""
    for name in BUILDERS:
        found = shutil.which(name)
        if found:
            answers = subprocess.run(  # noqa: S603 - the builder from PATH, fixed arguments
                [found, "info"], capture_output=True, check=False, timeout=60
            )
            if answers.returncode != 0:
                raise PreflightError(
                    f"needs a running container engine: `{name} info` fails here (start "
                    f"{name}'s engine, or install Docker or Podman where one runs)"
                )
            return found
    raise PreflightError(
        "make image needs a container builder: install Docker or Podman (none is on PATH); "
        "the image is packages/recovery-worker/Dockerfile, built from the repository root"
    )


def _run(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(args, input=stdin, text=True, check=False)  # noqa: S603 - our fixed commands
    if done.returncode != 0:
        raise PreflightError(f"`{' '.join(args[:3])} …` failed with exit {done.returncode}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdev_infra.image", description=__doc__.split("\n")[0])
    parser.add_argument("env", choices=("dev", "prod"))
    parser.add_argument("--tag", default=None, help="image tag (default: the commit's short hash)")
    args = parser.parse_args(argv)
    try:
        root = repository_root()
        tool = builder()  # before any AWS call: nothing to log in to without a builder
        settings = next(s for s in from_environment()[0] if s.env == args.env)
        session = session_for(settings)
        verify_account(settings, session)
        git = shutil.which("git")
        tag = args.tag or (
            subprocess.run(  # noqa: S603 - git from PATH, fixed arguments
                [git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
            ).stdout.strip()
            if git
            else "latest"
        )
        registry = f"{settings.account_id}.dkr.ecr.{settings.region}.amazonaws.com"
        repository = f"{registry}/{settings.stack_name}-recovery-worker"
        token = session.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
        password = base64.b64decode(token).decode().split(":", 1)[1]
        _run(tool, "login", "--username", "AWS", "--password-stdin", registry, stdin=password)
        dockerfile = str(root / "packages" / "recovery-worker" / "Dockerfile")
        _run(
            tool,
            "build",
            "-f",
            dockerfile,
            "-t",
            f"{repository}:{tag}",
            "-t",
            f"{repository}:latest",
            str(root),
        )
        for pushed in (tag, "latest"):
            _run(tool, "push", f"{repository}:{pushed}")
    except PreflightError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print("make image: no AWS credentials (set AWS_PROFILE or log in)", file=sys.stderr)
        return 2
    except Exception as exc:  # AWS refusals, git missing: one line, exit 2
        print(f"make image: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"pushed {repository}:{tag}; deploy it with TDEV_WORKER_IMAGE_TAG={tag} make deploy ENV={args.env}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
