"""Probe on the demo's synthetic motion labels (direction of movement; needs time) with the demo's tiny encoder.

  python -m jepa_jax.main --config=configs/eval/demo_motion.py --workdir=PROBE_DIR --config.pretrained=/tmp/demo
(the lists default to PRETRAINED/data/motion_{train,val}.csv, which the demo pretraining writes). The model fields
mirror configs/demo.py. Sizes shrink for a 2-core CPU. The training augmentation is lighter than the official
one (no RandAugment, no random erasing, no random crop): with 77 training videos of 64 pixels, the official
augmentation leaves a probe of a few hundred steps at chance even on features that carry the motion.
"""
from jepa_jax.configs import demo
from jepa_jax.configs.eval import base


def get_config():
  config = base.get("vitl16", "ssv2")
  pretrain = demo.get_config()
  config.model = pretrain.model
  config.mesh = pretrain.mesh
  config.tag = "demo-motion"
  e = config.eval
  e.lists_from_pretrained_data = "motion"
  e.num_classes = 4
  e.num_segments = 1
  e.num_views = 1
  e.frames = pretrain.data.frames_per_clip
  e.frame_step = pretrain.data.frame_step
  e.resolution = pretrain.model.crop_size
  e.batch_size = 4
  e.epochs = 15
  e.random_resize_scale = (1.0, 1.0)
  e.auto_augment = False
  e.reprob = 0.0
  e.num_workers = 0
  return config
