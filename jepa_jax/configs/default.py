"""Defaults shared by every pretraining config: the official V-JEPA ViT-L/16 recipe (docs/reference.md §1).

Per-generator mask settings are tuples with one entry per mask generator, in generator order, so that each can be
overridden from the command line (`--config.mask.num_blocks="(8, 2)"`).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "pretrain"
  config.seed = 234
  # A pretraining run (workdir) or checkpoint file (.pt / .pth.tar / safetensors) to start from when the workdir has
  # no checkpoint yet: encoder, predictor, target encoder and, when present, the AdamW moments; the schedules start
  # at step 0 (the V-JEPA 2 cooldown, docs/reference.md §9.4). Later
  # restarts resume from the workdir's own checkpoints.
  config.init_from = ""

  # --- model (docs/reference.md §2) ---
  config.model = model = ml_collections.ConfigDict()
  model.name = "vit_large"
  # > 0: override the zoo's width / depth / heads (tests and the CPU demo use small custom sizes).
  model.embed_dim = 0
  model.depth = 0
  model.num_heads = 0
  model.patch_size = 16
  model.tubelet_size = 2
  model.num_frames = 16
  model.crop_size = 224
  model.uniform_power = True
  # How positions enter: "sincos" adds V-JEPA 1's 3-D sin-cos table to the tokens; "rope" rotates q and k by each
  # token's (t, h, w) patch coordinates inside every attention (V-JEPA 2, docs/reference.md §9.1; no table).
  model.pos_embed = "sincos"
  # V-JEPA 2 init: block i's attn.proj and mlp.fc2 keep the official 1/sqrt(2 (i + 1)) rescale; V-JEPA 1's training
  # re-initialises every Linear afterwards, which undoes it (docs/reference.md §2.2).
  model.depth_rescale_init = False
  model.pred_depth = 12
  model.pred_embed_dim = 384
  model.pred_num_heads = 0  # 0: the encoder's heads, as V-JEPA 1 (V-JEPA 2 uses 12).
  model.zero_init_mask_tokens = True
  model.num_mask_tokens = 0  # 0: one per mask generator (V-JEPA 1); V-JEPA 2's released files hold 10.
  # Which mask token generator g uses: "generator" -> token g (V-JEPA 1); "frame_group" -> token 0 for every generator
  # (V-JEPA 2 indexes by frame-count group, and its configs have one group; docs/reference.md §9.2).
  model.mask_token_rule = "generator"
  model.dtype = "bfloat16"  # compute dtype; params stay float32, LayerNorm/softmax/loss in float32.
  # "" picks per platform (TPU: "splash", GPU: "cudnn" for bf16, CPU: "xla"); see jepa_jax/models/attention.py.
  model.attention_impl = ""
  # One pass for all mask generators: "sequence" (side by side, block-diagonal attention), "batch" (stacked, padded)
  # or "none" (one pass per generator, the official structure); the predictor's "" picks the measured best for the
  # kernel (splash: "sequence", cudnn/xla on accelerators: "batch", CPU: "none"). See jepa_jax/models/packing.py.
  model.context_packing = "sequence"
  model.predictor_packing = ""
  model.remat = "none"  # "none" | "full" | "dots" (save matmul outputs) | "dots_no_batch" | "auto" (remat_plans.py).
  model.scan_layers = False

  # --- data (docs/reference.md §5) ---
  config.data = data = ml_collections.ConfigDict()
  data.datasets = ("",)  # official-format file lists: "path label" per line, space separated.
  data.datasets_weights = ()  # empty: uniform over the concatenation (the V1 configs).
  data.batch_size = 3072  # global clips per optimizer step (128 GPUs x 24).
  data.frames_per_clip = 16
  data.frame_step = 4
  data.fps = 0.0  # > 0: V-JEPA 2 style frame step from the video's fps; overrides frame_step.
  data.clip_duration = 0.0  # > 0 seconds: step from fps so a clip spans this duration (official clip_duration).
  data.num_clips = 1
  data.filter_short_videos = False
  data.random_resize_scale = (0.3, 1.0)
  data.random_resize_aspect_ratio = (0.75, 1.35)
  data.horizontal_flip = True
  data.num_workers = 12
  data.prefetch_buffer = 2
  data.max_failure_fraction = 0.5  # stop with an error when more than this share of decodes fail.
  data.synthetic_videos = 0  # > 0: write this many synthetic videos into the workdir and train on them.

  # --- masks (docs/reference.md §3): one entry per generator ---
  config.mask = mask = ml_collections.ConfigDict()
  mask.num_blocks = (8, 2)
  mask.spatial_scale = ((0.15, 0.15), (0.7, 0.7))
  mask.temporal_scale = ((1.0, 1.0), (1.0, 1.0))
  mask.aspect_ratio = ((0.75, 1.5), (0.75, 1.5))
  mask.max_temporal_keep = (1.0, 1.0)
  # Fixed token counts per generator (static shapes, our one deliberate deviation; see input_pipeline/masks.py).
  # 0: derived from the official batch-minimum statistics for the per-device batch.
  mask.num_context = (0, 0)
  mask.num_target = (0, 0)

  # --- loss (docs/reference.md §4.2) ---
  config.loss = loss = ml_collections.ConfigDict()
  loss.loss_exp = 1.0
  loss.reg_coeff = 0.0

  # --- optimisation (docs/reference.md §1, §4.3) ---
  config.optim = optim = ml_collections.ConfigDict()
  optim.ipe = 300
  optim.ipe_scale = 1.25
  optim.epochs = 300
  optim.warmup = 40
  optim.start_lr = 2e-4
  optim.lr = 6.25e-4
  optim.final_lr = 1e-6
  optim.weight_decay = 0.04
  optim.final_weight_decay = 0.4  # cosine weight_decay -> this; equal to weight_decay: constant (V-JEPA 2: 0.04).
  # "warmup_cosine": official WarmupCosineSchedule (V-JEPA 1; V-JEPA 2 pretraining sets final_lr = lr, i.e. warmup
  # then constant). "linear_decay": official LinearDecaySchedule, lr -> final_lr over int(ipe_scale x epochs x ipe)
  # steps, no warmup (the V-JEPA 2 cooldown; warmup must be 0).
  optim.lr_schedule = "warmup_cosine"
  optim.ema = (0.998, 1.0)  # (start, end), linear over the ipe_scale horizon; (m, m) is constant (V-JEPA 2).
  optim.clip_grad = 10.0  # 0: no gradient clipping (V-JEPA 2).
  optim.clip_always = False  # the official run clips only after the warmup epochs.
  optim.betas = (0.9, 0.999)
  optim.eps = 1e-8
  optim.grad_accum_steps = 1
  optim.total_steps = 0  # 0: ipe x epochs.

  # --- mesh and sharding (README.md "Pretraining", launch/README.md) ---
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.shape = (-1, 1, 1)  # ('data', 'fsdp', 'tensor'); -1 takes the remaining devices.
  mesh.dcn_data_parallelism = 1  # > 1: slices, data parallel across them over DCN (hybrid mesh).
  mesh.rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("classes", None),
      ("norm", None),
      ("conv", None),
      ("layers", None),
  )

  # --- checkpoints and logs ---
  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 300
  ckpt.keep = 3
  ckpt.async_save = True
  config.log_every = 10
  config.profile_steps = (0, 0)  # (start, stop) > 0: write a profiler trace of these steps.
  config.write_tag = "jepa"
  config.visualize_at_end = False  # write masks, features and curves pictures into the workdir at the end.
  config.probe_at_end = False  # the demo: train the motion probe on this encoder and on a random one at the end.
  return config
