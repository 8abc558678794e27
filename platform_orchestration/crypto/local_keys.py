"""The embedded default key service: a key-encryption key (KEK) in a local file.

For the demo and single-machine use; production uses Vault transit (vault_transit.py, beside this file),
behind the same `DataKeyProvider` protocol. The KEK file lives outside the repository
(default `$XDG_CONFIG_HOME/platform-orchestration/demo-kek`, i.e. `~/.config/...`), is
created mode 0600 on first use, and keeps every version of the key: the newest wraps new
data keys, older ones still unwrap what they wrapped, so rotation never strands a backup.

A wrapped data key reads `<key name>:v<version>:<base64 of nonce + AES-256-GCM ciphertext>`;
key name and version are authenticated as associated data, so editing any part of the
string makes unwrapping fail.

Whoever holds the KEK file can read every backup wrapped under it: copy it to where
restores must be possible (a disaster-recovery site) as carefully as a database password.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from platform_orchestration.crypto import DataKey, KeyServiceError

KEK_BYTES = 32
DATA_KEY_BYTES = 32
_NONCE_BYTES = 12
_FILE_FORMAT = "platform-orchestration/local-kek/v1"
_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_WRAPPED = re.compile(r"(?P<name>[^:]+):v(?P<version>[0-9]{1,9}):(?P<body>[A-Za-z0-9+/=]+)")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_key_file() -> Path:
    """`$PLATFORM_LOCAL_KEK` if set, else `$XDG_CONFIG_HOME/platform-orchestration/demo-kek`
    (`~/.config/...` without it)."""
    configured = os.environ.get("PLATFORM_LOCAL_KEK", "").strip()
    if configured:
        return Path(configured).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "platform-orchestration" / "demo-kek"


def _git_work_tree_holding(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / ".git").exists():
            return parent
    return None


class LocalDataKeyProvider:
    """Data keys wrapped with AES-256-GCM under a versioned KEK kept in a local file.

    The file is read on every call, so a rotation made by another process (the CLI while
    Dagster runs) is seen at once; writes (creation, rotation) hold an exclusive lock and
    replace the file atomically, so no version is ever lost to a concurrent rotation."""

    def __init__(self, path: Path | str | None = None, *, key_name: str = "local") -> None:
        """Use the KEK file at `path` (default: `default_key_file()`), creating it with one
        fresh version if it does not exist. Raises KeyServiceError if the path lies inside a
        git work tree, or the file is readable by group or others, or unreadable."""
        if not _KEY_NAME.fullmatch(key_name):
            raise ValueError(f"key name {key_name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        self.path = Path(path).expanduser().absolute() if path is not None else default_key_file()
        self.key_name = key_name
        repo = _git_work_tree_holding(self.path)
        if repo is not None:
            raise KeyServiceError(f"refusing key file {self.path}: it is inside the git work tree "
                                  f"{repo}; keep key-encryption keys outside any repository")
        if not self.path.exists():
            with self._locked():
                if not self.path.exists():
                    self._write({1: os.urandom(KEK_BYTES)}, {1: _now()})
        self._load()  # fail now, not at the first backup, on a bad file

    # --- DataKeyProvider ---------------------------------------------------------------

    def new_data_key(self) -> DataKey:
        """A fresh random 32-byte data key, wrapped under the newest KEK version."""
        versions = self._load()
        version = max(versions)
        plaintext = os.urandom(DATA_KEY_BYTES)
        return DataKey(plaintext=plaintext, wrapped=self._wrap(plaintext, version, versions[version]),
                       key_name=self.key_name, key_version=version)

    def unwrap(self, wrapped: str) -> bytes:
        """The data key inside `wrapped`; raises KeyServiceError if it is malformed, names
        another key or a version the file does not hold, or fails authentication."""
        version, body = self._parse(wrapped)
        versions = self._load()
        if version not in versions:
            raise KeyServiceError(f"key {self.key_name} in {self.path} has no version {version} "
                                  f"(it holds {', '.join(f'v{v}' for v in sorted(versions))})")
        nonce, ciphertext = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
        try:
            plaintext = AESGCM(versions[version]).decrypt(nonce, ciphertext, self._aad(version))
        except InvalidTag:
            raise KeyServiceError(f"wrapped data key (key {self.key_name} v{version}) failed "
                                  f"authentication under {self.path}: it was modified, or wrapped "
                                  "by another key file") from None
        if len(plaintext) != DATA_KEY_BYTES:
            raise KeyServiceError(f"wrapped data key (key {self.key_name} v{version}) holds "
                                  f"{len(plaintext)} bytes, expected {DATA_KEY_BYTES}")
        return plaintext

    def rewrap(self, wrapped: str) -> tuple[str, int]:
        """The same data key wrapped under the newest KEK version: (wrapped, version)."""
        plaintext = self.unwrap(wrapped)
        versions = self._load()
        version = max(versions)
        return self._wrap(plaintext, version, versions[version]), version

    def describe(self) -> str:
        return f"local key file {self.path} (key {self.key_name})"

    # --- Rotation ------------------------------------------------------------------------

    def rotate(self) -> int:
        """Add a fresh KEK version and make it the newest (used for wrapping from now on);
        every older version is kept for unwrapping. Returns the new version number."""
        with self._locked():
            versions = self._load()
            created = self._created_at()
            new = max(versions) + 1
            versions[new], created[new] = os.urandom(KEK_BYTES), _now()
            self._write(versions, created)
        return new

    def current_version(self) -> int:
        """The KEK version new data keys are wrapped under."""
        return max(self._load())

    # --- The file -----------------------------------------------------------------------------

    def _aad(self, version: int) -> bytes:
        return f"platform-orchestration/local-kek|{self.key_name}|v{version}".encode()

    def _wrap(self, plaintext: bytes, version: int, kek: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        body = nonce + AESGCM(kek).encrypt(nonce, plaintext, self._aad(version))
        return f"{self.key_name}:v{version}:{base64.b64encode(body).decode()}"

    def _parse(self, wrapped: str) -> tuple[int, bytes]:
        match = _WRAPPED.fullmatch(wrapped)
        if match is None:
            raise KeyServiceError(f"not a wrapped data key of a local key file "
                                  f"(expected {self.key_name}:v<version>:<base64>)")
        if match["name"] != self.key_name:
            raise KeyServiceError(f"data key is wrapped under key {match['name']!r}, but {self.path} "
                                  f"holds key {self.key_name!r}")
        try:
            body = base64.b64decode(match["body"], validate=True)
        except binascii.Error:
            raise KeyServiceError(f"wrapped data key (key {self.key_name}) is not valid base64") from None
        if len(body) <= _NONCE_BYTES:
            raise KeyServiceError(f"wrapped data key (key {self.key_name}) is too short")
        return int(match["version"]), body

    def _load(self) -> dict[int, bytes]:
        """Every version's KEK, by version number."""
        try:
            info = self.path.stat()
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyServiceError(f"key file {self.path} is accessible to group or others "
                                      f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
            document = json.loads(self.path.read_bytes())
            if document.get("format") != _FILE_FORMAT:
                raise ValueError(f"format is not {_FILE_FORMAT}")
            if document.get("key_name") != self.key_name:
                raise KeyServiceError(f"key file {self.path} holds key {document.get('key_name')!r}, "
                                      f"not {self.key_name!r}")
            versions = {int(v["version"]): base64.b64decode(v["key"], validate=True)
                        for v in document["versions"]}
        except KeyServiceError:
            raise
        except FileNotFoundError:
            raise KeyServiceError(f"key file {self.path} does not exist (any more)") from None
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            # The exception's text could quote the file: name the file and the kind of fault only.
            raise KeyServiceError(f"key file {self.path} is unreadable ({type(exc).__name__})") from None
        if not versions or any(len(k) != KEK_BYTES for k in versions.values()):
            raise KeyServiceError(f"key file {self.path} holds no usable key versions")
        return versions

    def _write(self, versions: dict[int, bytes], created: dict[int, str | None]) -> None:
        """Replace the file atomically (callers hold the lock) with `versions`."""
        entries = [{"version": v, "created_at": created.get(v), "key": base64.b64encode(versions[v]).decode()}
                   for v in sorted(versions)]
        document = {"format": _FILE_FORMAT, "key_name": self.key_name, "versions": entries}
        partial = self.path.with_name(f".{self.path.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover partial file
            os.write(fd, (json.dumps(document, indent=2) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _created_at(self) -> dict[int, str | None]:
        try:
            document = json.loads(self.path.read_bytes())
            return {int(v["version"]): v.get("created_at") for v in document["versions"]}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
