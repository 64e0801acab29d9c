"""ViT-H/16 at 16x384x384: the official configs/pretrain/vith16_384.yaml (docs/reference.md §1).

240 GPUs x 10 clips = 2400 clips per step; 4,608 tokens per clip. FSDP over all devices.
"""
from jepa_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_huge"
  config.model.crop_size = 384
  config.data.batch_size = 2400
  config.mesh.shape = (1, -1, 1)
  # Measured ahead of time (docs/performance.md, memory plan): without remat the XLA attention keeps every layer's
  # f32 probabilities for the backward, which does not fit even 95 GB at the official per-device batch; full remat
  # fits every chip listed there. Scanned blocks keep the compile time flat in depth.
  config.model.remat = "full"
  config.model.scan_layers = True
  return config
