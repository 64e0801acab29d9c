"""Probe on the demo's synthetic motion labels (direction of movement; needs time) with the demo's tiny encoder.

  python -m jepa_jax.main --config=configs/eval/demo_motion.py --workdir=PROBE_DIR --config.pretrained=/tmp/demo
  python -m jepa_jax.main --config=configs/eval/demo_motion.py:vjepa2 ...      # the V-JEPA 2 probe
(the lists default to PRETRAINED/data/motion_{train,val}.csv, which the demo pretraining writes). The model fields
mirror configs/demo.py (evaluation/demo_report.py takes them from the demo run itself). Sizes shrink for a 2-core
CPU. The training augmentation is lighter than the official one (no RandAugment, no random erasing, no random crop):
with 77 training videos of 64 pixels, the official augmentation leaves a probe of a few hundred steps at chance even
on features that carry the motion.

get_config('vjepa2'): the V-JEPA 2 probe and protocol (configs/eval/vjepa2/common.py) at demo size: 4 probe blocks,
16 heads, one AdamW group with weight decay on every parameter, no clipping, constant weight decay, and a grid of 4
heads (lr {1e-3, 3e-4} x wd {0.01, 0.1}) trained together; the best head counts.
"""
from jepa_jax.configs import demo
from jepa_jax.configs.eval import base
from jepa_jax.configs.eval.vjepa2 import common as vjepa2


def get_config(variant: str = ""):
  if variant not in ("", "vjepa1", "vjepa2"):
    raise ValueError(f"configs/eval/demo_motion.py:{variant}: the argument is 'vjepa1' (default) or 'vjepa2'")
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
  if variant == "vjepa2":
    vjepa2.set_probe(config)
    e.heads = vjepa2.head_grid(lrs=(1e-3, 3e-4), weight_decays=(0.01, 0.1))
    config.tag = "demo-motion-vjepa2"
  return config
