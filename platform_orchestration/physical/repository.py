"""A cluster's physical repository as barman-cloud sees it: a cloud provider, a URL, a server
name, and the environment that carries the credentials.

Built from the fleet's cluster and store entries with already-resolved credentials (plain
values, so the tools' callers never see a fleet spec or a secret provider). The layout is
barman-cloud's own: ``<url>/<server_name>/base/<backup id>/...`` and
``<url>/<server_name>/wals/<timeline+log>/<segment>[.<compression>]``, which is what a
CloudNativePG ``barmanObjectStore`` with ``destinationPath: <url>`` and ``serverName:
<server_name>`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from platform_orchestration.errors import InvalidDeclaration
from platform_orchestration.fleet.model import Cluster, PhysicalPolicy
from platform_orchestration.fleet.model import Store as StoreSpec

PROVIDERS = {"s3": "aws-s3", "azure": "azure-blob-storage", "gcs": "google-cloud-storage"}


@dataclass(frozen=True)
class Repository:
    """Where one server's base backups and WAL live, and how to reach them.

    ``key_prefix`` is the repository's place inside the store as our own
    :class:`~platform_orchestration.storage.ObjectStore` for that store sees it (below the store's
    ``prefix``): ``<path>/<server_name>/``. ``environment`` holds credentials: never log it."""

    cluster: str
    store: str
    provider: str
    url: str
    server_name: str
    key_prefix: str
    endpoint_url: str | None = None
    server_endpoint_url: str | None = None
    wal_compression: str = "zstd"
    backup_compression: str = "lz4"
    server_credentials: str = "store"
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    policy: PhysicalPolicy | None = None
    # S3 server-side encryption barman-cloud asks for on every upload: (algorithm, KMS key id).
    server_side_encryption: tuple[str, str | None] | None = None
    # Where the key protecting an Azure/GCS store is set (on the container or bucket), as declared.
    customer_managed_key: str | None = None
    server_environment: Mapping[str, str] | None = field(default=None, repr=False)

    def environment_for(self, *, for_server: bool = False) -> Mapping[str, str]:
        """The credentials (and Azure/GCS endpoints) for our own tools, or for the server's
        archive and restore commands (which may reach the store elsewhere)."""
        return self.server_environment if for_server and self.server_environment is not None else self.environment

    def describe(self) -> str:
        return f"{self.url}/{self.server_name} (store {self.store})"

    def connection_options(self, *, for_server: bool = False) -> list[str]:
        """The provider and endpoint options every barman-cloud tool takes."""
        options = ["--cloud-provider", self.provider]
        endpoint = (self.server_endpoint_url or self.endpoint_url) if for_server else self.endpoint_url
        if endpoint and self.provider == "aws-s3":
            options += ["--endpoint-url", endpoint]
        return options

    def encryption_options(self) -> list[str]:
        """barman-cloud-backup's and -wal-archive's S3 server-side encryption flags (none elsewhere:
        Azure and GCS keys are set on the container or bucket)."""
        if self.server_side_encryption is None or self.provider != "aws-s3":
            return []
        algorithm, key_id = self.server_side_encryption
        return ["--encryption", algorithm, *(["--sse-kms-key-id", key_id] if key_id else [])]

    @property
    def wals_prefix(self) -> str:
        return f"{self.key_prefix}wals/"

    @property
    def base_prefix(self) -> str:
        return f"{self.key_prefix}base/"


AZURE_BLOB_DOMAIN = ".blob.core.windows.net"


def _azure_emulated(account_url: str) -> bool:
    """barman-cloud's own test: an account URL outside ``*.blob.core.windows.net`` is "emulated
    storage" (``http://host:port/<account>/<container>/...``), which it reaches only through
    AZURE_STORAGE_CONNECTION_STRING (azure_blob_storage.py, AzureCloudInterface.__init__)."""
    return not (urlsplit(account_url).hostname or "").endswith(AZURE_BLOB_DOMAIN)


def _azure_emulator_connection_string(spec: StoreSpec, credentials: Mapping[str, str], endpoint: str) -> str:
    if credentials.get("connection_string"):
        return credentials["connection_string"]
    account = urlsplit(spec.account_url).path.strip("/").split("/")[0]
    if credentials.get("account_key"):
        scheme = urlsplit(endpoint).scheme or "https"
        return (f"DefaultEndpointsProtocol={scheme};AccountName={account};"
                f"AccountKey={credentials['account_key']};BlobEndpoint={endpoint};")
    if credentials.get("sas_token"):
        return f"BlobEndpoint={endpoint};SharedAccessSignature={credentials['sas_token'].lstrip('?')}"
    raise InvalidDeclaration(
        f"store {spec.name}: account_url {spec.account_url} is not an {AZURE_BLOB_DOMAIN.lstrip('.')} account, "
        "which barman-cloud reaches only with a connection string: give the store credentials "
        "(account_key, sas_token or connection_string)")


def _credential_environment(spec: StoreSpec, credentials: Mapping[str, str],
                            endpoint: str | None = None) -> dict[str, str]:
    """The environment variables barman-cloud's SDKs (boto3, azure-storage-blob,
    google-cloud-storage) read the store's credentials (and, for Azure and GCS, where the
    store is: ``endpoint``) from.

    - Azure: ``AZURE_STORAGE_KEY`` / ``AZURE_STORAGE_SAS_TOKEN`` /
      ``AZURE_STORAGE_CONNECTION_STRING`` for an ``*.blob.core.windows.net`` account; any
      other account URL (Azurite, an emulator) only through a connection string, which is
      built from the key or SAS token with ``BlobEndpoint`` = the account URL.
    - GCS: a service-account key (written to a file by whoever runs the tool, see
      settings.py); a custom endpoint goes to ``STORAGE_EMULATOR_HOST`` when there is no key
      (google-cloud-storage then sends anonymous requests, as our own store does against an
      emulator) and to ``API_ENDPOINT_OVERRIDE`` with a key (authenticated, e.g. a private
      endpoint). barman-cloud has no endpoint option for either cloud.
    """
    env: dict[str, str] = {}
    if spec.kind == "s3":
        names = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
                 "session_token": "AWS_SESSION_TOKEN"}
        env.update({names[k]: v for k, v in credentials.items() if k in names})
        env["AWS_DEFAULT_REGION"] = spec.region or "us-east-1"
    elif spec.kind == "azure":
        if _azure_emulated(spec.account_url):
            account_url = endpoint or spec.account_url
            env["AZURE_STORAGE_CONNECTION_STRING"] = _azure_emulator_connection_string(spec, credentials, account_url)
        else:
            names = {"account_key": "AZURE_STORAGE_KEY", "sas_token": "AZURE_STORAGE_SAS_TOKEN",
                     "connection_string": "AZURE_STORAGE_CONNECTION_STRING"}
            env.update({names[k]: v for k, v in credentials.items() if k in names})
    elif spec.kind == "gcs":
        key = credentials.get("service_account_json")
        if key:
            env["PLATFORM_GCS_SERVICE_ACCOUNT_JSON"] = key
        gcs_endpoint = endpoint or spec.endpoint_url
        if gcs_endpoint:
            env["API_ENDPOINT_OVERRIDE" if key else "STORAGE_EMULATOR_HOST"] = gcs_endpoint.rstrip("/")
        if spec.project:
            env["GOOGLE_CLOUD_PROJECT"] = spec.project
    return env


def repository_url(spec: StoreSpec, path: str) -> str:
    """barman-cloud's destination URL for ``path`` inside the store ``spec``."""
    parts = [p for p in (getattr(spec, "prefix", ""), path) if p]
    if spec.kind == "s3":
        base = f"s3://{spec.bucket}"
    elif spec.kind == "gcs":
        base = f"gs://{spec.bucket}"
    elif spec.kind == "azure":
        # account_url is https://<account>.blob.core.windows.net (or an emulator's http://host:port/<account>)
        base = f"{spec.account_url.rstrip('/')}/{spec.container}"
    else:
        raise InvalidDeclaration(f"store {spec.name}: a physical repository needs an s3, azure or gcs store, "
                                 f"not {spec.kind} (barman-cloud writes to object stores only)")
    return "/".join([base, *parts])


