"""Shared builder of the V-JEPA 2 frozen-evaluation configs: configs/eval/vjepa2/<model>_<task>.py call get().

The official values (docs/reference.md §9.5, §9.6) of facebookresearch/vjepa2 configs/eval/{vitl,vitg-384}/
{ssv2,k400,diving48,in1k}.yaml. What V-JEPA 2 changes against V-JEPA 1 (configs/eval/base.py), as config values of
the same code:
- the probe: num_probe_blocks 4 (three self-attention blocks over all tokens, then the cross-attention block), 16
  heads, official init;
- the protocol: several probes (config.eval.heads, the official multihead_kwargs in their order) trained together
  on one frozen forward pass per batch; each with its own AdamW of one parameter group (every parameter decayed),
  no gradient clipping; lr cosine to final_lr 0 after an optional warmup from start_lr (IN1K: 5 epochs); weight
  decay cosine from weight_decay to final_weight_decay (equal: constant, every head but IN1K's first); the best
  head is reported;
- the data: frames and frame step per task (config.eval.frames, frame_step; the official data.frame_step), crop 256
  (ViT-L) or 384 (ViT-g), Diving48 on the normed outputs of 4 encoder blocks joined along the tokens
  (config.eval.out_layers, the official out_layers of vit_encoder_multiclip_multilevel);
- the encoder: RoPE (config.model.pos_embed 'rope'), target_encoder, built with the clip's frame count (images:
  repeated 16 times for ViT-L, 18 for ViT-g, official img_as_video_nframes).
Unchanged: the training and test transforms, segments x views, attending across segments, multi-view softmax mean.
The official `use_pos_embed: false` and `max_frames: 128` of the clip aggregation add nothing (no extra temporal
table), as in V-JEPA 1; `use_bfloat16: true` runs float16 autocast there, config.model.dtype (bfloat16) here.
"""
import ml_collections

from jepa_jax.configs.eval import base

# model -> (official model_name, resolution, Diving48 out_layers, IN1K img_as_video_nframes)
MODELS = {
    "vitl16": ("vit_large", 256, (17, 19, 21, 23), 16),
    "vitg16_384": ("vit_giant_xformers", 384, (24, 29, 34, 39), 18),
}

# (model, task) -> (frames, frame step, segments, views, per-GPU batch, GPUs, epochs, official tag)
TASKS = {
    ("vitl16", "ssv2"): (16, 4, 2, 3, 4, 64, 20, "ssv2-vitl16-16x2x3-16f"),
    ("vitl16", "k400"): (16, 4, 8, 3, 4, 64, 20, "k400-vitl16-16x8x3-16f"),
    ("vitl16", "diving48"): (32, 2, 4, 3, 2, 64, 100, "diving48-vitl16-32x4x3"),
    ("vitl16", "in1k"): (0, 0, 1, 1, 16, 64, 20, "in1k-vitl16-384-18f"),  # [sic] the official tag of the ViT-L config
    ("vitg16_384", "ssv2"): (64, 2, 2, 3, 2, 128, 20, "ssv2-vitg16-384-64x2x3"),
    ("vitg16_384", "k400"): (16, 4, 8, 3, 1, 256, 20, "k400-vitg16-384-16x8x3-16f"),
    ("vitg16_384", "diving48"): (32, 2, 4, 3, 2, 64, 100, "diving48-vitg16-384-32x4x3"),
    ("vitg16_384", "in1k"): (0, 0, 1, 1, 8, 128, 20, "in1k-vitg16-384-18f"),
}
NUM_CLASSES = {"ssv2": 174, "k400": 400, "diving48": 48, "in1k": 1000}


def head(lr, weight_decay, *, start_lr=None, final_lr=0.0, warmup=0.0, final_weight_decay=None) -> dict:
  """One entry of the official multihead_kwargs (warmup in epochs; defaults: no warmup, constant weight decay)."""
  return {"lr": lr, "start_lr": lr if start_lr is None else start_lr, "final_lr": final_lr, "warmup": warmup,
          "weight_decay": weight_decay,
          "final_weight_decay": weight_decay if final_weight_decay is None else final_weight_decay}


