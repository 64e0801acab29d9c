"""ViT-H/16 at 16x384x384: the official configs/pretrain/vith16_384.yaml (reference §1).

240 GPUs x 10 clips = 2400 clips per step; 4,608 tokens per clip. FSDP over all devices.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_huge"
  config.model.crop_size = 384
  config.data.batch_size = 2400
  config.mesh.shape = (1, -1, 1)
  return config
