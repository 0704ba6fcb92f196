#!/usr/bin/env bash
# `make cdktn-migrate`: move the infra from CDKTF (archived 2025-12-10) to CDK Terrain, its maintained fork.
#
# What changes, and nothing else (every CDKTF import lives in infra/src/tdev_infra/_cdktf.py):
#   packages  cdktf==0.21.0 -> cdktn==0.24.0; cdktf-cdktf-provider-aws==21.22.1 -> cdktn-provider-aws==25.8.1
#             (its provider pin: hashicorp/aws 6.69.1, was aws 6.25.0 — same major; run `make diff` first)
#   imports   `from cdktf import` -> `from cdktn import`; cdktf_cdktf_provider_aws -> cdktn_provider_aws
#   CLI       npx cdktf-cli@0.21.0 -> npx cdktn-cli@0.24.0 (binary `cdktn`), in infra/cdktf.sh
#   tests     `from cdktf import Testing` -> `from cdktn import Testing`
#   tags      ManagedBy=cdktf -> ManagedBy=cdktn (default tags on every resource)
# Measured in one run on this machine (docs/benchmarks.md): identical resources for the three stacks;
# synth 30.9 s with cdktf, 4.5 s with cdktn. Then: `uv lock`, `make test`, `make diff ENV=dev`.
set -euo pipefail
root=${1:-"$(cd "$(dirname "$0")/.." && pwd)"}
sed -i 's/^from cdktf import/from cdktn import/; s/cdktf_cdktf_provider_aws/cdktn_provider_aws/g' \
  "$root/infra/src/tdev_infra/_cdktf.py"
sed -i 's/"cdktf==0.21.0"/"cdktn==0.24.0"/; s/"cdktf-cdktf-provider-aws==21.22.1"/"cdktn-provider-aws==25.8.1"/' \
  "$root/infra/pyproject.toml"
sed -i 's/^CDKTF_CLI_VERSION=0.21.0/CDKTF_CLI_VERSION=0.24.0/; s/"cdktf-cli@\$CDKTF_CLI_VERSION"/"cdktn-cli@$CDKTF_CLI_VERSION"/' \
  "$root/infra/cdktf.sh"
sed -i 's/from cdktf import Testing/from cdktn import Testing/' "$root/tests/unit/infra/conftest.py"
sed -i 's/"ManagedBy": "cdktf"/"ManagedBy": "cdktn"/' "$root/infra/src/tdev_infra/stack.py"
echo "moved to CDK Terrain; now: uv lock && make test && make diff ENV=dev" >&2
