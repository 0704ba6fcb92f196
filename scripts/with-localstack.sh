#!/usr/bin/env bash
# Runs a command with a LocalStack endpoint available, and stops LocalStack afterwards if (and only if) this
# script started it — also when the command fails or is interrupted.
#
# TDEV_KEEP_LOCALSTACK=1 leaves a LocalStack this script started running afterwards (make demo, so that
# make console can show the demo's runs).
#
# AWS_ENDPOINT_URL pointing at another endpoint than this machine's LocalStack (localstack.sh endpoint):
# the command runs against it; nothing is installed or started.
#
# Against a real AWS account: set TDEV_TARGET=aws (and credentials/region as usual); nothing is started and
# AWS_ENDPOINT_URL is unset so boto3 talks to AWS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${TDEV_TARGET:-localstack}" = "aws" ]; then
  unset AWS_ENDPOINT_URL
  exec "$@"
fi
ours="$(bash "$here/localstack/localstack.sh" endpoint)"
given="${AWS_ENDPOINT_URL:-}"
given="${given%/}"
if [ -n "$given" ] && [ "${given/\/\/localhost:/\/\/127.0.0.1:}" != "$ours" ]; then
  # Another endpoint (a LocalStack elsewhere, DynamoDB Local, a shared test stack): use it as it is, and
  # neither install nor start ours (installing alone takes a minute and half a gigabyte).
  echo "using AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL (LocalStack not started)" >&2
  exec "$@"
fi
export AWS_ENDPOINT_URL="$ours"
started=0
if ! bash "$here/localstack/localstack.sh" status >/dev/null 2>&1; then
  bash "$here/localstack/localstack.sh" up >/dev/null
  started=1
fi
stop() {
  [ "$started" = 1 ] || return 0
  if [ "${TDEV_KEEP_LOCALSTACK:-}" = 1 ]; then  # make demo: its data stays browsable (make console)
    echo "LocalStack left running with this data at $AWS_ENDPOINT_URL; \`make localstack-down\` stops it"
    return 0
  fi
  bash "$here/localstack/localstack.sh" down || true
}
trap stop EXIT INT TERM
"$@"
