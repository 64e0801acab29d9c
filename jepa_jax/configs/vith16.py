"""ViT-H/16 at 16x224x224: the official configs/pretrain/vith16.yaml (docs/reference.md §1).

128 GPUs x 24 clips = 3072 clips per step, 90,000 steps. FSDP over all devices: the f32 state is ~10 GB.
"""
from jepa_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_huge"
  config.data.batch_size = 3072
  config.mesh.shape = (1, -1, 1)
  # The fastest plan that fits this chip at this per-chip batch, from the ahead-of-time TPU compiles
  # (jepa_jax/remat_plans.py, docs/performance.md "Memory plan"): with splash attention no layer keeps its softmax,
  # so a lighter remat than full fits where a plan was compiled; elsewhere 'auto' takes full remat, which fits every
  # chip compiled. Scanned blocks keep the compile time flat in depth.
  config.model.remat = "auto"
  config.model.scan_layers = True
  return config
