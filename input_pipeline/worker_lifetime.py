"""Data worker processes end with their trainer, even when it is killed with SIGKILL.

grain's mp_prefetch workers are separate processes; a trainer that exits normally stops them, but one killed by
kill -9, the OOM killer or a lost shell leaves them behind as orphans, each holding its decoded batches and
modules in memory (the real configs start 12 per host) until someone finds and kills them. Each worker watches
its parent and exits when the parent is gone.
"""
import os
import threading
import time

_POLL_S = 1.0


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """grain's worker_init_fn: starts a watcher thread that ends this worker once its parent process is gone."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:  # an orphan is re-parented (to init or a subreaper)
      time.sleep(_POLL_S)
    os._exit(0)  # pylint: disable=protected-access  # no clean-up to run: the trainer is gone

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
