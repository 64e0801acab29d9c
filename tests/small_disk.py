"""A real small file system for the full-disk tests: a tmpfs mounted at a test folder (needs root, as in the
project's sandbox and CI container); the tests that need one are skipped with the reason elsewhere."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest


def _mount(path, size_kib: int) -> subprocess.CompletedProcess:
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                        capture_output=True, text=True)


def resize(path, size_kib: int) -> None:
  """Frees (or takes away) space: tmpfs can be resized in place, keeping its files."""
  subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(path)], check=True, capture_output=True)


@contextlib.contextmanager
def small_disk(path, size_kib: int):
  """A tmpfs of `size_kib` KiB at `path` for the duration; skips the test when none can be mounted."""
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root; the full-disk test runs where it can mount one")
  result = _mount(path, size_kib)
  if result.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
