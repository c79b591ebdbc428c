# The two commands that set everything up on a fresh machine:
#   make demo   venv + install + the main job on an embedded default
#   make test   venv + install + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build this project is tested with; setup.cfg admits a range.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv data test test-slow demo check-demo guard bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The layers and no import cycles (setup.cfg's import-linter contracts), then the tests.
test: venv
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# Fashion-MNIST from Debian's package (the default place chanprune looks); root installs it.
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass --data fashion-mnist:DIR)"; exit 2; fi

demo: venv data
	$(PY) examples/fmnist_demo.py

check-demo: venv
	$(PY) examples/check_models.py

# The CI latency-regression guard: slim vs dense resnet18 ONNX against benchmarks/baseline.json (~1 min).
guard: venv
	$(PY) benchmarks/guard.py

# The benchmark grids (hours on 2 cores; each resumes where it stopped), then the README's tables.
bench: venv data
	$(PY) benchmarks/costs.py
	$(PY) benchmarks/simplify.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/why.py
	$(PY) benchmarks/latency_budget.py
	$(PY) benchmarks/repredict.py
	$(PY) benchmarks/lam_rate.py
	$(PY) benchmarks/profile_timing.py
	$(PY) benchmarks/conditional.py
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/report.py --readme

clean:
	rm -rf $(VENV) build *.egg-info
