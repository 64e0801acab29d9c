"""python -m jepa_jax.visualize {masks,features,curves} [flags]: pictures of the masks, features and curves.

  masks     --config=configs/demo.py [--config.x=y] [--workdir=DIR] [--num_clips=3] --out=masks.png
            The first training batch of the config (its data, seed and mask generators); synthetic-data configs
            write their videos into WORKDIR/data (a temporary folder without --workdir).
  features  --workdir=RUN --video=FILE|LIST.csv [--max_clips=4] [--step=N] --out=features.png|.gif|.mp4
            A list draws its first readable video (unreadable ones are skipped with a warning each).
  curves    --workdir=RUN --out=curves.png
"""
from absl import app
from absl import flags
from absl import logging

from jepa_jax import config_files

_CONFIG = config_files.DEFINE_config("config", "Config file or shipped config name (masks).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (features, curves); synthetic data folder (masks).")
_OUT = flags.DEFINE_string("out", None, "Output file: .png (all), .gif or .mp4 (features).")
_VIDEO = flags.DEFINE_string("video", None, "Video file, or an official list whose first readable video is drawn "
                             "(features).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 3, "Clips of the first batch to draw (masks).")
_MAX_CLIPS = flags.DEFINE_integer("max_clips", 4, "Consecutive clips of the video in a .gif/.mp4 (features).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (features; default: the latest).")
_COMMANDS = ("masks", "features", "curves")


def main(argv):
  if len(argv) != 2 or argv[1] not in _COMMANDS:
    raise app.UsageError(f"give one command of {_COMMANDS} first, e.g. `python -m jepa_jax.visualize curves "
                         f"--workdir=DIR --out=curves.png`; got {argv[1:]}")
  command = argv[1]
  logging.set_verbosity(logging.WARNING)  # orbax logs a dozen INFO lines per restore
  if not _OUT.value:
    raise app.UsageError("--out is required")
  from jepa_jax import visualize
  if command == "masks":
    if _CONFIG.value is None:
      raise app.UsageError("masks needs --config=configs/X.py")
    path = visualize.draw_masks(_CONFIG.value, _OUT.value, workdir=_WORKDIR.value, num_clips=_NUM_CLIPS.value)
  elif command == "features":
    if not _WORKDIR.value or not _VIDEO.value:
      raise app.UsageError("features needs --workdir=RUN and --video=FILE")
    path = visualize.draw_features(_WORKDIR.value, _VIDEO.value, _OUT.value, max_clips=_MAX_CLIPS.value,
                                   step=_STEP.value)
  else:
    if not _WORKDIR.value:
      raise app.UsageError("curves needs --workdir=RUN")
    path = visualize.write_curves(_WORKDIR.value, _OUT.value)
    if path is None:
      raise app.UsageError(f"no logged rows in the CSV of {_WORKDIR.value} yet")
  print(path)


if __name__ == "__main__":
  from jepa_jax import cli
  cli.run(main)
