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
  # The fastest plan that fits this chip at this per-chip batch, from the ahead-of-time TPU compiles
  # (jepa_jax/remat_plans.py, docs/performance.md "Memory plan"): with splash attention no layer keeps its softmax,
  # so a lighter remat than full fits where a plan was compiled; elsewhere 'auto' takes full remat, which fits every
  # chip compiled. Scanned blocks keep the compile time flat in depth.
  config.model.remat = "auto"
  config.model.scan_layers = True
  return config
