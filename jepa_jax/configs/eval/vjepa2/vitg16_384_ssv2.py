"""V-JEPA 2 ViT-g/16 (vit_giant_xformers) at 384, frozen attentive probe on ssv2: reproduces facebookresearch/vjepa2
configs/eval/vitg-384/ssv2.yaml (64 frames (step 2) x 2 segments x 3 views, 20 heads, 20 epochs, batch 2 x 128
GPUs; docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitg16_384", "ssv2")
