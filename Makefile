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

# The main job on the embedded default: int8-compress convnet on the digits, export to ONNX (validated), profile it.
demo: install
	$(BIN)/edgekit compress --recipe int8 --force
	$(BIN)/edgekit export edgekit-out/convnet-int8 --target onnx --force
	$(BIN)/edgekit profile edgekit-out/convnet-int8-onnx-int8 --device local --budget 3 --force

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup --timeout 900 -q --durations=25

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow"

docs: install
	$(BIN)/python -m edgekit.docgen

# Every benchmark, one after another (each rewrites its section of docs/benchmarks.md). Long: several hours on 2 cores.
BENCHMARKS := fusion_modes fusion_latency fusion_macps runtimes quant_vs_peers prune_structured sparsity_nm \
              ivit_accuracy ivit_latency bivit_accuracy bivit_latency runner_overhead deployables int8_transformers \
              thirdparty_vs_peers zoo_recipes data_memory adaround max_drop sweep detection
bench: install
	for b in $(BENCHMARKS); do $(BIN)/python -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info edgekit-out
