"""A store that fails in the middle of a backup costs that store's copy, never the backup."""

from __future__ import annotations

from platform_orchestration.backups.catalog import list_backups
from platform_orchestration.backups.copy import ensure_copies
from platform_orchestration.storage import LocalObjectStore, StoreError


class DiskFullAfter(LocalObjectStore):
    """A real local store whose writes fail once `limit` bytes were written: a disk filling
    up, or a mount going away, mid-backup."""

    def __init__(self, name, root, limit: int) -> None:
        super().__init__(name, root)
        self.limit = limit
        self.failing = True

    def open_writer(self, key):
        writer = super().open_writer(key)
        store = self
        written = 0
        real_write = writer.write

        def write(chunk: bytes) -> None:
            nonlocal written
            written += len(chunk)
            if store.failing and written > store.limit:
                raise StoreError(f"store {store.name}: writing {key} failed: [Errno 28] No space left on device")
            real_write(chunk)

        writer.write = write
        return writer


def test_a_store_failing_mid_stream_is_reported_and_repaired_later(backup, tmp_path):
    healthy = [LocalObjectStore("aws", tmp_path / "aws"), LocalObjectStore("gcp", tmp_path / "gcp")]
    failing = DiskFullAfter("azure", tmp_path / "azure", limit=64 * 1024)

    outcome = backup([healthy[0], failing, healthy[1]])

    assert outcome.stored_in == ("aws", "gcp")
    assert "azure" in outcome.failed_stores and "No space left" in outcome.failed_stores["azure"]
    assert list_backups(failing) == []
    assert [info.key for info in failing.list()] == []  # not even an invisible partial file
    assert not list((tmp_path / "azure").rglob(".partial-*"))

    failing.failing = False  # the disk was repaired
    report = ensure_copies(outcome.manifest.database, [healthy[0], failing, healthy[1]])

    assert report.copied == ("azure",)
    assert [b.backup_id for b in list_backups(failing)] == [outcome.manifest.backup_id]
