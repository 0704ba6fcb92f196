#!/usr/bin/env bash
# `make synth | diff | deploy | destroy ENV=local|dev|prod`: the real cdktf CLI, pinned, through npx.
#
# synth needs only Python and Node. diff/deploy/destroy also need Terraform >= 1.10 on PATH (the S3
# backend's native locking, `use_lockfile`, arrived in 1.10); without it they stop here and say so.
# ENV=local targets LocalStack (started if it is not running). Destroying prod must be asked twice:
# `make destroy ENV=prod CONFIRM_PROD=t-developer-prod` — and prod tables keep deletion protection on.
# `make deploy ENV=dev AUTO_APPROVE=1` deploys without the prompt (CI); prod also needs CONFIRM_PROD.
set -euo pipefail

cmd=${1:?usage: cdktf.sh synth|diff|deploy|destroy}
env=${ENV:-local}
here=$(cd "$(dirname "$0")" && pwd)
CDKTF_CLI_VERSION=0.21.0
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1 CHECKPOINT_DISABLE=1

case "$env" in
  local | dev | prod) ;;
  *) echo "ENV=$env is not a stack: use ENV=local, ENV=dev or ENV=prod" >&2; exit 2 ;;
esac
stack="t-developer-$env"

# dev and prod: the account guard and the state bucket are checked before any Terraform call (and the
# bucket is created once by `make bootstrap ENV=...`): tdev_infra.preflight says what to fix, exit 2.
python=${TDEV_PYTHON:-"$here/../.venv/bin/python"}
if [ "$cmd" != synth ] && [ "$env" != local ]; then
  "$python" -m tdev_infra.preflight "$env"
fi

# A missing prerequisite is one line naming it, exit 2 (as the preflight's), before anything runs.
if ! command -v npx >/dev/null; then
  echo "make $cmd: npx (Node.js >= 20) is not on PATH; install Node.js, then run again" >&2
  exit 2
fi
cdktf=(npx --yes "cdktf-cli@$CDKTF_CLI_VERSION")

if [ "$cmd" = destroy ] && [ "$env" = prod ] && [ "${CONFIRM_PROD:-}" != "$stack" ]; then
  echo "make destroy ENV=prod: refused. Ask twice: make destroy ENV=prod CONFIRM_PROD=$stack" >&2
  echo "  (the prod tables have deletion protection on; Terraform will still fail on them until it is off)" >&2
  exit 2
fi

if [ "$cmd" != synth ]; then
  if ! command -v terraform >/dev/null; then
    echo "make $cmd: Terraform is not on PATH: install Terraform >= 1.10 and run again (make synth works without it)" >&2
    exit 2
  fi
  version=$(terraform version -json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["terraform_version"])' || echo 0.0.0)
  if ! python3 -c "import sys; v=tuple(int(x) for x in '$version'.split('.')[:2]); sys.exit(0 if v >= (1, 10) else 1)"; then
    echo "make $cmd: Terraform $version is too old; the S3 backend's use_lockfile needs >= 1.10" >&2
    exit 2
  fi
fi

if [ "$env" = local ] && [ "$cmd" != synth ]; then
  bash "$here/../localstack/localstack.sh" up
  TDEV_LOCALSTACK_ENDPOINT=$(bash "$here/../localstack/localstack.sh" endpoint)
  export TDEV_LOCALSTACK_ENDPOINT
fi

cd "$here"
case "$cmd" in
  synth) exec "${cdktf[@]}" synth ;;
  diff) exec "${cdktf[@]}" diff "$stack" ;;
  deploy)
    # local always, dev with AUTO_APPROVE=1 (CI); prod only with AUTO_APPROVE=1 *and* CONFIRM_PROD=stack.
    if [ "$env" = local ] || { [ "$env" = dev ] && [ "${AUTO_APPROVE:-}" = 1 ]; } ||
      { [ "$env" = prod ] && [ "${AUTO_APPROVE:-}" = 1 ] && [ "${CONFIRM_PROD:-}" = "$stack" ]; }; then
      exec "${cdktf[@]}" deploy "$stack" --auto-approve
    fi
    exec "${cdktf[@]}" deploy "$stack"
    ;;
  destroy) exec "${cdktf[@]}" destroy "$stack" ;;
  *) echo "unknown command $cmd: use synth, diff, deploy or destroy" >&2; exit 2 ;;
esac
