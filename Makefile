# Everything a new machine needs, in one place. `make train` and `make test` set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of PyTorch. On these machines torch==2.13.0 is a local CPU wheel; elsewhere see
# the README ("CPU-only machines") or set TORCH='torch' for the default (CUDA) build.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,serve,tensorboard,onnx,docs

.PHONY: setup train test test-fast lint browser clean tour

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[$(EXTRAS)]"
	touch $@

train: setup
	$(VENV)/bin/mnist-cnn train

# Re-run docs/tour.ipynb and keep its outputs (a real run: a few minutes on two cores).
tour: setup
	$(PY) docs/make_tour.py

browser:
	scripts/install-browser.sh

# Python may write its bytecode caches (gitignored __pycache__/) even where the environment says
# not to: otherwise every worker and every process a test starts compiles the package and pytest
# rewrites every test module again (about 2.5 s of each worker's start here).
unexport PYTHONDONTWRITEBYTECODE

# Two pytest-xdist workers (one per core, a test file each at a time; see tests/conftest.py).
XDIST  ?= -n 2 --dist loadfile --no-loadscope-reorder

# The whole suite under coverage (branches too; the processes tests start, the workers
# included, are measured as well), then the ten slowest tests and the coverage of each module.
test: setup browser
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest $(XDIST) --durations=10
	$(PY) -m coverage combine -q
	$(PY) -m coverage report

# The edit-test loop: everything but real-MNIST training, the browser and other processes
# (marker slow).
test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" --durations=5

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage .coverage.*
