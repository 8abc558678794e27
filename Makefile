# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# barman-cloud (physical backups, WAL archiving) in its own venv from Debian's Python, which the
# server's user (nobody) can run: the archive_command runs as that user.
BARMAN_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo $(PYTHON))
BARMAN_VENV ?= .venv-barman
BARMAN_INSTALLED := $(BARMAN_VENV)/.installed
# What `make lock-barman` resolves into deploy/barman.lock; the venv and the image install the lock.
BARMAN_SPEC := barman[cloud,azure,google,lz4,zstandard]==3.19.*
BARMAN_LOCK := deploy/barman.lock
DEMO_ENV := DAGSTER_HOME=$(CURDIR)/var/demo/dagster_home PLATFORM_FLEET=$(CURDIR)/deploy/fleet/demo.yaml

.PHONY: install barman lock-barman browser monitoring-tools demo demo-clouds ui demo-stop test lock argocd-clusters bench bench-physical bench-stores bench-fleet bench-replication chaos clean

# The runtime dependencies at the lock's versions (what the image ships) and the test tools at
# theirs, whatever PyPI has released since: a new release changes nothing until `make lock`.
$(INSTALLED): pyproject.toml deploy/requirements.lock tests/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c deploy/requirements.lock -c tests/requirements.lock -e '.[test]'
	touch $@

# The same barman-cloud as the image's /opt/barman: the lock, with --no-deps (see deploy/lock_barman.py).
$(BARMAN_INSTALLED): $(BARMAN_LOCK)
	@$(BARMAN_PYTHON) -c 'import ensurepip' 2>/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null)
	$(BARMAN_PYTHON) -m venv --clear $(BARMAN_VENV)
	$(BARMAN_VENV)/bin/pip install --quiet --upgrade pip
	$(BARMAN_VENV)/bin/pip install --quiet --no-deps -r $(BARMAN_LOCK)
	$(BARMAN_VENV)/bin/python -c 'import barman.clients.cloud_backup, barman.clients.cloud_restore, psycopg2'
	touch $@

install: $(INSTALLED) $(BARMAN_INSTALLED)

## Only the barman-cloud venv (physical backups); `install` builds it too.
barman: $(BARMAN_INSTALLED)

## Run the whole protection flow on local PostgreSQL servers and local stores; print what it did.
demo: install
	$(BIN)/python -m platform_orchestration.demo

## The same flow with backups in S3, Azure Blob and GCS (their local emulators), a drill from each.
demo-clouds: install node_modules/.installed
	$(BIN)/python -m platform_orchestration.demo clouds

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

## Debian's Prometheus, Pushgateway and Alertmanager for the monitoring tests (installed when
## missing and we may: as root). The tests run them on loopback; nothing is started as a service.
monitoring-tools:
	@command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && \
	  command -v prometheus-alertmanager >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-pushgateway prometheus-alertmanager >/dev/null)

## Node tools the tests run (Azurite, the Azure Blob emulator), as pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

## The test suite: real PostgreSQL servers, a real dagster dev and Chromium, started by the tests,
## on two pytest-xdist workers (pyproject's addopts); `make test WORKERS=1` runs it in one process.
test: install browser monitoring-tools node_modules/.installed
	$(BIN)/python -m pytest $(if $(WORKERS),-n $(if $(filter 1,$(WORKERS)),0,$(WORKERS)))

## deploy/requirements.lock and tests/requirements.lock: the runtime dependencies (the image installs them)
## and the test tools at the versions installed in .venv.
lock: install
	$(BIN)/python deploy/lock.py

## deploy/barman.lock: barman-cloud (BARMAN_SPEC) and its closure, resolved afresh by pip (nothing is built).
lock-barman: $(BARMAN_INSTALLED)
	$(BARMAN_VENV)/bin/python deploy/lock_barman.py '$(BARMAN_SPEC)'

## deploy/argocd/clusters/*.yaml: one Argo CD Application per cluster of deploy/fleet/production.yaml.
argocd-clusters: install
	$(BIN)/python deploy/argocd/generate.py

## Benchmarks against pg_dump/pg_restore baselines (by hand, a few minutes).
bench: install
	$(BIN)/python -m benchmarks.backup_restore $(if $(QUICK),--quick)

## Physical backups (barman-cloud) against barman-cloud-backup by hand, pg_basebackup and a logical
## restore of the same 1 GiB database, and WAL archiving under pgbench (about 10 minutes; GIB=0.2 for a quick look).
bench-physical: install
	$(BIN)/python -m benchmarks.physical $(if $(GIB),--gib $(GIB))

## Cross-cloud copy and fan-out against plain SDK transfers, on the emulators (a few minutes).
bench-stores: install node_modules/.installed
	$(BIN)/python -m benchmarks.stores

## Fleet scale: status, assessment, fleet load and Definitions at 100-10,000 synthetic databases,
## with store calls per database (a few minutes; S3=100 adds a moto-server run).
bench-replication: install
	$(BIN)/python -m benchmarks.replication $(if $(QUICK),--quick)

bench-fleet: install
	$(BIN)/python -m benchmarks.fleet $(if $(S3),--s3 $(S3)) $(if $(STATUS),--status-only $(STATUS))

## Fault campaign: TRIALS seeded SIGKILL/store-fault trials of whole platform-dr processes, checked
## after each (nothing lost, nothing left behind); e.g. `make chaos TRIALS=60 SEED=1 ROWS=1000000`.
TRIALS ?= 60
SEED ?= 1
ROWS ?= 1000000
chaos: install
	$(BIN)/python -m chaos --trials $(TRIALS) --seed $(SEED) --rows $(ROWS)

clean: demo-stop
	rm -rf var
