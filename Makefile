# The two commands a newcomer needs: `make bench` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= quick
# pip.conf on some machines points find-links at an old CPU-only torch wheel that matches no
# torchvision release; an empty value makes pip resolve torch and torchvision from the index.
PIP_ENV := PIP_FIND_LINKS=

.PHONY: setup bench leaderboard test lint format perf clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/python -m pip install --upgrade pip
	$(PIP_ENV) $(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

bench: setup
	@status=0; $(BIN)/bench run --preset $(PRESET) || status=$$?; \
	  $(BIN)/bench leaderboard && exit $$status

leaderboard: setup
	$(BIN)/bench leaderboard

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

perf: setup
	$(BIN)/bench perf

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
