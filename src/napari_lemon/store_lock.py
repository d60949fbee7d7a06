"""An exclusive lock beside a results store, so that only one process writes it.

The lock is a small JSON file ``<store>.lock`` (pid, host, time) created with
``O_CREAT | O_EXCL``: creating it either succeeds for exactly one process or
fails because another holds it. A lock left by a process that no longer runs on
this host is taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from pathlib import Path

from .store import StoreError, now_iso

logger = logging.getLogger(__name__)

# an unreadable lock (its writer died between creating and filling it) this old is stale
UNREADABLE_STALE_S = 30.0


def lock_path_of(target: str | Path) -> Path:
    """The lock file of the store at ``target``: ``<name>.lock`` beside it."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


def _pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(lock: Path) -> dict | None:
    """The lock's content, or None when it cannot be read."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict | None, lock: Path) -> bool:
    """Whether the lock's holder is known to be gone."""
    if holder is None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > UNREADABLE_STALE_S
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not _pid_alive(pid)


class StoreLock:
    """The held lock of one store; :meth:`release` removes it."""

    def __init__(self, lock: Path, target: Path):
        self.lock = lock
        self.target = target
        self.held = True

    @classmethod
    def acquire(cls, target: str | Path) -> StoreLock:
        """Take the lock of the store at ``target``.

        Raises
        ------
        StoreError
            When another live process holds it; names the store and the pid.
        """
        target = Path(target)
        lock = lock_path_of(target)
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                cls._take_over_or_refuse(lock, target)
                continue
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "at": now_iso()}
            with os.fdopen(fd, "w") as fh:
                json.dump(holder, fh)
            logger.debug("locked %s", target)
            return cls(lock, target)
        raise StoreError(
            f"could not lock {target}: {lock} keeps reappearing; another process "
            "is opening the same store. Run one command per output at a time"
        )

    @staticmethod
    def _take_over_or_refuse(lock: Path, target: Path) -> None:
        """Remove a stale lock with a warning, or raise for a live holder."""
        holder = _read_holder(lock)
        if not _is_stale(holder, lock):
            who = (
                "an unknown process"
                if holder is None
                else (
                    f"pid {holder.get('pid')} on host {holder.get('host')!r} since "
                    f"{holder.get('at')}"
                )
            )
            raise StoreError(
                f"{target} is locked by {who} (lock file {lock}); another process "
                "is writing it. Wait for it to finish or use another --out; if "
                f"that process no longer runs, delete {lock}"
            )
        # NOTE: two processes taking over one stale lock in the same instant
        # could have the second unlink the first's fresh lock; the window is
        # between reading and unlinking it, microseconds, and accepted here.
        warnings.warn(
            f"taking over the stale lock {lock} of {target} (left by "
            f"{holder or 'an unreadable lock file'}; that process no longer runs)",
            stacklevel=4,
        )
        lock.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file (idempotent)."""
        if self.held:
            self.lock.unlink(missing_ok=True)
            self.held = False
            logger.debug("unlocked %s", self.target)
