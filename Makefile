# Two entry points on a fresh machine: `make demo` and `make test` (each creates .venv and installs first).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

$(BIN)/sdmae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/sdmae

demo: install  ## pre-train SD-MAE on the built-in CC0 sample slide (CPU, a few minutes)
	$(BIN)/sdmae pretrain --out runs/demo
	@echo "outputs: runs/demo (reconstructions.png, log.jsonl, checkpoints/last.pt)"

test: install  ## the whole test suite, CPU only
	$(BIN)/python -m pytest -q -m "not gpu"

.PHONY: install demo test
