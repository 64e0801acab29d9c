"""V-JEPA 2 ViT-g/16 (vit_giant_xformers) at 384, frozen attentive probe on in1k: reproduces facebookresearch/vjepa2
configs/eval/vitg-384/in1k.yaml (images repeated 18 times, 21 heads (20 with a 5-epoch warmup), 20 epochs, batch 8
x 128 GPUs; docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitg16_384", "in1k")
