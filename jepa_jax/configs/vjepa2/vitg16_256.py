"""V-JEPA 2 ViT-g/16 pretraining at 16 x 256 x 256: the official configs/train/vitg16/pretrain-256px-16f.yaml
(docs/reference.md §9.3), the ViT-L recipe (configs/vjepa2/vitl16_256.py) with the released ViT-g,
vit_giant_xformers (1408 wide, 40 blocks, 22 heads), for 800 epochs x 300 = 240,000 steps."""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.pretrain_config("vit_giant_xformers", epochs=800)
  # 1.01e9 parameters: params + EMA + AdamW moments are ~16 GB in float32, so FSDP over every device.
  config.mesh.shape = (1, -1, 1)
  return config
