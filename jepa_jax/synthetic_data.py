"""The demo's own data: synthetic videos written into WORKDIR/data on the first run, reused afterwards."""
from __future__ import annotations

from absl import logging
from etils import epath

from input_pipeline import synthetic

_DONE = "COMPLETE"


def synthetic_dir(workdir) -> epath.Path:
  return epath.Path(workdir) / "data"


def ensure_synthetic_videos(config, workdir, *, is_primary: bool) -> list[str]:
  """Writes config.data.synthetic_videos videos once (process 0) and returns the pretraining list paths.

  Pretraining uses the train split only; the val split stays unseen for the probe evaluation.
  A marker file written last means a crash half-way through is redone rather than trained on.
  """
  out = synthetic_dir(workdir)
  if is_primary and not (out / _DONE).exists():
    logging.info("Writing %d synthetic videos to %s ...", config.data.synthetic_videos, out)
    synthetic.write_dataset(str(out), config.data.synthetic_videos, seed=config.seed)
    (out / _DONE).write_text("ok\n")
  return [str(out / "motion_train.csv")]
