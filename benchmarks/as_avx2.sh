#!/usr/bin/env bash
# Run a command as an AVX2-only CPU would run it, on a CPU that has more (AVX-512, bf16, AMX).
usage="usage: benchmarks/as_avx2.sh COMMAND [ARGS...]

Holds all three of torch's CPU kernel libraries at AVX2, then runs COMMAND:
  ATEN_CPU_CAPABILITY=avx2     torch's own kernels (element-wise, pooling, Adam, ...)
  ONEDNN_MAX_CPU_ISA=AVX2      oneDNN (convolutions, bf16 matrix products; no native bf16 then)
  MKL_ENABLE_INSTRUCTIONS=AVX2 MKL (fp32 matrix products: linear layers, bench's matmul rate)
Holding only the first two leaves fp32 matrix products on AVX-512, which makes both the
linear layers and the matrix-multiply rate that 'mnist-cnn bench' compares against faster
than an AVX2 CPU's. The results are what an AVX2 CPU computes, at this machine's clock and
memory speed. Examples:
  benchmarks/as_avx2.sh make test
  benchmarks/as_avx2.sh .venv/bin/mnist-cnn bench
  benchmarks/as_avx2.sh benchmarks/preset_side_by_side.sh BASE 3"
set -euo pipefail
if [ $# -eq 0 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  echo "$usage"
  [ $# -eq 0 ] && exit 2
  exit 0
fi
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
if ! command -v "$1" >/dev/null; then
  echo "as_avx2: no such command: $1" >&2
  exit 2
fi
if [ -n "${MNIST_CNN_DRY_RUN:-}" ]; then  # the docs test: the command exists; nothing is run
  echo "would run as an AVX2-only CPU: $*"
  exit 0
fi
exec "$@"
