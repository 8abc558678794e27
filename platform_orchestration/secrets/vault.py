"""HashiCorp Vault (and OpenBao, same API) over hvac: secrets, database logins, data keys.

One authenticated `VaultClient` serves three consumers:

- `VaultSecretProvider` resolves fleet secret references: `vault:` ones from KV v2, `env:` and
  `file:` ones through `LocalSecretProvider`, so one provider serves a whole fleet;
- `VaultDatabaseCredentials` issues dynamic PostgreSQL logins (database secrets engine) and
  revokes their leases when the work is done;
- `crypto.vault_transit.VaultTransitKeys` (beside the local key file's provider) is the
  envelope-encryption key service on transit, over the same client.

Secret values, tokens, JWTs and key material never appear in messages or reprs: errors name
the path, the key, the lease or the file they came from. Nothing here knows Dagster; the
resource layer builds a client from plain config, typically `VaultClient.from_env()`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar, get_args

import hvac
import hvac.exceptions
import requests

from platform_orchestration.errors import InvalidDeclaration, PlatformError
from platform_orchestration.secrets import (
    LocalSecretProvider,
    SecretProvider,
    SecretUnavailable,
)

if TYPE_CHECKING:
    from platform_orchestration.fleet import SecretRef

log = logging.getLogger(__name__)

AuthMethod = Literal["token", "kubernetes"]
DEFAULT_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

_T = TypeVar("_T")


class VaultConfigError(InvalidDeclaration):
    """The Vault settings are incomplete or contradictory (names the setting, never a token)."""


class VaultAuthError(PlatformError):
    """Vault refused to authenticate us; names the method, role, mount or token source only."""


class LeaseRevocationError(PlatformError):
    """Some leases could not be revoked; `lease_ids` lists them (they stay tracked for a retry,
    and Vault still revokes them when their TTL ends)."""

    def __init__(self, message: str, lease_ids: list[str]) -> None:
        super().__init__(message)
        self.lease_ids = lease_ids


# --- the client --------------------------------------------------------------------------------


@dataclass(eq=False)
class VaultClient:
    """Where Vault is, how to log in, and the mounts the providers use by default.

    Authentication:

    - ``auth_method="token"``: ``token`` as given, or read from ``token_file`` (a Vault Agent
      sink, for instance). With a file, every re-login reads it again, so a token the agent
      renews or replaces is picked up.
    - ``auth_method="kubernetes"``: the pod's service-account JWT (``kubernetes_jwt_file``, read
      anew at each login because projected tokens rotate) is exchanged for a Vault token at
      ``auth/<kubernetes_mount>/login`` for ``kubernetes_role``.

    The token's remaining TTL is learnt at login; `session()` logs in again once less than
    ``min(renew_before, ttl / 2)`` seconds remain, and `call()` logs in again once and retries
    when Vault answers 403 (a token revoked or expired early) if a re-login can yield a new token.

    Thread-safe: the Dagster layer may share one client between threads of a step.
    """

    address: str
    auth_method: AuthMethod = "token"
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    kubernetes_role: str | None = None
    kubernetes_mount: str = "kubernetes"
    kubernetes_jwt_file: Path = DEFAULT_SERVICE_ACCOUNT_TOKEN
    namespace: str | None = None
    ca_cert: Path | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    renew_before: float = 60.0
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    transit_key: str = "backups"
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    _session: hvac.Client | None = field(default=None, init=False, repr=False)
    _refresh_at: float | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.token = self.token or None
        self.address = self.address.strip().rstrip("/")
        if not re.match(r"https?://[^/]+", self.address):
            raise VaultConfigError(f"Vault address must be an http(s) URL, got {self.address!r}")
        if self.auth_method not in get_args(AuthMethod):
            raise VaultConfigError(
                f"Vault auth method must be one of {', '.join(get_args(AuthMethod))}, got {self.auth_method!r}")
        if self.auth_method == "token" and not self.token and self.token_file is None:
            raise VaultConfigError("Vault token auth needs a token (VAULT_TOKEN) or a token file (VAULT_TOKEN_FILE)")
        if self.auth_method == "kubernetes" and not self.kubernetes_role:
            raise VaultConfigError("Vault kubernetes auth needs a role (VAULT_K8S_ROLE)")
        for name in ("kubernetes_mount", "kv_mount", "transit_mount"):
            setattr(self, name, getattr(self, name).strip("/"))
        if self.token_file is not None:
            self.token_file = Path(self.token_file)
        self.kubernetes_jwt_file = Path(self.kubernetes_jwt_file)
        if self.ca_cert is not None:
            self.ca_cert = Path(self.ca_cert)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VaultClient:
        """A client configured from the environment (``os.environ`` unless given):

        ``VAULT_ADDR`` (required); ``VAULT_AUTH_METHOD`` (``token``, the default, or
        ``kubernetes``); for token auth ``VAULT_TOKEN`` or ``VAULT_TOKEN_FILE``; for kubernetes
        auth ``VAULT_K8S_ROLE`` (required), ``VAULT_K8S_MOUNT`` (default ``kubernetes``) and
        ``VAULT_K8S_JWT_FILE`` (default the pod's service-account token); ``VAULT_NAMESPACE``,
        ``VAULT_CACERT``, ``VAULT_CLIENT_TIMEOUT`` (seconds, per request); and the defaults of
        the providers: ``VAULT_KV_MOUNT`` (``secret``), ``VAULT_TRANSIT_MOUNT`` (``transit``),
        ``VAULT_TRANSIT_KEY`` (``backups``). Empty values count as unset.
        """
        env = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
        address = env.get("VAULT_ADDR")
        if address is None:
            raise VaultConfigError("VAULT_ADDR is not set (e.g. https://vault.internal:8200)")
        method = env.get("VAULT_AUTH_METHOD", "token").lower()
        settings: dict[str, object] = {"address": address, "auth_method": method}
        if method == "token":
            settings["token"] = env.get("VAULT_TOKEN")
            if "VAULT_TOKEN_FILE" in env:
                settings["token_file"] = Path(env["VAULT_TOKEN_FILE"])
        elif method == "kubernetes":
            settings["kubernetes_role"] = env.get("VAULT_K8S_ROLE")
        optional = {
            "VAULT_K8S_MOUNT": ("kubernetes_mount", str), "VAULT_K8S_JWT_FILE": ("kubernetes_jwt_file", Path),
            "VAULT_NAMESPACE": ("namespace", str), "VAULT_CACERT": ("ca_cert", Path),
            "VAULT_CLIENT_TIMEOUT": ("read_timeout", _positive_seconds),
            "VAULT_KV_MOUNT": ("kv_mount", str), "VAULT_TRANSIT_MOUNT": ("transit_mount", str),
            "VAULT_TRANSIT_KEY": ("transit_key", str),
        }
        for variable, (setting, convert) in optional.items():
            if variable in env:
                try:
                    settings[setting] = convert(env[variable])
                except ValueError as exc:
                    raise VaultConfigError(f"{variable}: {exc}") from None
        return cls(**settings)  # type: ignore[arg-type]

    def describe(self) -> str:
        """``Vault at ADDRESS`` (and the namespace), for messages."""
        return f"Vault at {self.address}" + (f" (namespace {self.namespace})" if self.namespace else "")

    def session(self) -> hvac.Client:
        """An authenticated hvac client; logs in first when there is no token yet or it nears expiry.

        Raises VaultAuthError when the login is refused or its input (token, JWT file) is missing.
        """
        with self._lock:
            if self._session is None or (self._refresh_at is not None and self.clock() >= self._refresh_at):
                self._login()
            assert self._session is not None
            return self._session

    def call(self, operation: Callable[[hvac.Client], _T]) -> _T:
        """``operation(session)``; on a 403, logs in again and retries once if a re-login can
        bring a different token (kubernetes auth, or a token file that may have been replaced)."""
        session = self.session()
        try:
            return operation(session)
        except hvac.exceptions.Forbidden:
            if not self._can_get_new_token():
                raise
        with self._lock:
            if self._session is session:
                self._login()
        return operation(self.session())

    def invalidate(self) -> None:
        """Forget the token: the next call logs in again."""
        with self._lock:
            self._refresh_at = self.clock()

    def _can_get_new_token(self) -> bool:
        return self.auth_method == "kubernetes" or self.token_file is not None

    def _new_hvac_client(self, token: str) -> hvac.Client:
        # verify and token are always explicit: otherwise hvac falls back to VAULT_CACERT and
        # VAULT_TOKEN / ~/.vault-token of the process, bypassing this configuration.
        return hvac.Client(
            url=self.address, token=token, namespace=self.namespace,
            verify=str(self.ca_cert) if self.ca_cert is not None else True,
            timeout=(self.connect_timeout, self.read_timeout),
        )

    def _login(self) -> None:
        if self.auth_method == "kubernetes":
            session, ttl = self._login_with_kubernetes()
        else:
            session, ttl = self._login_with_token()
        now = self.clock()
        self._session = session
        self._refresh_at = None if ttl <= 0 else now + ttl - min(self.renew_before, ttl / 2)

    def _token_source(self) -> str:
        return f"token file {self.token_file}" if self.token is None else "the configured token"

    def _login_with_token(self) -> tuple[hvac.Client, float]:
        token = self.token
        if token is None:
            assert self.token_file is not None
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise VaultAuthError(f"{self.describe()}: cannot read token file {self.token_file}: "
                                     f"{exc.strerror}") from None
            if not token:
                raise VaultAuthError(f"{self.describe()}: token file {self.token_file} is empty")
        session = self._new_hvac_client(token)
        try:
            ttl = float(session.auth.token.lookup_self()["data"].get("ttl") or 0)
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            raise VaultAuthError(f"{self.describe()} refused {self._token_source()}: "
                                 "it is unknown, revoked or expired") from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise VaultAuthError(f"{self.describe()}: cannot look up {self._token_source()}: "
                                 f"{failure_reason(exc, self)}") from None
        return session, ttl

    def _login_with_kubernetes(self) -> tuple[hvac.Client, float]:
        try:
            jwt = self.kubernetes_jwt_file.read_text().strip()
        except OSError as exc:
            raise VaultAuthError(
                f"{self.describe()}: kubernetes auth cannot read the service-account token "
                f"{self.kubernetes_jwt_file}: {exc.strerror} (is this running in a pod with a "
                "mounted service-account token?)") from None
        session = self._new_hvac_client(token="")
        where = f"kubernetes auth (mount {self.kubernetes_mount}, role {self.kubernetes_role})"
        try:
            response = session.auth.kubernetes.login(role=self.kubernetes_role, jwt=jwt,
                                                     mount_point=self.kubernetes_mount)
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise VaultAuthError(f"{self.describe()}: {where} failed: {failure_reason(exc, self)}") from None
        return session, float(response["auth"].get("lease_duration") or 0)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def failure_reason(exc: BaseException, client: VaultClient) -> str:
    """A short, value-free reason for a failed Vault request (Vault's own error strings name
    paths and problems, never secret values; tokens are never in them)."""
    if isinstance(exc, VaultAuthError):
        return str(exc)
    if isinstance(exc, requests.Timeout):
        return f"no answer from {client.address} within {client.read_timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {client.address}"
    if isinstance(exc, requests.RequestException):
        return f"request to {client.address} failed ({type(exc).__name__})"
    if isinstance(exc, hvac.exceptions.Forbidden):
        return "permission denied (the token's policies do not allow this)"
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return "not found"
    if isinstance(exc, (hvac.exceptions.VaultDown, hvac.exceptions.VaultNotInitialized)):
        return f"{client.describe()} is sealed or not initialized"
    if isinstance(exc, hvac.exceptions.VaultError):
        errors = [" ".join(str(e).replace("*", " ").split()) for e in (exc.errors or [])]
        detail = "; ".join(e.removeprefix("1 error occurred: ") for e in errors if e)
        return detail or type(exc).__name__
    return type(exc).__name__


# --- secrets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VaultLease:
    """A lease on a dynamic secret: revoking it (or its TTL ending) revokes the secret."""

    lease_id: str
    duration_seconds: int
    renewable: bool


class DatabaseLogin(NamedTuple):
    """A database login issued by Vault. Unpacks as ``username, password, lease``; ``lease`` is
    None for static credentials (``static-creds``), which Vault rotates itself."""

    username: str
    password: str
    lease: VaultLease | None

    def __repr__(self) -> str:
        return f"DatabaseLogin(username={self.username!r}, password=<hidden>, lease={self.lease!r})"


def _is_dynamic_credentials_path(path: str) -> bool:
    """``MOUNT/creds/ROLE``: each read of it creates a new database user."""
    segments = path.strip("/").split("/")
    return "/data/" not in path and len(segments) >= 3 and segments[-2] == "creds"


RENEW_AT_FRACTION = 0.5
"""A lease is renewed once this share of its current duration has passed (Vault's own agent
renews at two thirds; half leaves room for one failed renewal and a retry)."""
RENEW_RETRY_SECONDS = 5.0


class VaultDatabaseCredentials:
    """Dynamic database logins from Vault's database secrets engine, with their leases tracked.

    Every `login()` creates a database user that lives until its lease is revoked or expires;
    `revoke_all()` (or leaving `leases()`) drops every user taken so far, so a step's users do
    not outlive the step. While a lease is outstanding, a thread renews it (``sys/leases/renew``,
    asking for its first duration again) each time half of its current duration has passed, so a
    backup longer than the role's ``default_ttl`` keeps its login; Vault stops extending it at
    the role's ``max_ttl``, which therefore must exceed the longest step (the renewer logs when a
    lease reaches it). A failed renewal is logged and tried again a few seconds later.

    The token needs ``read`` on ``MOUNT/creds/ROLE`` and ``update`` on
    ``sys/leases/revoke/MOUNT/creds/ROLE/*`` and ``sys/leases/renew/MOUNT/creds/ROLE/*`` (Vault's
    default policy allows neither for these paths).
    """

    def __init__(self, client: VaultClient, *, renew: bool = True) -> None:
        self.client = client
        self.renew = renew
        self._outstanding: dict[str, VaultLease] = {}
        self._lock = threading.Lock()
        self._renew_at: dict[str, float] = {}  # lease id -> time.monotonic() of its next renewal
        self._ends_at: dict[str, float] = {}  # lease id -> when its current duration runs out
        self._changed = threading.Condition(self._lock)
        self._renewer: threading.Thread | None = None

    @property
    def outstanding(self) -> tuple[VaultLease, ...]:
        """Leases taken and not yet revoked."""
        with self._lock:
            return tuple(self._outstanding.values())

    def login(self, path: str) -> DatabaseLogin:
        """A fresh login from ``path`` (``database/creds/ROLE``; ``database/static-creds/ROLE``
        also works and has no lease). Raises SecretUnavailable naming the path."""
        path = path.strip("/")
        label = f"database login vault:{path}"
        try:
            response = self.client.call(lambda session: session.read(path))
        except (VaultAuthError, hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise SecretUnavailable(f"{label}: {failure_reason(exc, self.client)}") from None
        if response is None:
            raise SecretUnavailable(f"{label}: not found at {self.client.describe()} "
                                    "(no such database role or mount)")
        data = response.get("data") or {}
        lease = (VaultLease(response["lease_id"], int(response.get("lease_duration") or 0),
                            bool(response.get("renewable")))
                 if response.get("lease_id") else None)
        if lease is not None:
            # Tracked even if unusable below: whatever Vault issued must be revoked with the rest.
            with self._lock:
                self._outstanding[lease.lease_id] = lease
                if self.renew and lease.renewable and lease.duration_seconds > 0:
                    now = time.monotonic()
                    self._renew_at[lease.lease_id] = now + lease.duration_seconds * RENEW_AT_FRACTION
                    self._ends_at[lease.lease_id] = now + lease.duration_seconds
                    self._start_renewer()
        if not isinstance(data.get("username"), str) or not isinstance(data.get("password"), str):
            raise SecretUnavailable(
                f"{label}: not database credentials (fields: {', '.join(sorted(data)) or 'none'})")
        return DatabaseLogin(data["username"], data["password"], lease)

    def revoke_all(self) -> list[VaultLease]:
        """Revoke every outstanding lease (Vault drops their users before answering); returns
        those revoked. Tries them all; raises LeaseRevocationError naming the ones that failed."""
        with self._lock:
            pending = list(self._outstanding.values())
        revoked: list[VaultLease] = []
        failures: dict[str, str] = {}
        for lease in pending:
            try:
                self._revoke(lease)
            except hvac.exceptions.Forbidden:
                failures[lease.lease_id] = ("permission denied: the token needs update on "
                                            f"sys/leases/revoke/{lease.lease_id.rsplit('/', 1)[0]}/*")
                continue
            except (VaultAuthError, hvac.exceptions.VaultError, requests.RequestException) as exc:
                failures[lease.lease_id] = failure_reason(exc, self.client)
                continue
            revoked.append(lease)
            with self._lock:
                self._outstanding.pop(lease.lease_id, None)
                self._renew_at.pop(lease.lease_id, None)
                self._ends_at.pop(lease.lease_id, None)
                self._changed.notify_all()
        if failures:
            listed = ", ".join(f"{lease_id} ({reason})" for lease_id, reason in failures.items())
            raise LeaseRevocationError(
                f"{self.client.describe()}: could not revoke {len(failures)} lease(s): {listed}", list(failures))
        return revoked

    @contextmanager
    def leases(self) -> Iterator[VaultDatabaseCredentials]:
        """Revoke every outstanding lease on leaving the block, whether it fails or not.

        Covers leases taken before the block too: use one block per unit of work (a step). If the
        block raised, a revocation failure is logged rather than hiding the block's error.
        """
        try:
            yield self
        except BaseException:
            try:
                self.revoke_all()
            except LeaseRevocationError as exc:
                log.warning("%s", exc)
            raise
        self.revoke_all()

    def _start_renewer(self) -> None:
        """Called holding the lock: one renewer thread while any lease is due for renewal."""
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew_while_outstanding, name="vault-lease-renewer",
                                             daemon=True)
            self._renewer.start()
        self._changed.notify_all()

    def _renew_while_outstanding(self) -> None:
        while True:
            with self._lock:
                while True:
                    if not self._renew_at:
                        self._renewer = None
                        return
                    lease_id, due = min(self._renew_at.items(), key=lambda item: item[1])
                    wait = due - time.monotonic()
                    if wait <= 0:
                        lease = self._outstanding[lease_id]
                        break
                    self._changed.wait(wait)
            self._renew_once(lease)

    def _renew_once(self, lease: VaultLease) -> None:
        """Renew `lease` for its first duration again and schedule the next renewal; never raises
        (the renewer thread must outlive a Vault that is briefly away)."""
        try:
            # The lease id in the URL, as for revoking: a policy can allow renewing one role's leases.
            response = self.client.call(lambda session: session.adapter.put(
                f"/v1/sys/leases/renew/{lease.lease_id}", json={"increment": lease.duration_seconds}))
            granted = float((response or {}).get("lease_duration") or 0) if isinstance(response, dict) else 0.0
        except Exception as exc:  # noqa: BLE001 - whatever it is, this thread must go on renewing the others
            with self._lock:
                if lease.lease_id in self._renew_at:
                    left = self._ends_at[lease.lease_id] - time.monotonic()
                    if left <= 0:
                        log.warning("database login lease %s ran out while it could not be renewed (%s): Vault has "
                                    "dropped its user", lease.lease_id, failure_reason(exc, self.client))
                        self._renew_at.pop(lease.lease_id, None)
                        self._changed.notify_all()
                        return
                    log.warning("could not renew database login lease %s (%.0fs left): %s; trying again",
                                lease.lease_id, left, failure_reason(exc, self.client))
                    self._renew_at[lease.lease_id] = time.monotonic() + min(RENEW_RETRY_SECONDS, max(left / 2, 0.5))
            return
        with self._lock:
            if lease.lease_id not in self._renew_at:
                return  # revoked meanwhile
            now = time.monotonic()
            self._ends_at[lease.lease_id] = now + granted
            if granted < lease.duration_seconds:
                # Vault grants less than asked only up to the role's max_ttl: the lease's end is
                # fixed from here, and renewing again could only be refused.
                log.warning("database login lease %s ends in %.0fs, at its role's max_ttl: work still using it "
                            "then loses its login (raise the role's max_ttl above the longest step)",
                            lease.lease_id, granted)
                self._renew_at.pop(lease.lease_id, None)
                self._changed.notify_all()
                return
            self._renew_at[lease.lease_id] = now + granted * RENEW_AT_FRACTION

    def _revoke(self, lease: VaultLease) -> None:
        # The lease id goes in the URL, not the body, so that a policy can allow revoking just
        # one role's leases: path "sys/leases/revoke/database/creds/ROLE/*" {update}.
        self.client.call(lambda session: session.adapter.put(f"/v1/sys/leases/revoke/{lease.lease_id}"))


class VaultSecretProvider:
    """A SecretProvider for a whole fleet: ``vault:`` references from Vault, ``env:`` and
    ``file:`` ones through ``local`` (LocalSecretProvider by default).

    A ``vault:`` path is a KV v2 secret, written either as the API path ``MOUNT/data/PATH``
    (``kv/data/pg/orders``) or as ``PATH`` on the client's ``kv_mount`` (``pg/orders``). ``key``
    picks a field; without it the secret must have exactly one field. A field that is not a
    string (a JSON object, a number) is returned as JSON. Dynamic database credentials
    (``MOUNT/creds/ROLE``) are refused by `resolve` because each read creates a new user: use
    `database_login`, whose leases `leases()` / `revoke_all()` revoke.
    """

    def __init__(self, client: VaultClient, local: SecretProvider | None = None) -> None:
        self.client = client
        self.local: SecretProvider = local if local is not None else LocalSecretProvider()
        self.database = VaultDatabaseCredentials(client)

    def resolve(self, ref: SecretRef) -> str:
        """The secret's value; raises SecretUnavailable naming the reference, never a value."""
        if ref.vault is None:
            return self.local.resolve(ref)
        path = ref.vault.strip("/")
        label = f"secret {ref.describe()}"
        if _is_dynamic_credentials_path(path):
            raise SecretUnavailable(
                f"{label}: dynamic database credentials create a new user on every read, so they "
                "cannot be resolved as one value; use database_login for them")
        mount, secret_path = self._kv_location(path)
        if not secret_path:
            raise SecretUnavailable(f"{label}: expected MOUNT/data/PATH or a path on KV mount {self.client.kv_mount}")
        where = f"KV v2 mount {mount}, path {secret_path}"
        try:
            response = self.client.call(lambda session: session.secrets.kv.v2.read_secret_version(
                path=secret_path, mount_point=mount, raise_on_deleted_version=True))
        except hvac.exceptions.InvalidPath:
            raise SecretUnavailable(f"{label}: no secret at {self.client.describe()} ({where})") from None
        except (VaultAuthError, hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise SecretUnavailable(f"{label}: {failure_reason(exc, self.client)} ({where})") from None
        fields: dict[str, object] = (response.get("data") or {}).get("data") or {}
        if ref.key is not None:
            if ref.key not in fields:
                raise SecretUnavailable(f"{label}: the secret has no field {ref.key!r} "
                                        f"(fields: {', '.join(sorted(fields)) or 'none'})")
            return _as_text(fields[ref.key])
        if len(fields) != 1:
            raise SecretUnavailable(f"{label}: the secret has {len(fields)} fields "
                                    f"({', '.join(sorted(fields)) or 'none'}); name one with key:")
        return _as_text(next(iter(fields.values())))

    def database_login(self, path: str) -> DatabaseLogin:
        """A dynamic database login (``username, password, lease``), its lease tracked until
        `revoke_all` or the end of `leases()`. See VaultDatabaseCredentials.login."""
        return self.database.login(path)

    def leases(self) -> AbstractContextManager[VaultDatabaseCredentials]:
        """Revoke every database lease taken through this provider on leaving the block."""
        return self.database.leases()

    def revoke_all(self) -> list[VaultLease]:
        """Revoke every database lease taken through this provider (see VaultDatabaseCredentials)."""
        return self.database.revoke_all()

    def _kv_location(self, path: str) -> tuple[str, str]:
        if "/data/" in path:
            mount, _, secret_path = path.partition("/data/")
            return mount, secret_path.strip("/")
        return self.client.kv_mount, path


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
