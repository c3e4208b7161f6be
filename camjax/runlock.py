"""One run owns its workdir: an OS lock on DIR/run.lock, held for as long as the trainer runs.

A requeued cluster job whose first instance still runs would otherwise train twice into one
DIR: both write orbax steps into DIR/checkpoints, and one calls the other's half-written save
unreadable and moves it aside. The lock is `fcntl.flock` on an open file, not the file's
existence: the kernel drops it when its holder exits, however it exits (SIGKILL included), so a
killed run never blocks its own restart. The file keeps the holder's host, pid and start time
for the refusal message; it is not removed on release (removing a lock file races with the
next run opening it).

flock is honoured across hosts on local disks and on NFS (Linux emulates it with POSIX byte-range
locks there); on file systems without locking, taking the lock fails with an error naming DIR.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

LOCK_FILE = "run.lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusyError(self.busy_message()) from None
            raise OSError(
                e.errno, f"cannot lock {self.path} ({e.strerror}): does this file system support flock?"
            ) from e
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def busy_message(self) -> str:
        """The refusal, naming the holder recorded in the lock file (readable without the lock)."""
        return (
            f"{os.path.dirname(self.path)} is in use by another run ({_read_holder(self.path)}; lock: "
            f"{self.path}): wait for it to finish or stop it, or use another --workdir"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read_holder(path: str) -> str:
    try:
        with open(path) as f:
            holder = json.loads(f.read() or "{}")
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
