# Quick start: `make demo` and `make test`. Both set everything up on a fresh Debian machine.
VENV := .venv
BIN := $(VENV)/bin

# Where `make compile` puts the mypyc-compiled package (setup.py); `make test` and `make bench`
# run against it, the development checkout itself stays pure Python.
COMPILED := build/compiled

.PHONY: setup demo test test-fast lint typecheck compile bench bench-mysql clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(BIN)/dbbalancer demo

lint: setup
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py

typecheck: setup
	$(BIN)/mypy

test-fast: setup
	$(BIN)/pytest -q tests/unit tests/property

# Incremental: only what changed is compiled again (about 45 s from scratch, 8 s when nothing did).
compile: setup
	@mkdir -p build
	@DBBALANCER_COMPILE=1 $(BIN)/python setup.py -q build --build-lib $(COMPILED) \
		>build/compile.log 2>&1 || { cat build/compile.log; exit 1; }
	@echo "compiled into $(COMPILED) (log: build/compile.log)"

test: setup lint typecheck compile
	DBBALANCER_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED) $(BIN)/pytest -q tests

# Both parts: pgbench (PostgreSQL) then sysbench (MariaDB); `bench-mysql` runs only the MySQL
# part and keeps the PostgreSQL results already in docs/benchmarks.md.
bench: compile
	@bash scripts/bootstrap.sh bench
	PYTHONPATH=$(COMPILED) $(BIN)/python -m bench.run

bench-mysql: compile
	@bash scripts/bootstrap.sh bench
	PYTHONPATH=$(COMPILED) $(BIN)/python -m bench.run --no-postgres

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
