#!/usr/bin/env bash
# The 1 MB run of an earlier commit against this checkout, alternated in one session, as ratios.
#
#   bash benchmarks/versus/compare.sh OLD_COMMIT [ROUNDS] [RUNS_PER_ROUND]
#
# Needs AWS_ENDPOINT_URL (a LocalStack: `make localstack-up` or scripts/with-localstack.sh). The old commit
# is checked out once under .cache/versus/<commit> with its own locked environment (about a minute the
# first time). Each round runs the old checkout, then this one, RUNS_PER_ROUND runs each after a warm-up;
# alternating spreads the machine's drift over both sides. Prints every round and the median ratio.
set -euo pipefail
old=${1:?usage: compare.sh OLD_COMMIT [ROUNDS] [RUNS_PER_ROUND]}
rounds=${2:-8}
runs=${3:-5}
: "${AWS_ENDPOINT_URL:?set AWS_ENDPOINT_URL to a LocalStack endpoint}"
here=$(git rev-parse --show-toplevel)
commit=$(git -C "$here" rev-parse --verify --quiet "$old^{commit}") || {
  echo "compare.sh: $old is not a commit of this repository" >&2
  exit 2
}
tree="$here/.cache/versus/${commit:0:12}"
if [ ! -d "$tree" ]; then
  git -C "$here" worktree add --detach --quiet "$tree" "$commit"
fi
(cd "$tree" && uv sync --frozen --all-packages --quiet)
probe="$here/benchmarks/versus/one_mb_run.py"
ratios=()
printf '%-6s %12s %12s %8s %10s %10s\n' round old_s new_s ratio old_cpu_ms new_cpu_ms
for i in $(seq "$rounds"); do
  o=$(cd "$tree" && .venv/bin/python "$probe" "$runs")
  n=$(cd "$here" && .venv/bin/python "$probe" "$runs")
  line=$(python3 "$here/benchmarks/versus/ratio.py" "$o" "$n")
  read -r os ns ratio oc nc <<<"$line"
  ratios+=("$ratio")
  printf '%-6s %12s %12s %8s %10s %10s\n' "$i" "$os" "$ns" "$ratio" "$oc" "$nc"
done
python3 "$here/benchmarks/versus/ratio.py" --summary "${ratios[@]}"
