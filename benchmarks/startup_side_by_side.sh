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
# shellcheck source=benchmarks/side_by_side.sh
. "$(dirname "$0")/side_by_side.sh"
side_by_side_start startup_side_by_side 4 "$@"
out=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$old" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
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
