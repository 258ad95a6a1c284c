#!/usr/bin/env bash
# The test suite's wall time at an earlier commit and at the working tree, side by side.
usage="usage: benchmarks/suite_side_by_side.sh BASE [ROUNDS] [pytest args...]

Runs the test suite at commit BASE (checked out in a temporary git worktree, run with this
checkout's .venv and PYTHONPATH pointing at its own src/) and at the working tree, alternating
(old, new, old, new, ...) ROUNDS times (default 3), so that a shared machine's drift touches both
alike; two pytest-xdist workers, as 'make test' runs them. pytest args default to the fast tier
(-m \"not slow\"; the whole suite: -m \"slow or not slow\"). Prints each run's wall seconds and the ratio of the means (new / old).
Reads MNIST from \$MNIST_CNN_DATA. MNIST_CNN_DRY_RUN=1 only checks that BASE is a commit."
set -euo pipefail
# Bytecode caches are written as `make test` lets them be: otherwise the side without them
# compiles every module in every process, every run.
unset PYTHONDONTWRITEBYTECODE
# shellcheck source=benchmarks/side_by_side.sh
. "$(dirname "$0")/side_by_side.sh"
side_by_side_start suite_side_by_side 3 "$@"
shift "$consumed"
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
xdist=(-n 2 --dist loadfile --no-loadscope-reorder -q -p no:cacheprovider)
# Untimed: collecting once writes both sides' bytecode caches, so no round pays for compiling.
for dir in "$old" "$here"; do
  (cd "$dir" && PYTHONPATH="$dir/src" "$python" -m pytest --collect-only -q >/dev/null 2>&1) || true
done
declare -A total=([old]=0 [new]=0)
log=$(mktemp)  # each run's pytest output: on a failure, which tests failed
for ((i = 1; i <= rounds; i++)); do
  for side in old new; do
    dir=$here; [ "$side" = old ] && dir=$old
    start=$(date +%s.%N)
    (cd "$dir" && PYTHONPATH="$dir/src" "$python" -m pytest "${xdist[@]}" "$@" >"$log" 2>&1) \
      || {
        echo "suite_side_by_side: the suite failed on the $side side (round $i):" >&2
        { grep -E '^(FAILED|ERROR)' "$log" | tail -n 8 || true; tail -n 1 "$log"; } >&2
        rm -f "$log"
        exit 1
      }
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    total[$side]=$(echo "${total[$side]} + $secs" | bc)
    printf '%s round %d: %.1f s\n' "$side" "$i" "$secs"
  done
done
rm -f "$log"
printf 'mean old %.1f s, new %.1f s, new/old %.2f\n' \
  "$(echo "${total[old]} / $rounds" | bc -l)" "$(echo "${total[new]} / $rounds" | bc -l)" \
  "$(echo "${total[new]} / ${total[old]}" | bc -l)"
