# komut: the two commands a new user needs are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint bench run clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway message_types adapters tests bench
	$(BIN)/ruff format --check gateway message_types adapters tests bench

bench: $(STAMP)
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/crypto.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/scale.py

# The demo network: the hospital trust's gateway on :8080, the municipalities' on :8081.
run: $(STAMP)
	$(BIN)/komut demo --dir var/demo

clean:
	rm -rf $(VENV) build *.egg-info