def head_grid(lrs, weight_decays, *, lr_major: bool = False, **kwargs) -> tuple[dict, ...]:
  """Every lr x weight decay, in the official order: weight decay outer, lr inner (video configs); lr outer with
  lr_major (IN1K)."""
  if lr_major:
    return tuple(head(lr, wd, **kwargs) for lr in lrs for wd in weight_decays)
  return tuple(head(lr, wd, **kwargs) for wd in weight_decays for lr in lrs)


# The 20 heads of SSv2, K400 (and COIN): wd {0.01, 0.1, 0.4, 0.8} x lr {5e-3, 3e-3, 1e-3, 3e-4, 1e-4}.
VIDEO_HEADS = head_grid(lrs=(5e-3, 3e-3, 1e-3, 3e-4, 1e-4), weight_decays=(0.01, 0.1, 0.4, 0.8))
# Diving48 (and Jester): 3 heads, lr {1e-3, 3e-4, 1e-4}, wd 0.8, 100 epochs.
DIVING48_HEADS = head_grid(lrs=(1e-3, 3e-4, 1e-4), weight_decays=(0.8,))
# IN1K: first one head without warmup whose wd decays 1e-3 -> 0, then 20 heads with a 5-epoch warmup from 2e-4:
# lr {5e-4, 1e-3, 1.5e-3, 2e-3} (outer) x constant wd {8e-3, 4e-3, 2e-3, 1e-3, 5e-4}.
IN1K_HEADS = (head(1e-3, 1e-3, final_weight_decay=0.0),) + head_grid(
    lrs=(5e-4, 1e-3, 1.5e-3, 2e-3), weight_decays=(8e-3, 4e-3, 2e-3, 1e-3, 5e-4), lr_major=True, start_lr=2e-4,
    warmup=5.0)
HEADS = {"ssv2": VIDEO_HEADS, "k400": VIDEO_HEADS, "diving48": DIVING48_HEADS, "in1k": IN1K_HEADS}


def set_probe(config) -> None:
  """The V-JEPA 2 probe and optimizer on an eval config: 4 probe blocks, 16 heads, one AdamW group with weight
  decay on every parameter, no clipping. The per-head lr / wd settings are config.eval.heads, so the single-probe
  fields (eval.lr, final_lr, weight_decay, final_weight_decay) are removed: overriding them would do nothing."""
  e = config.eval
  for field in ("lr", "final_lr", "weight_decay", "final_weight_decay"):
    if field in e:
      del e[field]
  e.num_probe_blocks = 4
  e.probe_num_heads = 16
  e.decay_all_params = True
  e.clip_grad = 0.0
  e.probe_remat = True  # the official use_activation_checkpointing=True: K heads' blocks over 10^4 tokens


def get(model: str, task: str) -> ml_collections.ConfigDict:
  name, resolution, out_layers, image_frames = MODELS[model]
  frames, frame_step, segments, views, per_gpu_batch, gpus, epochs, tag = TASKS[(model, task)]
  config = base.get("vitl16", "in1k" if task == "in1k" else "ssv2")  # the shared fields; overridden below
  config.tag = tag
  config.checkpoint_key = "target_encoder"  # every V-JEPA 2 eval config; vitl.pt / vitg-384.pt hold it

  m = config.model
  m.name = name
  m.pos_embed = "rope"
  m.uniform_power = True  # as the eval configs say; with RoPE there is no sin-cos table for it to shape
  m.pred_num_heads = 12
  m.crop_size = resolution
  m.num_frames = image_frames if task == "in1k" else frames  # official vit(num_frames=frames_per_clip)

  e = config.eval
  e.num_classes = NUM_CLASSES[task]
  e.resolution = resolution
  e.num_segments, e.num_views = segments, views
  if task != "in1k":
    e.frames, e.frame_step = frames, frame_step
  e.batch_size = per_gpu_batch * gpus  # global
  e.epochs = epochs
  set_probe(config)
  e.heads = HEADS[task]
  e.out_layers = out_layers if task == "diving48" else ()
  return config
