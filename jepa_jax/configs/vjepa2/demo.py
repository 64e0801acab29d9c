"""The V-JEPA 2 recipe on the CPU demo: configs/demo.py's tiny model, videos and probe, with V-JEPA 2's model and
schedules (docs/reference.md §9): 3-D RoPE instead of the sin-cos table, the V-JEPA 2 init (depth rescale kept), a
predictor with its own head count (3 heads of 32 channels, as V-JEPA 2's 384 / 12), 10 mask tokens used by the
frame-group rule, lr warmup then constant, constant EMA and weight decay, no gradient clipping.

  python -m jepa_jax.main --config=configs/vjepa2/demo.py --workdir=workdir/demo_v2

The step sizes follow configs/demo.py's reasoning (docs/performance.md, "The demo recipe"): a batch of 8 is 384x
smaller than the official 3072, so the official lr (5.25e-4) is far too high and the EMA must stay high; V-JEPA 2's
constant EMA is set where V-JEPA 1's ramp spends the run (0.999 -> 1).
"""
from jepa_jax.configs import demo


def get_config():
  config = demo.get_config()
  m = config.model
  m.pos_embed = "rope"
  m.depth_rescale_init = True
  m.pred_num_heads = 3  # 96 / 3 = 32 channels per head, V-JEPA 2's predictor head dim (384 / 12)
  m.num_mask_tokens = 10
  m.mask_token_rule = "frame_group"

  o = config.optim
  o.lr_schedule = "warmup_cosine"
  o.warmup = 2
  o.start_lr = 3e-5
  o.lr = 1e-4
  o.final_lr = 1e-4  # final_lr = lr: warmup, then constant (the V-JEPA 2 pretraining schedule)
  o.weight_decay = o.final_weight_decay = 0.04  # constant
  o.ema = (0.9995, 0.9995)  # constant
  o.clip_grad = 0.0
  config.seed = 239
  return config
