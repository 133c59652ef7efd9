# edgekit: `make demo` runs the main job on the embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/edgekit compress --recipe int8 --force

test: install
	$(BIN)/python -m pytest -n 2 --timeout 900 -q

test-fast: install
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

docs: install
	$(BIN)/python -m edgekit.docgen

clean:
	rm -rf $(VENV) build dist *.egg-info edgekit-out
