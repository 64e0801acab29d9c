"""The embedded default: a tiny V-JEPA on synthetic videos that trains on a 2-core CPU in a few minutes.

It writes its own videos (moving shapes, input_pipeline/synthetic.py) into WORKDIR/data on the first run, so
`python -m jepa_jax.main --config=configs/demo.py --workdir=DIR` needs nothing else. Same code path as the real
configs; only sizes and the schedule horizon shrink.
"""
from jepa_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "vit_tiny"
  config.model.depth = 6  # half of vit_tiny's 12 blocks: the demo must train in minutes on 2 cores.
  config.model.scan_layers = False  # on CPU unrolled blocks step ~25% faster; compile is ~10 s either way here.
  config.model.crop_size = 64
  config.model.num_frames = 16
  config.model.pred_depth = 4
  config.model.pred_embed_dim = 96
  config.model.dtype = "float32"  # bfloat16 brings no speed on CPU.

  config.data.synthetic_videos = 200
  config.data.batch_size = 8
  config.data.frame_step = 2
  config.data.num_workers = 0

  config.optim.ipe = 50
  config.optim.epochs = 12
  config.optim.warmup = 2
  # A batch of 8 is 384x smaller than the official 3072. At lr 1e-3 / EMA 0.996 the target encoder collapsed to one
  # vector per token within 200 steps (target-std 0.53 -> 0.26); at lr 1e-4 / EMA 0.998 it drifted slowly (0.52 ->
  # 0.39 over 600 steps); with the EMA starting at 0.999 it holds ~0.50 and the motion probe beats a random encoder
  # by 17 points. See docs/performance.md, "The demo recipe".
  config.optim.start_lr = 3e-5
  config.optim.lr = 1e-4
  config.optim.final_lr = 1e-6
  config.optim.ema = (0.999, 1.0)

  config.checkpoint.every_steps = 100
  config.log_every = 10
  config.visualize_at_end = True
  config.probe_at_end = True
  return config
