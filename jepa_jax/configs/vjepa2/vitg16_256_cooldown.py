"""V-JEPA 2 ViT-g/16 cooldown at 64 x 256 x 256: the official configs/train/vitg16/cooldown-256px-64f.yaml
(docs/reference.md §9.4): 512 GPUs x 6 = 3072 clips, but only 4 epochs x 30 = 120 steps (T = 150), lr 5.25e-4
decayed linearly towards 1e-6 (ends near 1.06e-4), no warmup; --config.init_from names the pretraining run or file."""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.cooldown_config("vit_giant_xformers", crop_size=256, batch_size=3072, epochs=4, ipe=30)
  config.mesh.shape = (1, -1, 1)
  return config
