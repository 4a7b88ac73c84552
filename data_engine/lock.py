"""One writer per output folder: ``with folder_lock(out, "data engine"): ...``.

Two runs writing the same folder corrupt each other's work (a unit committed by one is moved
away by the other). The lock is an exclusive ``flock`` on ``<folder>/.ocrflow.lock``, held for
the run; the file records who holds it (pid, host, start time, command) so that a refused run
can name the other process. The kernel drops the lock when its holder exits, however it exits
(kill -9, crash), so a stale lock file is taken over with no manual step; its old content is
only a record. On NFS, Linux maps ``flock`` to the server's byte-range locks, which hold
across hosts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".ocrflow.lock"


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (its details are not written yet)"
    return (f"{info.get('what', 'a run')} pid {info.get('pid')} on host {info.get('host')}, "
            f"started {info.get('started')} ({info.get('command', '?')})")


def _acquire(path: Path) -> int:
    """Open + exclusively lock ``path``; the descriptor, or FolderInUseError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{path.parent} is in use by {_holder_text(path)}; wait for it to "
                                   f"finish or choose another output folder") from None
        # The holder we waited on may have removed the file between our open and our lock:
        # then we hold a lock on a name nobody sees; start over on the current file.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (the folder is created); refuses with
    FolderInUseError, naming the other process, while another live process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = _acquire(path)
    try:
        info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # before the unlock: a waiting process re-checks the name
        finally:
            os.close(fd)


__all__ = ["LOCK_FILE", "FolderInUseError", "folder_lock"]
