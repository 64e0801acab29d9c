"""V-JEPA 2 ViT-H/16 pretraining at 16 x 256 x 256: the official configs/train/vith16/pretrain-256px-16f.yaml
(docs/reference.md §9.3), the ViT-L recipe (configs/vjepa2/vitl16_256.py) with vit_huge. epochs 10 as the yaml (it
ends inside the warmup)."""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.pretrain_config("vit_huge", epochs=10)
  config.mesh.shape = (1, -1, 1)  # FSDP over every device, as configs/vith16.py
  return config