def repository_for(cluster: Cluster, spec: StoreSpec, credentials: Mapping[str, str],
                   policy: PhysicalPolicy | None = None, *, copy: bool = False) -> Repository:
    """The repository ``cluster``'s ``physical`` section declares, in store ``spec``; with ``copy``,
    its copy in another store ``spec`` (the same layout, ``path`` and ``server_name``, so barman-cloud
    and CloudNativePG read it as they read the repository)."""
    physical = cluster.physical
    if physical is None:
        raise InvalidDeclaration(f"cluster {cluster.name} has no physical section: it has no physical repository")
    if not copy and spec.name != physical.store:
        raise ValueError(f"cluster {cluster.name}: repository store is {physical.store}, not {spec.name}")
    if copy and spec.name == physical.store:
        raise ValueError(f"cluster {cluster.name}: {spec.name} holds the repository itself, not a copy")
    server_name = cluster.physical_server_name or cluster.name
    endpoint = getattr(spec, "endpoint_url", None) if spec.kind == "s3" else None
    environment = _credential_environment(spec, credentials)
    # The server reaches the store at physical.endpoint_url when it differs (S3: an option of
    # every tool; Azure and GCS: in the environment the archive command loads).
    server_environment = (_credential_environment(spec, credentials, physical.endpoint_url)
                          if physical.endpoint_url and spec.kind != "s3" else None)
    return Repository(
        cluster=cluster.name, store=spec.name, provider=PROVIDERS.get(spec.kind, spec.kind),
        url=repository_url(spec, physical.path), server_name=server_name,
        key_prefix=f"{physical.path}/{server_name}/" if physical.path else f"{server_name}/",
        endpoint_url=endpoint, server_endpoint_url=physical.endpoint_url,
        wal_compression=physical.wal_compression, backup_compression=physical.backup_compression,
        server_credentials=physical.server_credentials,
        environment=environment, server_environment=server_environment, policy=policy,
        server_side_encryption=_s3_encryption(spec), customer_managed_key=_customer_managed_key(spec),
    )


def _s3_encryption(spec: StoreSpec) -> tuple[str, str | None] | None:
    sse = getattr(spec, "server_side_encryption", None)
    return (sse.algorithm, sse.kms_key_id) if spec.kind == "s3" and sse is not None else None


def _customer_managed_key(spec: StoreSpec) -> str | None:
    sse = getattr(spec, "server_side_encryption", None)
    return sse.customer_managed_key if spec.kind in ("azure", "gcs") and sse is not None else None
