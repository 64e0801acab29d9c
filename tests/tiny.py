"""Small configs and batches shared by the training tests: the real code paths at sizes a 2-core CPU runs in seconds."""
from __future__ import annotations

import numpy as np

from jepa_jax.configs import demo
from input_pipeline import masks as masks_lib


def tiny_config(**overrides):
  """The demo config shrunk further: width 32, 2 blocks, 4 frames of 64x64 (2x4x4 = 32 tokens), batch 8."""
  config = demo.get_config()
  config.model.embed_dim = 32
  config.model.depth = 2
  config.model.num_heads = 2
  config.model.num_frames = 4
  config.data.frames_per_clip = 4
  config.model.crop_size = 64
  config.model.pred_depth = 1
  config.model.scan_layers = False  # the unrolled blocks are where XLA's sharding pitfall showed; see test_train_step.
  config.model.pred_embed_dim = 16
  config.data.batch_size = 8
  config.optim.ipe = 2
  config.optim.epochs = 10
  config.optim.warmup = 1
  config.mesh.shape = (-1, 1, 1)
  config.visualize_at_end = False
  config.probe_at_end = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def tiny_v2_config(**overrides):
  """tiny_config as a V-JEPA 2 model: RoPE (head dims 16 and 8), the V-JEPA 2 init, 10 mask tokens used by the
  frame-group rule, the V-JEPA 2 schedules (warmup then constant lr, constant EMA / wd, no clipping)."""
  config = tiny_config()
  m, o = config.model, config.optim
  m.pos_embed, m.depth_rescale_init = "rope", True
  m.pred_num_heads, m.num_mask_tokens, m.mask_token_rule = 2, 10, "frame_group"
  o.start_lr, o.lr, o.final_lr = 1e-4, 5.25e-4, 5.25e-4
  o.weight_decay = o.final_weight_decay = 0.04
  o.ema, o.clip_grad = (0.99925, 0.99925), 0.0
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def mask_generator(config, per_device_batch: int = 8):
  specs = masks_lib.mask_specs_from_config(config, per_device_batch)
  m = config.model
  return specs, masks_lib.MultiBlockMaskGenerator(
      specs, crop_size=m.crop_size, num_frames=m.num_frames, patch_size=m.patch_size, tubelet_size=m.tubelet_size)


def random_batches(config, num_batches: int, seed: int = 0, per_device_batch: int = 8) -> list[dict]:
  """Random uint8 clips with masks from the real generator; numpy, on the host."""
  rng = np.random.default_rng(seed)
  _, generator = mask_generator(config, per_device_batch)
  m, b = config.model, config.data.batch_size
  batches = []
  for _ in range(num_batches):
    clips = rng.integers(0, 256, (b, m.num_frames, m.crop_size, m.crop_size, 3), dtype=np.uint8)
    batch = {"clips": clips, "labels": np.zeros((b,), np.int32)}
    batch.update(generator(b, rng))
    batches.append(batch)
  return batches
