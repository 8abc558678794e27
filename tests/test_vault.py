"""The Vault layer against a real OpenBao server (tests/vault_server.py) and, for dynamic
database logins, the real PostgreSQL source cluster.

Kubernetes auth runs for real too: OpenBao's kubernetes auth method is pointed at a small
TokenReview double standing in for the Kubernetes API server, so the JWT file, the role,
the mount and OpenBao's own token review are all exercised.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hvac
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from vault_server import VaultServer, postgres_engine_role

from platform_orchestration.crypto import DataKeyProvider, KeyServiceError
from platform_orchestration.crypto.vault_transit import VaultTransitKeys
from platform_orchestration.fleet import SecretRef
from platform_orchestration.postgres import LocalCluster
from platform_orchestration.secrets import (
    LeaseRevocationError,
    SecretProvider,
    SecretUnavailable,
    VaultAuthError,
    VaultClient,
    VaultConfigError,
    VaultDatabaseCredentials,
    VaultSecretProvider,
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def token_with_policy(admin: hvac.Client, policy: str, ttl: str = "1h") -> str:
    name = unique("policy")
    admin.sys.create_or_update_policy(name=name, policy=policy)
    return admin.auth.token.create(policies=[name], ttl=ttl)["auth"]["client_token"]


@pytest.fixture
def admin(vault_server: VaultServer) -> hvac.Client:
    return vault_server.admin()


@pytest.fixture
def root_client(vault_server: VaultServer) -> VaultClient:
    return VaultClient(vault_server.address, token=vault_server.root_token)


@pytest.fixture
def provider(root_client: VaultClient) -> VaultSecretProvider:
    return VaultSecretProvider(root_client)


def write_kv(admin: hvac.Client, fields: dict[str, object], mount: str = "secret") -> str:
    """A new KV v2 secret; returns its path on the mount."""
    path = f"pg/{unique('db')}"
    admin.secrets.kv.v2.create_or_update_secret(path=path, secret=fields, mount_point=mount)
    return path


# --- configuration -----------------------------------------------------------------------------


def test_from_env_with_token_auth() -> None:
    client = VaultClient.from_env({"VAULT_ADDR": "https://vault.internal:8200/", "VAULT_TOKEN": "hvs.secret-token",
                                   "VAULT_KV_MOUNT": "kv", "VAULT_CLIENT_TIMEOUT": "12.5"})
    assert (client.address, client.auth_method, client.kv_mount, client.read_timeout) == (
        "https://vault.internal:8200", "token", "kv", 12.5)
    assert (client.transit_mount, client.transit_key) == ("transit", "backups")
    assert "hvs.secret-token" not in repr(client)


def test_from_env_with_kubernetes_auth() -> None:
    client = VaultClient.from_env({
        "VAULT_ADDR": "https://vault.internal:8200", "VAULT_AUTH_METHOD": "kubernetes",
        "VAULT_TOKEN": "ignored-for-kubernetes", "VAULT_K8S_ROLE": "platform-backup",
        "VAULT_K8S_MOUNT": "k8s-eu", "VAULT_NAMESPACE": "platform", "VAULT_CACERT": "/etc/vault/ca.pem",
        "VAULT_TRANSIT_MOUNT": "transit-eu", "VAULT_TRANSIT_KEY": "pg-backups"})
    assert (client.auth_method, client.kubernetes_role, client.kubernetes_mount, client.token) == (
        "kubernetes", "platform-backup", "k8s-eu", None)
    assert client.kubernetes_jwt_file == Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    assert (client.namespace, client.ca_cert) == ("platform", Path("/etc/vault/ca.pem"))
    assert (client.transit_mount, client.transit_key) == ("transit-eu", "pg-backups")


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "VAULT_ADDR is not set"),
    ({"VAULT_ADDR": "http://vault:8200"}, "needs a token (VAULT_TOKEN) or a token file (VAULT_TOKEN_FILE)"),
    ({"VAULT_ADDR": "http://vault:8200", "VAULT_AUTH_METHOD": "kubernetes"}, "needs a role (VAULT_K8S_ROLE)"),
    ({"VAULT_ADDR": "http://vault:8200", "VAULT_AUTH_METHOD": "ldap"}, "must be one of token, kubernetes"),
    ({"VAULT_ADDR": "vault:8200", "VAULT_TOKEN": "t"}, "must be an http(s) URL"),
    ({"VAULT_ADDR": "http://vault:8200", "VAULT_TOKEN": "t", "VAULT_CLIENT_TIMEOUT": "soon"},
     "VAULT_CLIENT_TIMEOUT: expected a number of seconds"),
])
def test_from_env_rejects_incomplete_settings(environ: dict[str, str], message: str) -> None:
    with pytest.raises(VaultConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VaultClient.from_env(environ)


# --- KV v2 secrets -----------------------------------------------------------------------------


def test_kv_field_is_picked_by_key(admin: hvac.Client, provider: VaultSecretProvider) -> None:
    path = write_kv(admin, {"username": "backup", "password": "orders-password"})
    secrets: SecretProvider = provider
    assert secrets.resolve(SecretRef(vault=f"secret/data/{path}", key="password")) == "orders-password"


def test_kv_single_field_needs_no_key(admin: hvac.Client, provider: VaultSecretProvider) -> None:
    path = write_kv(admin, {"dsn": "host=db.internal user=backup dbname=orders"})
    assert provider.resolve(SecretRef(vault=f"secret/data/{path}")) == "host=db.internal user=backup dbname=orders"


def test_kv_non_string_field_is_returned_as_json(admin: hvac.Client, provider: VaultSecretProvider) -> None:
    service_account = {"type": "service_account", "project_id": "acme"}
    path = write_kv(admin, {"json": service_account})
    assert json.loads(provider.resolve(SecretRef(vault=f"secret/data/{path}", key="json"))) == service_account


def test_kv_path_without_data_segment_is_on_the_configured_mount(
        admin: hvac.Client, vault_server: VaultServer) -> None:
    mount = unique("kv")
    admin.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    path = write_kv(admin, {"password": "on-another-mount"}, mount=mount)
    client = VaultClient(vault_server.address, token=vault_server.root_token, kv_mount=mount)
    assert VaultSecretProvider(client).resolve(SecretRef(vault=path)) == "on-another-mount"
    assert VaultSecretProvider(client).resolve(SecretRef(vault=f"{mount}/data/{path}")) == "on-another-mount"


def test_missing_kv_secret_names_the_path(provider: VaultSecretProvider, vault_server: VaultServer) -> None:
    with pytest.raises(SecretUnavailable) as raised:
        provider.resolve(SecretRef(vault="secret/data/pg/nowhere", key="password"))
    assert str(raised.value) == (f"secret vault:secret/data/pg/nowhere#password: no secret at Vault at "
                                 f"{vault_server.address} (KV v2 mount secret, path pg/nowhere)")


def test_field_errors_name_fields_never_values(admin: hvac.Client, provider: VaultSecretProvider) -> None:
    path = write_kv(admin, {"username": "backup-user-value", "password": "password-value"})
    with pytest.raises(SecretUnavailable, match=r"has 2 fields \(password, username\); name one with key:") as raised:
        provider.resolve(SecretRef(vault=f"secret/data/{path}"))
    with pytest.raises(SecretUnavailable, match=r"has no field 'pasword' \(fields: password, username\)") as raised_key:
        provider.resolve(SecretRef(vault=f"secret/data/{path}", key="pasword"))
    for message in (str(raised.value), str(raised_key.value)):
        assert path in message
        assert "backup-user-value" not in message and "password-value" not in message


def test_permission_denied_names_the_path_not_the_token(admin: hvac.Client, vault_server: VaultServer) -> None:
    allowed = write_kv(admin, {"password": "allowed-value"})
    forbidden = write_kv(admin, {"password": "forbidden-value"})
    token = token_with_policy(admin, f'path "secret/data/{allowed}" {{ capabilities = ["read"] }}')
    scoped = VaultSecretProvider(VaultClient(vault_server.address, token=token))
    assert scoped.resolve(SecretRef(vault=f"secret/data/{allowed}")) == "allowed-value"
    with pytest.raises(SecretUnavailable, match="permission denied") as raised:
        scoped.resolve(SecretRef(vault=f"secret/data/{forbidden}"))
    assert f"vault:secret/data/{forbidden}" in str(raised.value)
    assert token not in str(raised.value) and "forbidden-value" not in str(raised.value)


def test_namespace_is_sent_with_every_request(admin: hvac.Client, vault_server: VaultServer) -> None:
    namespace = unique("team")
    admin.write_data(f"sys/namespaces/{namespace}", data={})
    in_namespace = hvac.Client(vault_server.address, token=vault_server.root_token, namespace=namespace)
    in_namespace.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    path = write_kv(in_namespace, {"password": "in-the-namespace"})
    client = VaultClient(vault_server.address, token=vault_server.root_token, namespace=namespace)
    assert VaultSecretProvider(client).resolve(SecretRef(vault=f"secret/data/{path}")) == "in-the-namespace"
    with pytest.raises(SecretUnavailable, match="no secret at"):
        VaultSecretProvider(VaultClient(vault_server.address, token=vault_server.root_token)).resolve(
            SecretRef(vault=f"secret/data/{path}"))


def test_unreachable_vault_names_the_address() -> None:
    client = VaultClient("http://127.0.0.1:9", token="unused", connect_timeout=1)
    with pytest.raises(SecretUnavailable,
                       match=r"secret vault:secret/data/pg/x: .*cannot connect to http://127.0.0.1:9"):
        VaultSecretProvider(client).resolve(SecretRef(vault="secret/data/pg/x"))


def test_env_and_file_references_are_served_locally(
        provider: VaultSecretProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_PGPASSWORD", "from-env")
    secret_file = tmp_path / "pgpass"
    secret_file.write_text("from-file\n")
    assert provider.resolve(SecretRef(env="ORDERS_PGPASSWORD")) == "from-env"
    assert provider.resolve(SecretRef(file=secret_file)) == "from-file"


def test_resolve_refuses_dynamic_database_credentials(provider: VaultSecretProvider) -> None:
    with pytest.raises(SecretUnavailable, match="create a new user on every read.*use database_login"):
        provider.resolve(SecretRef(vault="database/creds/orders-backup"))


# --- token auth --------------------------------------------------------------------------------


def test_unknown_token_is_refused_without_showing_it(vault_server: VaultServer) -> None:
    client = VaultClient(vault_server.address, token="not-a-real-token")
    with pytest.raises(SecretUnavailable,
                       match="refused the configured token: it is unknown, revoked or expired") as raised:
        VaultSecretProvider(client).resolve(SecretRef(vault="secret/data/pg/x"))
    assert "not-a-real-token" not in str(raised.value)


def test_token_file_is_read_again_when_the_token_nears_expiry(
        admin: hvac.Client, vault_server: VaultServer, tmp_path: Path) -> None:
    path = write_kv(admin, {"password": "value"})
    policy = f'path "secret/data/{path}" {{ capabilities = ["read"] }}'
    first, second = token_with_policy(admin, policy, ttl="1h"), token_with_policy(admin, policy, ttl="1h")
    token_file = tmp_path / "vault-token"
    token_file.write_text(first + "\n")
    clock = FakeClock()
    client = VaultClient(vault_server.address, token_file=token_file, renew_before=60, clock=clock)
    provider = VaultSecretProvider(client)

    assert provider.resolve(SecretRef(vault=f"secret/data/{path}")) == "value"
    token_file.write_text(second)  # what Vault Agent does as the first token ages
    clock.now += 1800
    provider.resolve(SecretRef(vault=f"secret/data/{path}"))
    assert client.session().token == first, "half the TTL left: no re-login yet"
    clock.now += 1800 - 30
    assert provider.resolve(SecretRef(vault=f"secret/data/{path}")) == "value"
    assert client.session().token == second


def test_token_file_is_read_again_after_the_token_is_revoked(
        admin: hvac.Client, vault_server: VaultServer, tmp_path: Path) -> None:
    path = write_kv(admin, {"password": "value"})
    policy = f'path "secret/data/{path}" {{ capabilities = ["read"] }}'
    first, second = token_with_policy(admin, policy), token_with_policy(admin, policy)
    token_file = tmp_path / "vault-token"
    token_file.write_text(first)
    provider = VaultSecretProvider(VaultClient(vault_server.address, token_file=token_file))
    assert provider.resolve(SecretRef(vault=f"secret/data/{path}")) == "value"

    admin.auth.token.revoke(first)
    token_file.write_text(second)
    assert provider.resolve(SecretRef(vault=f"secret/data/{path}")) == "value"


# --- kubernetes auth ---------------------------------------------------------------------------

SERVICE_ACCOUNT = ("platform", "dagster", "4f1c7a52-sa-uid")


class TokenReviewDouble:
    """The Kubernetes API server's TokenReview endpoint, as OpenBao's kubernetes auth calls it:
    a JWT is authenticated only if a test registered it. Records the JWTs reviewed."""

    def __init__(self) -> None:
        self.valid: set[str] = set()
        self.reviewed: list[str] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                jwt = review["spec"]["token"]
                double.reviewed.append(jwt)
                namespace, name, uid = SERVICE_ACCOUNT
                status = ({"authenticated": True, "user": {"username": f"system:serviceaccount:{namespace}:{name}",
                                                           "uid": uid, "groups": ["system:serviceaccounts"]}}
                          if self.path == "/apis/authentication.k8s.io/v1/tokenreviews" and jwt in double.valid
                          else {"authenticated": False, "error": "invalid bearer token"})
                body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                   "status": status}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class KubernetesAuth:
    mount: str
    role: str
    review: TokenReviewDouble
    signing_key: rsa.RSAPrivateKey

    def service_account_jwt(self, valid: bool = True) -> str:
        """A legacy service-account token for SERVICE_ACCOUNT (OpenBao reads its claims; the
        TokenReview double decides whether it is authentic)."""
        namespace, name, uid = SERVICE_ACCOUNT
        claims = {"iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{namespace}:{name}",
                  "kubernetes.io/serviceaccount/namespace": namespace,
                  "kubernetes.io/serviceaccount/service-account.name": name,
                  "kubernetes.io/serviceaccount/service-account.uid": uid, "jti": uuid.uuid4().hex}
        signing_input = (_b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = self.signing_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        jwt = f"{signing_input}.{_b64url(signature)}"
        if valid:
            self.review.valid.add(jwt)
        return jwt


def _self_signed_ca(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-test-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def kubernetes_auth(admin: hvac.Client) -> Iterator[KubernetesAuth]:
    """A kubernetes auth mount whose API server is the TokenReview double, with a role for
    SERVICE_ACCOUNT allowed to read secret/data/k8s/*."""
    review = TokenReviewDouble()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mount, role = unique("k8s"), unique("backup")
    admin.sys.enable_auth_method("kubernetes", path=mount)
    # OpenBao insists on a CA certificate; it is unused because the double speaks plain HTTP.
    admin.write_data(f"auth/{mount}/config", data={
        "kubernetes_host": review.url, "kubernetes_ca_cert": _self_signed_ca(key), "disable_local_ca_jwt": True})
    policy = unique("k8s-read")
    admin.sys.create_or_update_policy(name=policy, policy='path "secret/data/k8s/*" { capabilities = ["read"] }')
    namespace, name, _ = SERVICE_ACCOUNT
    admin.write_data(f"auth/{mount}/role/{role}", data={
        "bound_service_account_names": name, "bound_service_account_namespaces": namespace,
        "token_policies": policy, "token_ttl": "1h"})
    yield KubernetesAuth(mount, role, review, key)
    review.server.shutdown()
    review.server.server_close()


def test_kubernetes_login_uses_the_service_account_jwt_and_reads_it_again_to_renew(
        admin: hvac.Client, vault_server: VaultServer, kubernetes_auth: KubernetesAuth, tmp_path: Path) -> None:
    admin.secrets.kv.v2.create_or_update_secret(path="k8s/orders", secret={"password": "via-kubernetes"})
    jwt_file = tmp_path / "token"
    first_jwt = kubernetes_auth.service_account_jwt()
    jwt_file.write_text(first_jwt)
    clock = FakeClock()
    client = VaultClient(vault_server.address, auth_method="kubernetes", kubernetes_role=kubernetes_auth.role,
                         kubernetes_mount=kubernetes_auth.mount, kubernetes_jwt_file=jwt_file, clock=clock)
    provider = VaultSecretProvider(client)

    assert provider.resolve(SecretRef(vault="secret/data/k8s/orders")) == "via-kubernetes"
    assert kubernetes_auth.review.reviewed == [first_jwt]

    second_jwt = kubernetes_auth.service_account_jwt()
    jwt_file.write_text(second_jwt)  # the kubelet rotates projected tokens
    clock.now += 3600
    assert provider.resolve(SecretRef(vault="secret/data/k8s/orders")) == "via-kubernetes"
    assert kubernetes_auth.review.reviewed == [first_jwt, second_jwt]


def test_kubernetes_login_refused_names_mount_and_role_not_the_jwt(
        vault_server: VaultServer, kubernetes_auth: KubernetesAuth, tmp_path: Path) -> None:
    jwt = kubernetes_auth.service_account_jwt(valid=False)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    client = VaultClient(vault_server.address, auth_method="kubernetes", kubernetes_role=kubernetes_auth.role,
                         kubernetes_mount=kubernetes_auth.mount, kubernetes_jwt_file=jwt_file)
    with pytest.raises(VaultAuthError, match=f"kubernetes auth \\(mount {kubernetes_auth.mount}, "
                                             f"role {kubernetes_auth.role}\\) failed") as raised:
        client.session()
    assert jwt not in str(raised.value)


def test_kubernetes_login_without_a_service_account_token_says_which_file(
        vault_server: VaultServer, tmp_path: Path) -> None:
    client = VaultClient(vault_server.address, auth_method="kubernetes", kubernetes_role="backup",
                         kubernetes_jwt_file=tmp_path / "absent")
    with pytest.raises(VaultAuthError, match=f"cannot read the service-account token {tmp_path / 'absent'}"):
        client.session()


# --- transit data keys -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def transit_mount(vault_server: VaultServer) -> str:
    vault_server.admin().sys.enable_secrets_engine("transit", path="transit")
    return "transit"


@pytest.fixture
def transit_key(admin: hvac.Client, transit_mount: str) -> str:
    name = unique("backups")
    admin.secrets.transit.create_key(name=name, key_type="aes256-gcm96", mount_point=transit_mount)
    return name


@pytest.fixture
def keys(root_client: VaultClient, transit_key: str) -> VaultTransitKeys:
    return VaultTransitKeys(root_client, key_name=transit_key)


def flip_byte(wrapped: str) -> str:
    prefix, _, body = wrapped.rpartition(":")
    raw = bytearray(base64.b64decode(body))
    raw[len(raw) // 2] ^= 0x01
    return f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"


def test_data_key_unwraps_to_its_plaintext(keys: VaultTransitKeys, transit_key: str) -> None:
    provider: DataKeyProvider = keys
    key = provider.new_data_key()
    assert len(key.plaintext) == 32
    assert key.wrapped.startswith("vault:v1:") and (key.key_name, key.key_version) == (transit_key, 1)
    assert provider.unwrap(key.wrapped) == key.plaintext
    assert keys.new_data_key().plaintext != key.plaintext
    assert base64.b64encode(key.plaintext).decode() not in repr(key)


def test_tampered_wrapped_key_is_refused(keys: VaultTransitKeys) -> None:
    key = keys.new_data_key()
    with pytest.raises(KeyServiceError, match="altered or was not wrapped by this key") as raised:
        keys.unwrap(flip_byte(key.wrapped))
    assert keys.describe() in str(raised.value)
    assert base64.b64encode(key.plaintext).decode() not in str(raised.value)


def test_key_wrapped_by_another_transit_key_is_refused(
        keys: VaultTransitKeys, root_client: VaultClient, admin: hvac.Client) -> None:
    other = unique("other")
    admin.secrets.transit.create_key(name=other)
    foreign = VaultTransitKeys(root_client, key_name=other).new_data_key()
    with pytest.raises(KeyServiceError, match="altered or was not wrapped by this key"):
        keys.unwrap(foreign.wrapped)


def test_malformed_wrapped_key_is_refused_before_asking_vault(keys: VaultTransitKeys) -> None:
    with pytest.raises(KeyServiceError, match=r"not a Vault transit wrapped key \(expected vault:vN:BASE64\)"):
        keys.unwrap("local:v1:AAAA")


def test_rotate_then_rewrap_moves_the_key_to_the_new_version(keys: VaultTransitKeys) -> None:
    key = keys.new_data_key()
    assert keys.rotate() == 2
    rewrapped, version = keys.rewrap(key.wrapped)
    assert version == 2 and rewrapped.startswith("vault:v2:")
    assert keys.unwrap(rewrapped) == key.plaintext
    assert keys.unwrap(key.wrapped) == key.plaintext, "old versions still unwrap until trimmed"
    assert keys.new_data_key().key_version == 2


def test_backup_worker_policy_allows_data_keys_but_not_rotation(
        admin: hvac.Client, vault_server: VaultServer, transit_key: str) -> None:
    policy = "\n".join(f'path "transit/{operation}/{transit_key}" {{ capabilities = ["update"] }}'
                       for operation in ("datakey/plaintext", "decrypt", "rewrap"))
    worker = VaultTransitKeys(VaultClient(vault_server.address, token=token_with_policy(admin, policy)),
                              key_name=transit_key)
    key = worker.new_data_key()
    assert worker.unwrap(worker.rewrap(key.wrapped)[0]) == key.plaintext
    with pytest.raises(KeyServiceError, match="cannot rotate the key: permission denied"):
        worker.rotate()


def test_describe_names_key_and_address(keys: VaultTransitKeys, vault_server: VaultServer, transit_key: str) -> None:
    assert keys.describe() == f"vault transit key {transit_key} at {vault_server.address}"


# --- dynamic database credentials --------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseEngine:
    mount: str

    @property
    def reader_path(self) -> str:
        return f"{self.mount}/creds/shop-reader"


@pytest.fixture(scope="module")
def database_engine(vault_server: VaultServer, source_cluster: LocalCluster, source_db: object) -> DatabaseEngine:
    """The database secrets engine over the source cluster, with a read-only role for backups.

    The cluster trusts 127.0.0.1, so the plugin's password is never checked: the tests prove
    the issued user exists in pg_roles, not that its password works."""
    mount = unique("database")
    postgres_engine_role(vault_server, mount, source_cluster.port, "shop-reader", [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        'GRANT pg_read_all_data TO "{{name}}";'])
    return DatabaseEngine(mount)


def role_exists(cluster: LocalCluster, username: str) -> bool:
    with psycopg.connect(cluster.connection().dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)).fetchone() is not None


def test_dynamic_login_reads_the_database_until_its_lease_is_revoked(
        provider: VaultSecretProvider, database_engine: DatabaseEngine, source_cluster: LocalCluster) -> None:
    with provider.leases():
        username, password, lease = provider.database_login(database_engine.reader_path)
        assert lease is not None and lease.lease_id.startswith(database_engine.reader_path)
        assert lease.duration_seconds == 600 and provider.database.outstanding == (lease,)
        assert role_exists(source_cluster, username)
        with psycopg.connect(host="127.0.0.1", port=source_cluster.port, dbname="shop",
                             user=username, password=password) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (username,)
            assert conn.execute("SELECT count(*) FROM public.customers").fetchone()[0] > 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM public.customers")
    assert not role_exists(source_cluster, username)
    assert provider.database.outstanding == ()


def test_leases_are_revoked_when_the_work_fails(
        provider: VaultSecretProvider, database_engine: DatabaseEngine, source_cluster: LocalCluster) -> None:
    usernames = []
    with pytest.raises(RuntimeError, match="backup failed"), provider.leases():
        usernames = [provider.database_login(database_engine.reader_path).username for _ in range(2)]
        raise RuntimeError("backup failed")
    assert len(set(usernames)) == 2
    assert not any(role_exists(source_cluster, name) for name in usernames)


def test_revoke_all_revokes_every_lease_taken(
        provider: VaultSecretProvider, database_engine: DatabaseEngine, source_cluster: LocalCluster) -> None:
    logins = [provider.database_login(database_engine.reader_path) for _ in range(2)]
    assert all(role_exists(source_cluster, login.username) for login in logins)
    assert {lease.lease_id for lease in provider.revoke_all()} == {login.lease.lease_id for login in logins}
    assert not any(role_exists(source_cluster, login.username) for login in logins)
    assert provider.revoke_all() == []


def test_login_hides_the_password_in_its_repr(provider: VaultSecretProvider, database_engine: DatabaseEngine) -> None:
    with provider.leases():
        login = provider.database_login(database_engine.reader_path)
        assert login.password not in repr(login) and "password=<hidden>" in repr(login)


def test_unknown_database_role_names_the_path(provider: VaultSecretProvider, database_engine: DatabaseEngine) -> None:
    path = f"{database_engine.mount}/creds/no-such-role"
    with pytest.raises(SecretUnavailable, match=f"database login vault:{path}: "):
        provider.database_login(path)
    assert provider.database.outstanding == ()



def test_a_login_outlives_its_default_ttl_while_renewed_up_to_its_roles_max_ttl(
        vault_server: VaultServer, admin: hvac.Client, root_client: VaultClient, source_cluster: LocalCluster,
        source_db: object, caplog: pytest.LogCaptureFixture) -> None:
    """A backup longer than the role's default_ttl keeps its login: the lease is renewed while it
    is outstanding. Three logins taken at once, then 5.5 s of work: renewed (default 2 s, max
    1 min) it is still there and still reads; not renewed, Vault dropped it at 2 s; renewed but
    capped by a 3 s max_ttl, Vault dropped it too, and the renewer said so. Leaving leases() revokes the
    one left, and renewal stops with it."""
    import logging
    import time

    mount = unique("database-renew")
    renewed_path = postgres_engine_role(vault_server, mount, source_cluster.port, "short", [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        'GRANT pg_read_all_data TO "{{name}}";'], default_ttl="2s", max_ttl="1m", more_roles={"capped": ("2s", "3s")})
    # The README's least-privilege policy (Vault's default policy grants renewal only with the
    # lease id in the body, at sys/leases/renew itself, not below it).
    token = token_with_policy(admin, "".join(
        f'path "{mount}/creds/{role}" {{ capabilities = ["read"] }}\n'
        f'path "sys/leases/revoke/{mount}/creds/{role}/*" {{ capabilities = ["update"] }}\n'
        f'path "sys/leases/renew/{mount}/creds/{role}/*" {{ capabilities = ["update"] }}\n'
        for role in ("short", "capped")))
    renewing = VaultDatabaseCredentials(VaultClient(vault_server.address, token=token))
    unrenewed = VaultDatabaseCredentials(root_client, renew=False)
    caplog.set_level(logging.WARNING, logger="platform_orchestration.secrets.vault")
    with renewing.leases():
        kept = renewing.login(renewed_path)
        capped = renewing.login(f"{mount}/creds/capped")
        dropped = unrenewed.login(renewed_path)
        assert kept.lease.duration_seconds == 2 and kept.lease.renewable
        time.sleep(5.5)
        assert role_exists(source_cluster, kept.username)
        with psycopg.connect(host="127.0.0.1", port=source_cluster.port, dbname="shop",
                             user=kept.username, password=kept.password) as conn:
            assert conn.execute("SELECT count(*) FROM public.customers").fetchone()[0] > 0
        assert not role_exists(source_cluster, dropped.username)  # the control: expired at 2 s
        assert not role_exists(source_cluster, capped.username)
        assert any(capped.lease.lease_id in r.getMessage() and "max_ttl" in r.getMessage() for r in caplog.records)
        assert not any(kept.lease.lease_id in r.getMessage() for r in caplog.records)
    assert not role_exists(source_cluster, kept.username)
    assert renewing.outstanding == ()  # the expired lease's revocation succeeds too
    unrenewed.revoke_all()
    deadline = time.monotonic() + 5
    while any(t.name == "vault-lease-renewer" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "vault-lease-renewer" for t in threading.enumerate())


def test_a_lease_that_cannot_be_renewed_is_retried_until_it_runs_out_then_left_alone(
        vault_server: VaultServer, admin: hvac.Client, root_client: VaultClient, source_cluster: LocalCluster,
        source_db: object, caplog: pytest.LogCaptureFixture) -> None:
    """Vault refusing a renewal (here the lease was revoked behind our back) is logged and tried
    again within the time left; once that is gone, the renewer says so and stops."""
    import logging
    import time

    mount = unique("database-gone")
    path = postgres_engine_role(vault_server, mount, source_cluster.port, "brief", [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
        default_ttl="2s", max_ttl="1m")
    caplog.set_level(logging.WARNING, logger="platform_orchestration.secrets.vault")
    credentials = VaultDatabaseCredentials(root_client)
    login = credentials.login(path)
    admin.sys.revoke_lease(login.lease.lease_id)
    deadline = time.monotonic() + 10
    while not any("ran out" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records if login.lease.lease_id in r.getMessage()]
    assert any("could not renew" in m and "trying again" in m for m in messages), messages
    assert any("ran out while it could not be renewed" in m for m in messages), messages
    while any(t.name == "vault-lease-renewer" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "vault-lease-renewer" for t in threading.enumerate())
    assert credentials.outstanding == (login.lease,)  # still to be revoked (Vault answers that it is gone)
    credentials.revoke_all()


def test_backup_worker_policy_can_take_and_revoke_its_own_logins_only(
        admin: hvac.Client, vault_server: VaultServer, database_engine: DatabaseEngine,
        source_cluster: LocalCluster) -> None:
    revocable = token_with_policy(admin, f"""
        path "{database_engine.reader_path}" {{ capabilities = ["read"] }}
        path "sys/leases/revoke/{database_engine.reader_path}/*" {{ capabilities = ["update"] }}""")
    worker = VaultSecretProvider(VaultClient(vault_server.address, token=revocable))
    with worker.leases():
        login = worker.database_login(database_engine.reader_path)
    assert not role_exists(source_cluster, login.username)

    read_only = token_with_policy(admin, f'path "{database_engine.reader_path}" {{ capabilities = ["read"] }}')
    stuck = VaultSecretProvider(VaultClient(vault_server.address, token=read_only))
    login = stuck.database_login(database_engine.reader_path)
    with pytest.raises(LeaseRevocationError, match=f"needs update on sys/leases/revoke/{database_engine.reader_path}/"
                                                   r"\*") as raised:
        stuck.revoke_all()
    assert raised.value.lease_ids == [login.lease.lease_id]
    assert stuck.database.outstanding == (login.lease,), "kept for a retry"
    admin.sys.revoke_lease(login.lease.lease_id)


def test_dagster_secrets_resource_builds_vault_exactly_as_the_cli_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resource's fields override their variables; everything else (token, namespace, CA)
    still comes from the environment, as for `platform-dr`."""
    from platform_orchestration.resources import SecretsResource

    monkeypatch.setenv("VAULT_TOKEN", "t-not-in-config")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    monkeypatch.setenv("VAULT_CACERT", "/etc/ssl/vault-ca.pem")
    secrets, keys = SecretsResource(vault_addr="https://vault.example:8200", vault_transit_key="pg").providers()

    assert isinstance(secrets, VaultSecretProvider) and isinstance(keys, VaultTransitKeys)
    assert (secrets.client.address, secrets.client.namespace, str(secrets.client.ca_cert)) == (
        "https://vault.example:8200", "team-a", "/etc/ssl/vault-ca.pem")
    assert keys.client is secrets.client and keys.key_name == "pg"
