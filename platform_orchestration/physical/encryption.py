"""Encryption at rest of a physical repository and its copies: provider-side only.

barman-cloud does not encrypt client-side; what protects base backups and WAL at rest is the
provider's server-side encryption. On S3 it is asked for on every upload (barman-cloud's
``--encryption AES256|aws:kms`` and ``--sse-kms-key-id``, our store's ServerSideEncryption for
copies) and read back per object (HeadObject), so a store that declares it is checked on a
sample of its newest objects. Azure Storage and GCS encrypt every object at rest with keys they
manage, or with a customer-managed key set on the storage account, encryption scope or bucket:
there it is declared in the fleet file, recorded and reported, not read back per object.
"""

from __future__ import annotations

from dataclasses import dataclass

from platform_orchestration.errors import one_line
from platform_orchestration.physical.archiving import Segment
from platform_orchestration.physical.repository import Repository
from platform_orchestration.storage import ObjectStore, ReportsEncryptionAtRest, StoreError

SAMPLE_OBJECTS = 3


@dataclass(frozen=True)
class StoreEncryption:
    """How one store holding the repository (``role`` repository) or a copy protects it at rest."""

    store: str
    role: str
    provider: str
    declared: str | None
    observed: tuple[str, ...]
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        if self.problem:
            return f"{self.store} ({self.role}): {self.problem}"
        if self.observed:
            return (f"{self.store} ({self.role}): provider-side, {self.declared or 'bucket default'}, verified on "
                    f"{len(self.observed)} object(s) ({', '.join(sorted(set(self.observed)))})")
        if self.declared:
            return f"{self.store} ({self.role}): provider-side, {self.declared} (set on the container/bucket; recorded)"
        return (f"{self.store} ({self.role}): provider-side with provider-managed keys ({self.provider} encrypts "
                "every object at rest; no customer-managed key declared)")


def _sample(store: ObjectStore, repository: Repository) -> list[str]:
    """The newest WAL segment and the newest base backup's objects, up to SAMPLE_OBJECTS."""
    wals = sorted((i.key for i in store.list(repository.wals_prefix)
                   if Segment.parse(i.key.rsplit("/", 1)[-1]) is not None), key=lambda k: k.rsplit("/", 1)[-1])
    base = sorted(i.key for i in store.list(repository.base_prefix))
    newest_backup = base[-1][len(repository.base_prefix):].split("/", 1)[0] if base else None
    in_newest = [k for k in base if newest_backup and k.startswith(f"{repository.base_prefix}{newest_backup}/")]
    return (wals[-1:] + in_newest)[:SAMPLE_OBJECTS]


def _expected(repository: Repository) -> str | None:
    if repository.server_side_encryption is not None:
        algorithm, key_id = repository.server_side_encryption
        return f"S3 SSE {algorithm}" + (f" key {key_id}" if key_id else "")
    if repository.customer_managed_key:
        return f"customer-managed key {repository.customer_managed_key}"
    return None


def observe_encryption(store: ObjectStore, repository: Repository, role: str) -> StoreEncryption:
    """How ``store`` (the repository's, or a copy's with ``repository`` its copy) encrypts it."""
    declared = _expected(repository)
    provider = {"aws-s3": "S3", "azure-blob-storage": "Azure Storage", "google-cloud-storage": "GCS"}.get(
        repository.provider, repository.provider)
    if not isinstance(store, ReportsEncryptionAtRest):
        return StoreEncryption(store.name, role, provider, declared, ())
    try:
        sample = _sample(store, repository)
        observed = [(key, *store.object_encryption(key)) for key in sample]
    except StoreError as exc:
        return StoreEncryption(store.name, role, provider, declared, (), f"cannot be read ({one_line(exc)})")
    if not observed:
        return StoreEncryption(store.name, role, provider, declared, (),
                               None if declared else "holds no object yet and declares no server-side encryption")
    unencrypted = [key for key, algorithm, _ in observed if not algorithm]
    if unencrypted:
        return StoreEncryption(store.name, role, provider, declared, (),
                               f"{len(unencrypted)} of {len(observed)} sampled object(s) not encrypted at rest "
                               f"(e.g. {unencrypted[0]}); declare server_side_encryption on the store")
    wanted = repository.server_side_encryption
    if wanted is not None:
        algorithm, key_id = wanted
        wrong = [key for key, got, got_key in observed
                 if got != algorithm or (key_id and got_key and not got_key.endswith(key_id))]
        if wrong:
            return StoreEncryption(store.name, role, provider, declared, (),
                                   f"{len(wrong)} sampled object(s) not encrypted as declared ({declared}), "
                                   f"e.g. {wrong[0]}")
    return StoreEncryption(store.name, role, provider, declared,
                           tuple(algorithm + (f" key {key}" if key else "") for _, algorithm, key in observed))
