"""V-JEPA 2 ViT-g/16 (vit_giant_xformers) at 384, frozen attentive probe on diving48: reproduces
facebookresearch/vjepa2 configs/eval/vitg-384/diving48.yaml (32 frames (step 2) x 4 segments x 3 views, blocks 24,
29, 34, 39 joined, 3 heads, 100 epochs, batch 2 x 64 GPUs; docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitg16_384", "diving48")
