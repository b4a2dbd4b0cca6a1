# courthub — two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both run their own set-up (idempotent): system packages, a .venv, and the package itself.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup system-deps lint typecheck unit bench screenshots clean chaos soak

demo: setup
	$(BIN)/courthub demo $(ARGS)

test: setup lint typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

setup: system-deps $(STAMP)

system-deps:
	@./scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# every bench of bench/ with its parts' limits measured in the same run -> docs/BENCHMARKS.md
bench: setup
	$(BIN)/courthub bench report

# the reliability suite (tests/chaos): every fault, strict about known bugs (tens of minutes);
# `make test` runs its quick subset. `make soak` runs the court an hour (SOAK_MINUTES=N)
chaos: setup
	COURTHUB_CHAOS_FULL=1 COURTHUB_CHAOS_STRICT=1 $(BIN)/python -m pytest -s -q tests/chaos

soak: setup
	$(BIN)/python tests/chaos/soak.py

# the console's pages in headless Chromium, saved as PNGs for the README (tests/browser)
screenshots: setup
	COURTHUB_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/browser

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
