#!/usr/bin/env bash
# The fast preset's target: mean test accuracy of 3 seeds, and each WHOLE command's wall time
# (start-up, data loading, training, evaluation). Usage: benchmarks/fast_preset.sh [seeds...]
# Needs MNIST in $MNIST_CNN_DATA (or the default data root) and `mnist-cnn` importable.
set -euo pipefail
PY=${PYTHON:-python}
OUT=$(mktemp -d)
seeds=("${@:-0 1 2}")
for seed in ${seeds[@]}; do
  start=$(date +%s.%N)
  $PY -m mnist_cnn train --preset fast --seed "$seed" --device cpu --out "$OUT/fast-$seed" \
    | tail -2 | head -1
  end=$(date +%s.%N)
  echo "seed $seed: whole command $(echo "$end - $start" | bc) s"
done
$PY - "$OUT" <<'PY'
import json, sys, pathlib
accs = [json.loads(p.read_text())["test"]["accuracy"]
        for p in sorted(pathlib.Path(sys.argv[1]).glob("fast-*/results.json"))]
print(f"mean test accuracy over {len(accs)} seeds: {sum(accs) / len(accs):.4f}")
PY
