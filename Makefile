# One entry point for people and CI. `make demo` on a fresh machine sets everything up
# and runs the whole pipeline locally; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-full lint bench bench-quick package deploy-local stack-up stack-down stack-status run-local invoke-local clean

# The last pip line installs the package itself (editable) for its console script, aggregator-tools.
$(STAMP): requirements.txt requirements-dev.txt package.json pyproject.toml
	@command -v zstd >/dev/null || (apt-get update -qq && apt-get install -y -qq zstd) || true
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	npm install --no-audit --no-fund --loglevel=error
	touch $(STAMP)

setup: $(STAMP)

demo: package
	$(PY) -m local demo --task-root $(TASK_ROOT)

# The unit tests spread over the cores (CPU-bound, no deadlines: 177 -> 120 s on two);
# the tests with real servers one at a time, since their deadlines and visibility timeouts
# assume the cores are theirs.
PYTEST = $(PY) -m pytest -q -p no:cacheprovider
UNIT = -n auto tests/unit
REST = --ignore=tests/unit --durations=15

# The tests, then the quick benchmarks as a regression gate (ratios and CPU per object,
# never wall times). CI runs exactly this.
test: setup
	$(PYTEST) -m "not slow" $(UNIT)
	$(PYTEST) -m "not slow" $(REST)
	$(MAKE) --no-print-directory bench-quick

test-full: setup
	$(PYTEST) $(UNIT)
	$(PYTEST) $(REST)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

BENCH = $(PY) -m pytest benchmarks -p no:cacheprovider -q --durations=10

bench: setup
	BENCH_GATE_JSON=benchmarks/results/gate-full.json $(BENCH) --benchmark-json=benchmarks/results/full.json; \
	status=$$?; $(PY) -m benchmarks.render benchmarks/results/full.json --gate benchmarks/results/gate-full.json --readme README.md; \
	exit $$status

bench-quick: setup
	BENCH_QUICK=1 $(BENCH) --benchmark-compare=benchmarks/results/quick.json

# The deploy artifact (build/arm64/) and its twin for this machine, unzipped
# (build/$(HOST_ARCH)/unzipped/): the task root that run-local and demo run.
# Deploy what was tested: npx serverless deploy --stage STAGE --package build/arm64
# Rebuilt only when an input (requirements, serverless.yml, package.json, handler.py,
# aggregator/) or the stage changed; `$(PY) -m local.artifact --force` rebuilds anyway.
STAGE ?= dev
HOST_ARCH := $(shell uname -m | sed -e 's/aarch64/arm64/')
TASK_ROOT := build/$(HOST_ARCH)/unzipped

package: setup
	$(PY) -m local.artifact --stage $(STAGE)

deploy-local: setup
	$(PY) scripts/local_deploy.py up

stack-up: setup
	$(PY) -m local up

stack-down:
	$(PY) -m local down

stack-status:
	$(PY) -m local status

# Lambda's SQS trigger, emulated, against the running stack.
run-local: package
	$(PY) -m local run --task-root $(TASK_ROOT)

# serverless invoke local with a real event from the running stack, run from the packaged
# twin (not the source tree): Serverless runs `python3 invoke.py` (its own wrapper, standard
# library only), so PATH gets a `python3` that is the base interpreter with -S (no
# site-packages, no .venv) and PYTHONPATH the task root; invoke.py appends the repo root
# last, after the zip's contents. VIRTUAL_ENV is unset: Serverless would put its bin first.
# Not Lambda's runtime client: `make run-local` runs the twin through awslambdaric.
INVOKE_BIN := build/invoke-local
invoke-local: package
	$(PY) -m local event
	mkdir -p $(INVOKE_BIN)
	printf '#!/bin/sh\nexec %s -S "$$@"\n' "$$($(PY) -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')" > $(INVOKE_BIN)/python3
	chmod +x $(INVOKE_BIN)/python3
	set -a; . .local-stack/env; set +a; env -u VIRTUAL_ENV PATH=$(CURDIR)/$(INVOKE_BIN):$$PATH \
	  PYTHONPATH=$(CURDIR)/$(TASK_ROOT) PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
	  npx serverless invoke local -f aggregator --stage local -p .local-stack/event.json

clean: stack-down
	rm -rf .serverless .local-stack .pytest_cache build
