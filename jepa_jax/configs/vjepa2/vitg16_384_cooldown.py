"""V-JEPA 2 ViT-g/16 cooldown at 64 x 384 x 384 (the released vitg-384.pt): the official
configs/train/vitg16/cooldown-384px-64f.yaml (docs/reference.md §9.4): 512 GPUs x 6 = 3072 clips, 40 x 300 = 12,000
steps, lr 5.25e-4 decayed linearly towards 1e-6 over 15,000, no warmup; --config.init_from names the 256-px
pretraining run or file (RoPE needs no table resize)."""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.cooldown_config("vit_giant_xformers", crop_size=384, batch_size=3072, epochs=40, ipe=300)
  config.mesh.shape = (1, -1, 1)
  return config
