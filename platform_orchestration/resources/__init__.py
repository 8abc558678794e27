"""Dagster resources: secrets and keys, the fleet, and through it the protection API
shared with the CLI."""

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import dagster as dg

from platform_orchestration.alerts import FileAlertSink
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.fleet import Fleet, UnknownNameError, load_fleet
from platform_orchestration.observability.metrics import PushFailed, push_run_metrics
from platform_orchestration.observability.notify import (
    AlertmanagerReceiver,
    Notification,
    NotificationFailed,
    Receiver,
    WebhookReceiver,
    parse_secret_reference,
    send,
)
from platform_orchestration.protection import FleetProtection
from platform_orchestration.providers import providers_from_env
from platform_orchestration.secrets import SecretProvider

# Each SecretsResource field stands for the environment variable a CLI run would read.
_SECRETS_VARIABLES = {"vault_addr": "VAULT_ADDR", "vault_auth_method": "VAULT_AUTH_METHOD",
                      "vault_kubernetes_role": "VAULT_K8S_ROLE", "vault_kubernetes_mount": "VAULT_K8S_MOUNT",
                      "vault_kv_mount": "VAULT_KV_MOUNT", "vault_transit_mount": "VAULT_TRANSIT_MOUNT",
                      "vault_transit_key": "VAULT_TRANSIT_KEY", "local_key_file": "PLATFORM_LOCAL_KEK"}


_fleets: dict[str, tuple[tuple[object, ...], Fleet]] = {}
_fleets_lock = threading.Lock()


FLEET_CLUSTERS_ENV = "PLATFORM_FLEET_CLUSTERS"
"""Comma-separated cluster names: this deployment protects only their databases (one deployment
beside each cluster, deploy/argocd); unset, the whole fleet."""


def load_fleet_once(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Fleet:
    """The fleet file at `path`, read and validated once per process for as long as the file
    (its mtime, size and inode) and the environment its ``${VAR}``s read are unchanged: the
    Definitions build and every step of an in-process run share one load, instead of paying
    for it (seconds at 10,000 databases) each time. An edited file is read again. With
    PLATFORM_FLEET_CLUSTERS set, the fleet as the deployment serving those clusters sees it."""
    environ = os.environ if environ is None else environ
    serving = [name.strip() for name in environ.get(FLEET_CLUSTERS_ENV, "").split(",") if name.strip()]
    fleet = _load_fleet_once(path, environ)
    try:
        return fleet.serving(serving) if serving else fleet
    except UnknownNameError as exc:
        raise UnknownNameError(f"{FLEET_CLUSTERS_ENV}: {exc} in {fleet.source}") from None


def _load_fleet_once(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Fleet:
    name = os.fspath(path)
    try:
        stat = os.stat(name)
    except OSError:
        return load_fleet(name, environ=environ)  # says what is wrong with the path
    stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino, hash(frozenset(environ.items())))
    where = os.path.realpath(name)  # the Definitions build and the resource may name it differently
    with _fleets_lock:
        cached = _fleets.get(where)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    fleet = load_fleet(name, environ=environ)
    with _fleets_lock:
        _fleets[where] = (stamp, fleet)
    return fleet


class SecretsResource(dg.ConfigurableResource):
    """Where secrets and data keys come from. Only locations and names live here (they show
    in the UI); the Vault token is read from VAULT_TOKEN / VAULT_TOKEN_FILE or the pod's
    service-account token at login, never from config.

    Empty `vault_addr`: the embedded default (env:/file: references, local key file)."""

    vault_addr: str = ""
    vault_auth_method: str = "token"
    vault_kubernetes_role: str = ""
    vault_kubernetes_mount: str = "kubernetes"
    vault_kv_mount: str = "secret"
    vault_transit_mount: str = "transit"
    vault_transit_key: str = "backups"
    local_key_file: str = ""

    @classmethod
    def from_environment(cls) -> "SecretsResource":
        settings = {field: os.environ[variable] for field, variable in _SECRETS_VARIABLES.items()
                    if os.environ.get(variable)}
        return cls(**settings)

    def providers(self) -> tuple[SecretProvider, DataKeyProvider]:
        """The same construction as the CLI's (providers.py), from this resource's
        settings layered over the process environment (which still supplies the token, its
        file, the namespace and the CA certificate)."""
        environ = {**os.environ, **{variable: getattr(self, field) for field, variable in _SECRETS_VARIABLES.items()}}
        return providers_from_env(environ)


class FleetResource(dg.ConfigurableResource):
    """The fleet file this code location protects (PLATFORM_FLEET in production)."""

    fleet_file: str
    secrets: SecretsResource

    def load(self) -> Fleet:
        return load_fleet_once(self.fleet_file)

    @contextlib.contextmanager
    def protection(self) -> Iterator[FleetProtection]:
        """The protection API for one step; dynamic database logins taken during the step
        are revoked when it ends, failed or not. An operator-facing error (PlatformError)
        fails the step with its one-line message; anything else is a bug and keeps its
        traceback."""
        try:
            secrets, keys = self.secrets.providers()
            with FleetProtection(self.load(), secrets=secrets, keys=keys) as protection:
                yield protection
        except PlatformError as exc:
            raise dg.Failure(description=one_line(exc)) from None


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go: always a JSON-lines file (that a log shipper can follow), and the
    receivers configured: Alertmanager's API (`alertmanager_url`, PLATFORM_ALERTMANAGER_URL)
    and/or a Slack-compatible webhook whose URL is a secret reference (`webhook_url_secret`,
    PLATFORM_ALERT_WEBHOOK: env:NAME, file:/PATH or vault:PATH#KEY; the URL is resolved when
    sending, never stored in config)."""

    alerts_file: str
    alertmanager_url: str = ""
    webhook_url_secret: str = ""
    attempts: int = 4
    backoff_seconds: float = 0.5

    def sink(self) -> FileAlertSink:
        return FileAlertSink(Path(self.alerts_file))

    def receivers(self) -> list[Receiver]:
        receivers: list[Receiver] = []
        if self.alertmanager_url:
            receivers.append(AlertmanagerReceiver(self.alertmanager_url))
        if self.webhook_url_secret:
            reference = parse_secret_reference(self.webhook_url_secret)

            def resolve() -> str:
                secrets, _keys = SecretsResource.from_environment().providers()
                return secrets.resolve(reference)

            receivers.append(WebhookReceiver(reference.describe(), resolve))
        return receivers

    def notify(self, notification: Notification) -> list[str]:
        """Send to every receiver (with retries); returns the receivers it reached. Raises
        NotificationFailed naming each receiver that could not be reached, after trying all."""
        reached, failures = [], []
        for receiver in self.receivers():
            try:
                send(receiver, notification, attempts=self.attempts, backoff=self.backoff_seconds)
                reached.append(receiver.describe())
            except PlatformError as exc:  # NotificationFailed, or the secret could not be resolved
                failures.append(one_line(exc))
        if failures:
            raise NotificationFailed("; ".join(failures))
        return reached


class MetricsResource(dg.ConfigurableResource):
    """Where runs push their metrics: a Prometheus Pushgateway (PLATFORM_PUSHGATEWAY_URL);
    empty: no push (the exporter still reads everything from the stores)."""

    pushgateway_url: str = ""

    def push(self, log: logging.Logger | dg.DagsterLogManager, **figures: object) -> None:
        """Push one step's figures; a Pushgateway that is down is a warning, never a failed backup."""
        if not self.pushgateway_url:
            return
        try:
            push_run_metrics(self.pushgateway_url, **figures)  # type: ignore[arg-type]
        except PushFailed as exc:
            log.warning(str(exc))
