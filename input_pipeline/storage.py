"""Local disk or an object store (gs://, and any other fsspec URL) behind the few file operations the run needs.

Checkpoints need nothing from here: orbax reaches gs:// itself (directories through etils.epath, arrays through
tensorstore's gcs driver). What needs help is reading videos and lists through a file-like object, and the logs:
GCS objects cannot be appended to (gcsfs silently turns mode 'a' into 'w', and a written object appears only
when its file is closed), so logs on an object store are written to a local staging folder and the changed files
uploaded whole (`MirroredDir`), at most every `min_interval_s` (GCS allows about one update per second per object).

Reads go through fsspec's own URL handling rather than etils: fsspec's filesystem cache is per process, so a
filesystem created in the parent is never reused in a data worker (gcsfs instances are not fork-safe).

It lives in input_pipeline, the lower of the two packages (input_pipeline never imports jepa_jax): the pipeline
opens videos and lists through it, and jepa_jax's logs and synthetic data use it from here.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import IO, Optional

from etils import epath


def is_remote(path) -> bool:
  """True for URLs such as gs://bucket/x; False for local paths and file:// URLs."""
  path = os.fspath(path)
  return "://" in path and not path.startswith("file://")


def open_read(path) -> IO[bytes]:
  """A binary, seekable file object for a local path or a URL (gs://...)."""
  path = os.fspath(path)
  if not is_remote(path):
    return open(path, "rb")
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, fs_path = fsspec.core.url_to_fs(path)
  return fs.open(fs_path, "rb")


def file_size(path) -> Optional[int]:
  """The size in bytes, or None when there is no such file (one metadata request on an object store)."""
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.getsize(path) if os.path.isfile(path) else None
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, fs_path = fsspec.core.url_to_fs(path)
  try:
    info = fs.info(fs_path)
  except FileNotFoundError:
    return None
  return None if info.get("type") == "directory" else int(info["size"])


class MirroredDir:
  """A local staging folder whose files are uploaded whole to `remote_dir` by sync().

  sync() uploads every file that changed since its last upload, unless the last upload was less than
  `min_interval_s` ago (force=True uploads regardless). `download(name)` fetches an existing remote file into the
  staging folder first, for files that are appended to across runs (a resumed run's CSV).
  """

  def __init__(self, remote_dir, *, min_interval_s: float = 30.0):
    self.remote_dir = epath.Path(remote_dir)
    self.local_dir = tempfile.mkdtemp(prefix="jepa_jax_mirror_")
    self.min_interval_s = float(min_interval_s)
    self._uploaded: dict[str, tuple[int, int]] = {}
    self._last_sync = -float("inf")

  def local(self, *parts: str) -> str:
    return os.path.join(self.local_dir, *parts)

  def download(self, relative: str) -> bool:
    """Copies remote_dir/relative into the staging folder if it exists; returns whether it did."""
    remote = self.remote_dir / relative
    if not remote.exists():
      return False
    local = self.local(relative)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, "wb") as f:
      f.write(remote.read_bytes())
    st = os.stat(local)
    self._uploaded[relative] = (st.st_size, st.st_mtime_ns)  # identical to the remote copy
    return True

  def due(self) -> bool:
    """Whether min_interval_s has passed since the last sync."""
    return time.monotonic() - self._last_sync >= self.min_interval_s

  def sync(self, force: bool = False) -> int:
    """Uploads the changed files (unless not due and not forced); returns how many were uploaded."""
    if not (force or self.due()):
      return 0
    self._last_sync = time.monotonic()
    count = 0
    for root, _, names in os.walk(self.local_dir):
      for name in sorted(names):
        local = os.path.join(root, name)
        relative = os.path.relpath(local, self.local_dir)
        st = os.stat(local)
        if self._uploaded.get(relative) == (st.st_size, st.st_mtime_ns):
          continue
        with open(local, "rb") as f:
          data = f.read()
        remote = self.remote_dir / relative
        remote.parent.mkdir(parents=True, exist_ok=True)
        remote.write_bytes(data)
        self._uploaded[relative] = (st.st_size, st.st_mtime_ns)
        count += 1
    return count

  def close(self):
    """Uploads what changed and removes the staging folder."""
    try:
      self.sync(force=True)
    finally:
      shutil.rmtree(self.local_dir, ignore_errors=True)
