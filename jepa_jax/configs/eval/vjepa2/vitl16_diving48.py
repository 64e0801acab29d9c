"""V-JEPA 2 ViT-L/16 at 256, frozen attentive probe on diving48: reproduces facebookresearch/vjepa2
configs/eval/vitl/diving48.yaml (32 frames (step 2) x 4 segments x 3 views, blocks 17, 19, 21, 23 joined, 3 heads,
100 epochs, batch 2 x 64 GPUs; docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitl16", "diving48")
