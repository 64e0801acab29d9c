"""ViT-H/16 at 16x224x224: the official configs/pretrain/vith16.yaml (reference §1).

128 GPUs x 24 clips = 3072 clips per step, 90,000 steps. FSDP over all devices: the f32 state is ~10 GB.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_huge"
  config.data.batch_size = 3072
  config.mesh.shape = (1, -1, 1)
  return config
