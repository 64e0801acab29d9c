"""V-JEPA 2 ViT-g/16 (vit_giant_xformers) at 384, frozen attentive probe on k400: reproduces facebookresearch/vjepa2
configs/eval/vitg-384/k400.yaml (16 frames (step 4) x 8 segments x 3 views, 20 heads, 20 epochs, batch 1 x 256
GPUs; docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitg16_384", "k400")
