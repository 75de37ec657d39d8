# Shipway: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint typecheck bench constraints clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The runtime alone (what `make demo` needs), then the development tools on top.
$(RUNTIME): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	$(BIN)/shipway demo --duration 60

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/contract.py
	$(BIN)/python bench/serving.py --quick

constraints: $(STAMP)
	{ echo "# Pinned versions for reproducible installs: pip install -c constraints.txt -e '.[dev]'"; \
	  echo "# Regenerate with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^shipway'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
