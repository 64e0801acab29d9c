"""The demo's own data: synthetic videos written into WORKDIR/data on the first run, reused afterwards.

A workdir on an object store (gs://...) gets them written locally first and uploaded, with lists naming the
uploaded copies.
"""
from __future__ import annotations

import os
import tempfile

from absl import logging
from etils import epath

from input_pipeline import sources
from input_pipeline import storage
from input_pipeline import synthetic

_DONE = "COMPLETE"


def synthetic_dir(workdir) -> epath.Path:
  return epath.Path(workdir) / "data"


def ensure_synthetic_videos(config, workdir, *, is_primary: bool) -> list[str]:
  """Writes config.data.synthetic_videos videos once (process 0) and returns the pretraining list paths.

  Pretraining uses the train split only; the val split stays unseen for the probe evaluation.
  A marker file written last (and itself renamed into place) means a run killed half-way through is completed by
  the next one rather than trained on: every video and list is renamed into place only when whole
  (input_pipeline/synthetic.py), and the complete videos already written are kept.
  """
  out = synthetic_dir(workdir)
  if is_primary and not (out / _DONE).exists():
    logging.info("Writing %d synthetic videos to %s ...", config.data.synthetic_videos, out)
    if storage.is_remote(out):
      with tempfile.TemporaryDirectory() as local:
        lists = synthetic.write_dataset(local, config.data.synthetic_videos, seed=config.seed)
        _upload(local, lists, out)
    else:
      synthetic.write_dataset(str(out), config.data.synthetic_videos, seed=config.seed)
    partial = out / (_DONE + ".partial")
    partial.write_text("ok\n")
    partial.rename(out / _DONE)
  return [str(out / "motion_train.csv")]


def _upload(local: str, lists: dict, out: epath.Path) -> None:
  """Copies a dataset written under `local` to an object store; the lists name the uploaded videos."""
  videos = out / "videos"
  videos.mkdir(parents=True, exist_ok=True)
  for name in sorted(os.listdir(os.path.join(local, "videos"))):
    with open(os.path.join(local, "videos", name), "rb") as f:
      (videos / name).write_bytes(f.read())
  for list_path in lists.values():
    paths, labels = sources.read_file_list(list_path)
    remote_paths = [str(videos / os.path.basename(p)) for p in paths]
    sources.write_file_list(str(out / os.path.basename(list_path)), remote_paths, labels)
