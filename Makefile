# One entry point for people and CI. `make demo` on a fresh machine sets everything up
# and runs the whole pipeline locally; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-full lint bench bench-quick package deploy-local stack-up stack-down clean

$(STAMP): requirements.txt requirements-dev.txt package.json
	@command -v zstd >/dev/null || (apt-get update -qq && apt-get install -y -qq zstd) || true
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	npm install --no-audit --no-fund --loglevel=error
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m localstack demo

test: setup
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-full: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-json=benchmarks/results/latest.json

bench-quick: setup
	BENCH_QUICK=1 $(PY) -m pytest benchmarks -q --benchmark-only

package: setup
	npx serverless package --stage dev

deploy-local: setup
	$(PY) scripts/local_deploy.py up

stack-up: setup
	$(PY) -m localstack up

stack-down:
	$(PY) -m localstack down

clean:
	rm -rf .serverless .local-stack .pytest_cache
