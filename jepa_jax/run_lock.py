"""One trainer per workdir: a lock file that names its holder, taken before the run writes anything.

Two runs on one workdir corrupt each other without an error: both write the same step numbers, one's max_to_keep
deletes the other's checkpoints, both append to the same CSV. WORKDIR/trainer.lock holds the holder's host, pid,
start time and command, and an exclusive flock(2) on it lives exactly as long as the holder's process: the kernel
drops it when the process dies, however it dies. So:
  - a live holder (on this host, or on another host of a file system whose locks reach across hosts, as NFS's
    do) makes the second run refuse with WorkdirLockedError naming it;
  - a lock file left by a run that died (kill -9, a crash, a lost VM) has no flock on it: the new run takes it
    over and warns, naming the run that left it.
On a file system without flock (some FUSE mounts) the file alone decides: a holder on this host whose pid is gone
is stale; a holder on another host is trusted to be alive (remove the file by hand if it is not).
Object stores (gs://) have no locks: there the run logs that it is not locked (docs/faults.md).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Optional

from absl import logging

from input_pipeline import storage

LOCK_NAME = "trainer.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
          f" (command: {holder.get('command', '?')})")


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (TypeError, ValueError):
    return True  # unknown: assume alive
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


class WorkdirLock:
  """Held from acquire() to release(); a context manager."""

  def __init__(self, workdir):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: Optional[int] = None

  def _read_holder(self) -> dict:
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return {}
    try:
      holder = json.loads(text) if text.strip() else {}
    except ValueError:
      return {"host": "?", "pid": "?", "started": "?", "command": f"unreadable lock file: {text[:80]!r}"}
    return holder if isinstance(holder, dict) else {}

  def acquire(self) -> "WorkdirLock":
    if storage.is_remote(self.workdir):
      logging.warning("%s is on an object store, where no lock can be taken: make sure no other run uses it.",
                      self.workdir)
      return self
    os.makedirs(self.workdir, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flock_works = True
      except BlockingIOError:
        holder = self._read_holder()
        os.close(fd)
        raise WorkdirLockedError(
            f"workdir {self.workdir} is in use by another training run: {_describe(holder)}. Wait for it to "
            "finish or stop it, or give this run another --workdir.") from None
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          os.close(fd)
          raise
        flock_works = False
      # The file may have been removed (and recreated) by its previous holder between our open and our flock:
      # then we hold a lock on a file nobody else sees; start again.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = self._read_holder()
    if previous and not flock_works:
      same_host = previous.get("host") == socket.gethostname()
      if not same_host or _pid_alive(previous.get("pid")):
        os.close(fd)
        raise WorkdirLockedError(
            f"workdir {self.workdir} is in use by another training run: {_describe(previous)} (this file system "
            f"has no file locks, so the lock file {self.path} decides: remove it if that run is gone).")
    if previous:
      logging.warning("Taking over %s from a run that ended without releasing it: %s.", self.path,
                      _describe(previous))
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Removes the file, then drops the lock (in that order: a waiting run then finds no stale holder)."""
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
