"""V-JEPA 2 ViT-L/16 at 256, frozen attentive probe on in1k: reproduces facebookresearch/vjepa2
configs/eval/vitl/in1k.yaml (images repeated 16 times, 21 heads (20 with a 5-epoch warmup), 20 epochs, batch 16 x
64 GPUs; docs/reference.md §9.6).
"""
from jepa_jax.configs.eval.vjepa2 import common


def get_config():
  return common.get("vitl16", "in1k")
