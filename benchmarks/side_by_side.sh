# Sourced by benchmarks/*_side_by_side.sh, not run: what they share. The caller sets $usage,
# then calls `side_by_side_start NAME DEFAULT_ROUNDS "$@"`, which
# - prints $usage for -h, --help (exit 0) or no arguments (exit 1);
# - checks BASE (a commit of this repository) and ROUNDS (a whole number; default given), each
#   refused in one line with exit 2; under MNIST_CNN_DRY_RUN=1 stops there, exit 0;
# - sets base, rounds, here (this checkout), python ($PYTHON, else .venv's) and old (BASE
#   checked out in a temporary git worktree, removed when the script exits);
# - sets consumed to how many of the arguments it read (1 or 2), for the caller to shift.
side_by_side_start() {
  local name=$1 default_rounds=$2
  shift 2
  case "${1:-}" in -h|--help|"") echo "$usage"; [ -n "${1:-}" ]; exit ;; esac
  base=$1
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  git -C "$here" rev-parse --verify --quiet "$base^{commit}" >/dev/null \
    || { echo "$name: $base is not a commit of this repository" >&2; exit 2; }
  rounds=${2:-$default_rounds}
  [[ $rounds =~ ^[1-9][0-9]*$ ]] \
    || { echo "$name: ROUNDS must be a whole number of rounds, got '$rounds'" >&2; exit 2; }
  if [ -n "${MNIST_CNN_DRY_RUN:-}" ]; then echo "would compare $base with the working tree"; exit 0; fi
  consumed=$(( $# >= 2 ? 2 : 1 ))
  python=${PYTHON:-$here/.venv/bin/python}
  old=$(mktemp -d)
  # shellcheck disable=SC2064  # the paths are fixed now
  trap "git -C '$here' worktree remove --force '$old' >/dev/null 2>&1 || true" EXIT
  git -C "$here" worktree add --detach --force "$old" "$base" >/dev/null 2>&1 \
    || { echo "$name: could not check out $base in a worktree at $old" >&2; exit 1; }
}
