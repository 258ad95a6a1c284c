#!/usr/bin/env bash
# How long a training command takes to reach its first step, at an earlier commit and now.
usage="usage: benchmarks/startup_side_by_side.sh BASE [ROUNDS]

Times 'mnist-cnn train --preset fast --steps 1 --device cpu' (start-up, data loading, one
step, the small network's evaluation, the run folder written) at commit BASE (a temporary git
worktree, run with this checkout's .venv and PYTHONPATH pointing at its src/) and at the
working tree, alternating (old, new, old, new, ...) ROUNDS times (default 4). Prints each
run's wall and user CPU seconds and the ratio of the mean wall times (new / old). Reads MNIST
from \$MNIST_CNN_DATA (else ~/.cache/mnist-cnn). MNIST_CNN_DRY_RUN=1 only checks that BASE is
a commit."
set -euo pipefail
case "${1:-}" in -h|--help|"") echo "$usage"; [ -n "${1:-}" ]; exit ;; esac
base=$1
here=$(cd "$(dirname "$0")/.." && pwd)
git -C "$here" rev-parse --verify --quiet "$base^{commit}" >/dev/null \
  || { echo "startup_side_by_side: $base is not a commit of this repository" >&2; exit 2; }
rounds=${2:-4}
[[ $rounds =~ ^[1-9][0-9]*$ ]] \
  || { echo "startup_side_by_side: ROUNDS must be a whole number of rounds, got '$rounds'" >&2; exit 2; }
if [ -n "${MNIST_CNN_DRY_RUN:-}" ]; then echo "would compare $base with the working tree"; exit 0; fi
python=${PYTHON:-$here/.venv/bin/python}
old=$(mktemp -d)
out=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$old" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
git -C "$here" worktree add --detach --force "$old" "$base" >/dev/null 2>&1 \
  || { echo "startup_side_by_side: could not check out $base in a worktree at $old" >&2; exit 1; }
declare -A total=([old]=0 [new]=0)
for ((i = 0; i <= rounds; i++)); do  # round 0 is untimed: it writes both sides' bytecode
  for side in old new; do
    dir=$here; [ "$side" = old ] && dir=$old
    rm -rf "$out/run"
    start=$(date +%s.%N)
    user=$( { TIMEFORMAT=%U; time PYTHONPATH="$dir/src" "$python" -m mnist_cnn train \
      --preset fast --steps 1 --device cpu --out "$out/run" >/dev/null 2>"$out/err"; } 2>&1 ) \
      || { echo "startup_side_by_side: training failed on the $side side: $(tail -1 "$out/err")" >&2; exit 1; }
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    [ "$i" -eq 0 ] && continue
    total[$side]=$(echo "${total[$side]} + $secs" | bc)
    printf '%s round %d: %.2f s wall, %s s user\n' "$side" "$i" "$secs" "$user"
  done
done
printf 'mean old %.2f s, new %.2f s, new/old %.2f\n' \
  "$(echo "${total[old]} / $rounds" | bc -l)" "$(echo "${total[new]} / $rounds" | bc -l)" \
  "$(echo "${total[new]} / ${total[old]}" | bc -l)"
