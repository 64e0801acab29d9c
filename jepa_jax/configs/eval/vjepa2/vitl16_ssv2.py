"""V-JEPA 2 ViT-L/16 at 256, frozen attentive probe on ssv2: reproduces facebookresearch/vjepa2
configs/eval/vitl/ssv2.yaml (16 frames (step 4) x 2 segments x 3 views, 20 heads, 20 epochs, batch 4 x 64 GPUs;
docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitl16", "ssv2")
