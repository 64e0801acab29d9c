"""V-JEPA 2 ViT-L/16 cooldown at 64 x 256 x 256: the official configs/train/vitl16/cooldown-256px-64f.yaml
(docs/reference.md §9.4): 256 GPUs x 12 = 3072 clips, 40 x 300 = 12,000 steps, lr 5.25e-4 decayed linearly towards
1e-6 over 15,000 (ends near 1.06e-4), no warmup, started from a pretraining run or file:

  python -m jepa_jax.main --config=configs/vjepa2/vitl16_256_cooldown.py --workdir=DIR \
      --config.init_from=PRETRAIN_WORKDIR_OR_vitl.pt --config.data.datasets="('k710.csv', 'ssv2.csv', 'howto.csv')"
"""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.cooldown_config("vit_large", crop_size=256, batch_size=3072, epochs=40, ipe=300)
  config.mesh.shape = (1, -1, 1)  # FSDP over all devices: see configs/vitl16.py
  return config
