"""V-JEPA 2 ViT-H/16 cooldown at 64 x 256 x 256: the official configs/train/vith16/cooldown-256px-64f.yaml
(docs/reference.md §9.4), as configs/vjepa2/vitl16_256_cooldown.py with vit_huge: 256 GPUs x 12 = 3072 clips,
40 x 300 steps, linear decay over 15,000, no warmup; --config.init_from names the pretraining run or file."""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.cooldown_config("vit_huge", crop_size=256, batch_size=3072, epochs=40, ipe=300)
  config.mesh.shape = (1, -1, 1)
  return config
