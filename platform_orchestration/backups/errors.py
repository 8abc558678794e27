"""Errors about stored backups that several backup modules raise and their callers treat alike."""

from __future__ import annotations

from platform_orchestration.errors import PlatformError


class BackupCorrupt(PlatformError):
    """A stored backup does not match its manifest; nothing may be restored from it."""


class BackupKeyUnavailable(BackupCorrupt):
    """An encrypted backup's data key cannot be had: no key provider was given, or the key
    service could not unwrap it (a modified wrapped key, a missing key version, an outage).

    The stored bytes may be intact, but nothing can be restored from them here; it derives
    from BackupCorrupt so every caller that refuses an unreadable backup (restore, verify,
    drills recording a failure, the CLI's one-line errors) treats it the same way."""
