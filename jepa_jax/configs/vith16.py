"""ViT-H/16 at 16x224x224: the official configs/pretrain/vith16.yaml (docs/reference.md §1).

128 GPUs x 24 clips = 3072 clips per step, 90,000 steps. FSDP over all devices: the f32 state is ~10 GB.
"""
from jepa_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_huge"
  config.data.batch_size = 3072
  config.mesh.shape = (1, -1, 1)
  # Measured ahead of time (docs/performance.md, memory plan): without remat the XLA attention keeps every layer's
  # f32 probabilities for the backward, which does not fit even 95 GB at the official per-device batch; full remat
  # fits every chip listed there. Scanned blocks keep the compile time flat in depth.
  config.model.remat = "full"
  config.model.scan_layers = True
  return config
