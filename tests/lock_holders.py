"""Test support for the per-database lock: another process holding it, and a backup held
open mid-dump in a thread, so that a second operation meets a lock that is really held."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platform_orchestration.backups.take import BackupOutcome
from platform_orchestration.postgres import PgConnection
from platform_orchestration.protection import FleetProtection

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

_HOLDER = """\
import sys, time
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.locks import DatabaseLock
lock = DatabaseLock(PgConnection(sys.argv[1]), sys.argv[2], sys.argv[3])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@contextmanager
def lock_held_by_another_process(connection: PgConnection, database: str,
                                 operation: str = "backup") -> Iterator[subprocess.Popen[str]]:
    """A separate Python process holding `database`'s lock, as a backup on another machine
    would, until the block ends; then it is killed with SIGKILL, as a crashed holder is."""
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, connection.dsn, database, operation],
                               cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


class BackupHeldMidDump:
    """``with BackupHeldMidDump(protection, "shop") as first:`` starts a backup in a thread and
    returns once it is dumping (holding the database's lock); it stays there until
    ``first.finish()`` (or the end of the block), which returns its outcome."""

    def __init__(self, protection: FleetProtection, database: str) -> None:
        self._protection = protection
        self._database = database
        self._dumping = threading.Event()
        self._go_on = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"held-backup-{database}")
        self.outcome: BackupOutcome | None = None
        self.error: BaseException | None = None

    def _progress(self, stage: str, done_bytes: int) -> None:
        if stage == "dump" and not self._dumping.is_set():
            self._dumping.set()
            self._go_on.wait(60)

    def _run(self) -> None:
        try:
            self.outcome = self._protection.backup(self._database, self._progress)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self._dumping.set()

    def __enter__(self) -> BackupHeldMidDump:
        self._thread.start()
        assert self._dumping.wait(60), "the backup never started dumping"
        if self.error is not None:
            raise self.error
        return self

    def finish(self) -> BackupOutcome:
        self._go_on.set()
        self._thread.join(120)
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __exit__(self, *exc: object) -> None:
        self._go_on.set()
        self._thread.join(120)
