#!/usr/bin/env bash
# The fast preset's whole command at an earlier commit and now: wall time and test accuracy.
usage="usage: benchmarks/preset_side_by_side.sh BASE [ROUNDS [--seed-recipe STEPS]]

Runs 'mnist-cnn train --preset fast --seed S --device cpu' (the whole command: start-up, data
loading, training, the test evaluation, the run folder written) at commit BASE (a temporary git
worktree, run with this checkout's .venv and PYTHONPATH pointing at its src/) and at the
working tree, alternating (old, new, old, new, ...) ROUNDS times (default 3; round i trains
seed (i - 1) mod 3), after one untimed 1-step run of each side. Prints each run's wall seconds
and test accuracy, then the means and the ratio of the mean wall times (new / old). The
environment passes through, so 'benchmarks/as_avx2.sh benchmarks/preset_side_by_side.sh BASE'
compares the two as an AVX2-only CPU (fp32) would run them. Reads MNIST from \$MNIST_CNN_DATA (else
~/.cache/mnist-cnn). MNIST_CNN_DRY_RUN=1 only checks that BASE is a commit.

--seed-recipe STEPS: the seed recipe instead ('mnist-cnn train --seed S --steps STEPS', the
tutorial's network, batch 50, Adam 1e-4), e.g. to compare its steady speed on a part of the
10,000 steps."
set -euo pipefail
# shellcheck source=benchmarks/side_by_side.sh
. "$(dirname "$0")/side_by_side.sh"
side_by_side_start preset_side_by_side 3 "$@"
shift "$consumed"
recipe=(--preset fast)
if [ "${1:-}" = --seed-recipe ]; then
  [[ ${2:-} =~ ^[1-9][0-9]*$ ]] \
    || { echo "preset_side_by_side: --seed-recipe needs a whole number of steps, got '${2:-}'" >&2; exit 2; }
  recipe=(--steps "$2")
  shift 2
fi
[ $# -eq 0 ] || { echo "preset_side_by_side: unexpected argument '$1' (see --help)" >&2; exit 2; }
out=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$old" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
declare -A total=([old]=0 [new]=0) acc=([old]=0 [new]=0)
for ((i = 0; i <= rounds; i++)); do  # round 0 is untimed: it writes both sides' bytecode
  for side in old new; do
    dir=$here; [ "$side" = old ] && dir=$old
    rm -rf "$out/run"
    steps=(); [ "$i" -eq 0 ] && steps=(--steps 1)
    seed=$(( (i + 2) % 3 ))
    start=$(date +%s.%N)
    PYTHONPATH="$dir/src" "$python" -m mnist_cnn train "${recipe[@]}" --seed "$seed" \
      --device cpu --out "$out/run" "${steps[@]}" >/dev/null 2>"$out/err" \
      || { echo "preset_side_by_side: training failed on the $side side: $(tail -1 "$out/err")" >&2; exit 1; }
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    [ "$i" -eq 0 ] && continue
    test=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["test"]["accuracy"])' \
      "$out/run/results.json")
    total[$side]=$(echo "${total[$side]} + $secs" | bc)
    acc[$side]=$(echo "${acc[$side]} + $test" | bc -l)
    printf '%s round %d (seed %d): %.2f s wall, test %.4f\n' "$side" "$i" "$seed" "$secs" "$test"
  done
done
printf 'mean old %.2f s (test %.4f), new %.2f s (test %.4f), new/old %.2f\n' \
  "$(echo "${total[old]} / $rounds" | bc -l)" "$(echo "${acc[old]} / $rounds" | bc -l)" \
  "$(echo "${total[new]} / $rounds" | bc -l)" "$(echo "${acc[new]} / $rounds" | bc -l)" \
  "$(echo "${total[new]} / ${total[old]}" | bc -l)"
