# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_ENV := DAGSTER_HOME=$(CURDIR)/var/demo/dagster_home PLATFORM_FLEET=$(CURDIR)/deploy/fleet/demo.yaml

.PHONY: install browser demo ui demo-stop test bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

## Run the whole protection flow on local PostgreSQL servers and local stores; print what it did.
demo: install
	$(BIN)/python -m platform_orchestration.demo

## The Dagster UI on the demo fleet, at http://127.0.0.1:3000 (run `make demo` once first).
ui: install
	$(BIN)/python -m platform_orchestration.demo servers
	$(DEMO_ENV) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Stop the demo's PostgreSQL servers (their data stays in var/demo).
demo-stop: install
	$(BIN)/python -m platform_orchestration.demo stop

## Debian's chromium for the UI tests (installed when missing and we may: as root).
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

## The test suite: real PostgreSQL servers, a real dagster dev and Chromium, started by the tests.
test: install browser
	$(BIN)/python -m pytest

## Benchmarks against pg_dump/pg_restore baselines (by hand, a few minutes).
bench: install
	$(BIN)/python -m benchmarks.backup_restore

clean: demo-stop
	rm -rf var
