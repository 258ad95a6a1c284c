#!/usr/bin/env bash
# The fast preset's target: mean test accuracy of 3 seeds, and each WHOLE command's wall time
# (start-up, data loading, training, evaluation).
usage="usage: benchmarks/fast_preset.sh [seeds...]   (default seeds: 0 1 2)

Trains 'mnist-cnn train --preset fast --device cpu' once per seed and prints each whole
command's wall time and the mean test accuracy. Reads MNIST from \$MNIST_CNN_DATA (else
~/.cache/mnist-cnn). Python: \$PYTHON, else the project's .venv/bin/python (made by 'make'),
else python3. MNIST_CNN_DRY_RUN=1 checks each seed's command with mnist-cnn's own parser and
prints it, without training (what the docs test runs)."
set -euo pipefail
case "${1:-}" in -h|--help) echo "$usage"; exit 0 ;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then PY=$root/.venv/bin/python
else PY=python3
fi
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
train_args() { echo train --preset fast --seed "$1" --device cpu --out "$OUT/fast-$1"; }
if [ -n "${MNIST_CNN_DRY_RUN:-}" ]; then
  lines=()
  for seed in "${seeds[@]}"; do lines+=("$(train_args "$seed")"); done
  "$PY" - "$PY" "${lines[@]}" <<'PY'
import shlex, sys
from mnist_cnn.cli import build_parser
for line in sys.argv[2:]:
    build_parser().parse_args(shlex.split(line))
    print(f"would run: {sys.argv[1]} -m mnist_cnn {line}")
PY
  exit 0
fi
for seed in "${seeds[@]}"; do
  start=$(date +%s.%N)
  # shellcheck disable=SC2046  # the command's words, split on purpose
  "$PY" -m mnist_cnn $(train_args "$seed") | tail -2 | sed -n 1p
  end=$(date +%s.%N)
  echo "seed $seed: whole command $("$PY" -c "print(f'{$end - $start:.1f}')") s"
done
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
accs = [json.loads(p.read_text())["test"]["accuracy"]
        for p in sorted(pathlib.Path(sys.argv[1]).glob("fast-*/results.json"))]
print(f"mean test accuracy over {len(accs)} seeds: {sum(accs) / len(accs):.4f}")
PY
