# Two set-up commands on a fresh clone with only Python present: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tether demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Side by side with TRL (a separate .peer environment is created on first use); ratios printed.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sft.py
	$(BIN)/python benchmarks/bench_rm.py
	$(BIN)/python benchmarks/bench_dpo.py --trl-precompute
	$(BIN)/python benchmarks/bench_rollout.py

clean:
	rm -rf $(VENV) runs
