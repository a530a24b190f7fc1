# Quick start: `make demo` and `make test`. Both set everything up on a fresh Debian machine.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint typecheck bench clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/dbbalancer demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

test-fast: setup
	$(BIN)/pytest -q tests/unit tests/property

test: setup lint typecheck
	$(BIN)/pytest -q tests

bench:
	@bash scripts/bootstrap.sh bench
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
