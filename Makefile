# llm-gateway: `make demo` runs it all locally, `make test` runs every test.
# Both work on a fresh Debian machine with only Python 3.11: missing tools are installed here
# (uv into .tools/, the workspace into .venv/, redis-server and postgresql from Debian).

PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
UV_DEP := $(filter .tools/bin/uv,$(UV))
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help deps demo test pytest lint typecheck bench bench-collector clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) $(UV_DEP)
	$(UV) sync --frozen --python $(PYTHON) --quiet
	@touch $@

# The validators of the Prometheus Operator's ServiceMonitor and PrometheusRule, generated from its
# CRDs' openAPIV3Schema (npm @kubernetes-models/prometheus-operator), for
# tests/chart/test_monitoring_crds.py. The tarball is pinned by checksum; npm checks the rest.
CRD_MODELS := kubernetes-models-prometheus-operator-6.0.0.tgz
CRD_MODELS_SHA256 := e92402ebff400ea1ca5fe60546554841ab6f5986b317f3f0d4cb756dc88fbd37
CRD_VALIDATORS := .tools/crd-validators

$(CRD_VALIDATORS)/$(CRD_MODELS).installed:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }
	mkdir -p $(CRD_VALIDATORS)
	cd $(CRD_VALIDATORS) && npm pack --silent --loglevel=error @kubernetes-models/prometheus-operator@6.0.0 >/dev/null
	echo "$(CRD_MODELS_SHA256)  $(CRD_VALIDATORS)/$(CRD_MODELS)" | sha256sum --check --quiet
	npm install --prefix $(CRD_VALIDATORS) --no-save --no-audit --no-fund --ignore-scripts \
	  --loglevel=error $(CURDIR)/$(CRD_VALIDATORS)/$(CRD_MODELS)
	@touch $@

deps: .venv/.synced $(CRD_VALIDATORS)/$(CRD_MODELS).installed  ## install everything the gateway and its tests need
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from Debian's packages"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: deps  ## Redis, fake upstream and the three services; send a request; see its event arrive
	$(UV) run --frozen python scripts/demo.py

test: deps lint typecheck pytest  ## lint, type-check and run every test

pytest: deps
	$(UV) run --frozen pytest

lint: deps
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: deps
	$(UV) run --frozen mypy

bench: deps  ## the gateway vs the bare stack vs direct, on this machine (needs wrk)
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(UV) run --frozen python bench/run.py
	$(UV) run --frozen python bench/cache.py

bench-collector: deps  ## events/s one collector sustains into Postgres and NDJSON
	$(UV) run --frozen python -m bench.collector

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
