"""V-JEPA 2 ViT-L/16 pretraining at 16 x 256 x 256: the official configs/train/vitl16/pretrain-256px-16f.yaml
(docs/reference.md §9.3): 128 GPUs x 24 = 3072 clips per step, K710 / SSv2 / HowTo100M weighted 0.335 / 0.100 /
0.565, RoPE, predictor 12 x 384 with 12 heads, lr 1e-4 -> 5.25e-4 over 40 x 300 steps then constant, wd 0.04 and
EMA 0.99925 constant, no clipping, bfloat16, seed 239. epochs 10 as the yaml (it ends inside the warmup).

  python -m jepa_jax.main --config=configs/vjepa2/vitl16_256.py --workdir=DIR \
      --config.data.datasets="('k710.csv', 'ssv2.csv', 'howto100m.csv')"
"""
from jepa_jax.configs.vjepa2 import recipe


def get_config():
  config = recipe.pretrain_config("vit_large", epochs=10)
  config.mesh.shape = (1, -1, 1)  # FSDP over all devices: see configs/vitl16.py
  return config
