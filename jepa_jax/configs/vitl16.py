"""ViT-L/16 at 16x224x224: the official configs/pretrain/vitl16.yaml (docs/reference.md §1).

128 GPUs x 24 clips = 3072 clips per step, 90,000 steps. Data lists go in config.data.datasets (official format,
"path label" per line); the official run mixes K710, SSv2 and HowTo100M lists.
FSDP over all devices, as configs/vith16.py. The f32 state (params, EMA, AdamW moments, ~4.9 GB) would fit every
accelerator unsharded, but then every chip runs the whole AdamW and EMA update: the TPU compiler estimates the v5p-8
step at 0.251 s with pure data parallelism against 0.243 s with FSDP over its 4 chips (docs/performance.md,
"FSDP or pure data parallelism"), and the memory plans of jepa_jax/remat_plans.py were compiled with FSDP.
"""
from jepa_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_large"
  config.data.batch_size = 3072
  config.mesh.shape = (1, -1, 1)
  # The fastest plan that fits this chip at this per-chip batch, from the ahead-of-time TPU compiles
  # (jepa_jax/remat_plans.py, docs/performance.md "Memory plan"): with splash attention no layer keeps its softmax,
  # so a lighter remat than full fits where a plan was compiled; elsewhere 'auto' takes full remat, which fits every
  # chip compiled. Scanned blocks keep the compile time flat in depth.
  config.model.remat = "auto"
  config.model.scan_layers = True
  return config
