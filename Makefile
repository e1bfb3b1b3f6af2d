# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs megalmm and runs the whole pipeline on example_data/
#   make test   the same environment, then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_CONFIG := configs/example.yaml

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/megalmm prepare $(DEMO_CONFIG)
	$(BIN)/megalmm sample $(DEMO_CONFIG)
	$(BIN)/megalmm predict $(DEMO_CONFIG)
	$(BIN)/megalmm summarize $(DEMO_CONFIG)
	@echo "Demo finished. Results: runs/example/predictions/ (U.csv, U_sd.csv, eta_hat.csv, test_accuracy.csv) and runs/example/summary/ (G.csv, R.csv, h2.csv)"

# the tests run on every core (at most 4 processes), each test on whichever worker is free
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampler.py

clean:
	rm -rf runs/example .pytest_cache
