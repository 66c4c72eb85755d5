# The README's two commands are `make demo` and `make test`; both build .venv themselves.
VENV   := .venv
BIN    := $(VENV)/bin
WORKERS ?= 2

.PHONY: setup demo test test-unit test-slow lint
setup:
	@bash scripts/setup-env.sh

demo: setup
	@$(BIN)/cafe-dist demo --config jobs/demo.yaml --num-workers $(WORKERS) --output-json out.json

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-unit: setup   # the fast loop: no Ray, no DMP processes (seconds to a few minutes)
	$(BIN)/python -m pytest -q tests/unit

test-slow: setup
	bash scripts/setup-browser.sh   # Debian's chromium for the MLflow UI test
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
