"""One writer per state file: an exclusive lock held beside it while an exporter runs.

SQLite's own locking serialises two writers but lets both go on: two exporters on one state
file each fold the other's rows into sums it did not compute, and both expose wrong totals
without a word. So the exporter takes `flock(LOCK_EX | LOCK_NB)` on `<state_file>.lock` at
start, holds it until it stops, and a second one is refused with one line naming the holder.
Readers (`export`, `backfill`) take no lock: a reader never changes the sums.

The lock file is never deleted (deleting it would let a third process lock a new inode while
the first still holds the old one). The kernel drops the lock when its holder dies, kill -9
included, so a crash never leaves the file locked.
"""

from __future__ import annotations

import fcntl
import logging
import os

from exporter.ledger import StateFileError

log = logging.getLogger(__name__)


class StateLock:
    """The exclusive lock on `<state_file>.lock`; `acquire` raises StateFileError when held."""

    def __init__(self, state_file: str) -> None:
        self.state_file = state_file
        self.path = state_file + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # a read-only directory: the ledger will say what is wrong
            log.warning(
                "state file %s: cannot create its lock file %s (%s); a second exporter on "
                "the same file would not be refused",
                self.state_file,
                self.path,
                exc.strerror,
            )
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StateFileError(
                f"state file {self.state_file} is in use by another exporter "
                f"({holder or 'its pid unknown'}; lock {self.path}): give each exporter its "
                "own state_file, since two writers on one file expose wrong totals"
            ) from None
        self._fd = fd
        try:  # the holder's pid, for the refusal's message; the lock holds without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the ledger says what to do about it
            log.debug("cannot write the pid into %s: %s", self.path, exc.strerror)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
