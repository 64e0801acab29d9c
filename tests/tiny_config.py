"""Config file for subprocess runs of `python -m jepa_jax.main` in the tests: tests/tiny.py's tiny model."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny  # noqa: E402


def get_config():
  config = tiny.tiny_config()
  config.data.synthetic_videos = 0
  config.checkpoint.every_steps = 2
  config.log_every = 1
  config.visualize_at_end = False
  return config
