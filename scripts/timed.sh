#!/usr/bin/env bash
# Runs a command and prints how long it took, so CI logs show the time of each phase.
set -u
name="$1"; shift
start=$(date +%s%N)
echo "==> [$name] started $(date -u +%H:%M:%S)"
"$@"; rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '==> [%s] %s in %d.%01ds\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" $((ms / 1000)) $(((ms % 1000) / 100))
exit $rc
