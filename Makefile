# Quick start targets. Each one sets up .venv on a fresh machine (Python 3.11) and then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean-demo

setup: $(STAMP)

# torch is installed first and pinned, so that requirements.txt cannot pull a different (CUDA) build; the project
# itself is installed editable (pyproject.toml), so scripts/ run from any folder without sys.path edits.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/run_demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf demo_run results/demo
