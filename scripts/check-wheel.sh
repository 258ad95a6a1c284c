#!/usr/bin/env bash
# The package as people install it: build the sdist and wheel, install the wheel into a fresh
# virtual environment (with the local CPU torch), and run it from outside the source tree:
# --help, a 20-step train on the real data (which writes the model card), export --web, and
# serve's page, whose files must come from the installed package, not from src/.
# Usage: scripts/check-wheel.sh   (MNIST from $MNIST_CNN_DATA; TORCH= overrides torch==2.13.0)
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "check-wheel.sh: takes no arguments (see --help)" >&2; exit 2 ;;
esac
if [ -n "${MNIST_CNN_DRY_RUN:-}" ]; then echo "check-wheel.sh: dry run, nothing built"; exit 0; fi
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-.venv/bin/python}
TORCH=${TORCH:-torch==2.13.0}
WORK=$(mktemp -d)
SERVER=""
cleanup() {
    if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s (%ds)\n' "$1" "$SECONDS"; }

step "build sdist and wheel"
"$PY" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/*.whl)
IN_WHEEL=$(unzip -Z1 "$WHEEL")
IN_SDIST=$(tar tzf "$WORK"/dist/*.tar.gz)
for f in mnist_cnn/static/index.html mnist_cnn/static/net.js mnist_cnn/templates/card.md.j2 \
         mnist_cnn/py.typed; do
    grep -qx "$f" <<<"$IN_WHEEL" || { echo "the wheel lacks $f"; exit 1; }
done
grep -q '/LICENSE$' <<<"$IN_SDIST" || { echo "the sdist lacks LICENSE"; exit 1; }

step "install into a fresh virtual environment"
python3 -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet "$TORCH" "$WHEEL[serve]" >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log"; exit 1; }

# From here on, run outside the repository so that nothing can be imported from src/.
cd "$WORK"
export PYTHONPATH=
step "mnist-cnn --help"
"$WORK/venv/bin/mnist-cnn" --help | head -3
"$VPY" - "$REPO" <<'PY'
import sys
from pathlib import Path

import mnist_cnn
from mnist_cnn import serve
from mnist_cnn.templates import TEMPLATE_DIR

repo = Path(sys.argv[1]).resolve()
site = Path(sys.prefix).resolve()
for what, path in (("package", Path(mnist_cnn.__file__)), ("page", serve.STATIC_DIR),
                   ("templates", TEMPLATE_DIR)):
    path = path.resolve()
    if repo in path.parents or site not in path.parents:
        sys.exit(f"the {what} comes from {path}, not from the installed package in {site}")
print(f"mnist-cnn {mnist_cnn.__version__} from {Path(mnist_cnn.__file__).parent}")
PY

step "train 20 steps on the real data"
"$WORK/venv/bin/mnist-cnn" train --steps 20 --log-every 20 --seed 1 --device cpu --out run
test -s run/README.md || { echo "training wrote no model card"; exit 1; }

step "export --web"
"$WORK/venv/bin/mnist-cnn" export run --web page
test -s page/index.html && test -s page/static/model.js && test -s page/static/net.js

step "serve: the page's files from the installed package"
"$WORK/venv/bin/mnist-cnn" serve run --port 0 >serve.log 2>&1 &
SERVER=$!
"$VPY" - <<'PY'
import re
import time
import urllib.request
from pathlib import Path

from mnist_cnn.serve import STATIC_DIR

for _ in range(600):
    found = re.search(r"http://\S+/", Path("serve.log").read_text())
    if found:
        break
    time.sleep(0.1)
else:
    raise SystemExit("serve did not start: " + Path("serve.log").read_text())
url = found.group(0)
for name in ("index.html", "app.js", "style.css"):
    sent = urllib.request.urlopen(url + ("" if name == "index.html" else f"static/{name}")).read()
    if sent != (STATIC_DIR / name).read_bytes():
        raise SystemExit(f"serve sent a {name} that is not the installed package's")
print(f"serve sent index.html, app.js and style.css from {STATIC_DIR}")
PY
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=""
step "the wheel works"
