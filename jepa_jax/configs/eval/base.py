"""Shared builder of the frozen-evaluation configs (docs/reference.md §6.4): configs/eval/<model>_<task>.py call get().

An eval config is a pretraining config's `model` and `mesh` (so the encoder is built exactly as it was
pretrained) plus `eval`, the probe recipe. `pretrained` is a workdir of ours or an official .pth.tar; the
encoder read from it is `checkpoint_key` ('target_encoder', as every official eval config, or 'encoder').

Official values shared by every task: 20 epochs, lr 1e-3 cosine to 0 without warmup, weight decay cosine to
1e-6 whatever the config says ([quirk] final_wd is not read, docs/reference.md §6.2), grad clip 1.0, 16 frames with
step 4 (read from pretrain.frame_step), encoder built with 16 frames, tubelet 2, uniform_power.
"""
import ml_collections

from jepa_jax.configs import default

# task -> (num_classes, global batch, weight decay, segments, views, write tag); reference 6.4.
TASKS = {
    "k400": (400, 256, 0.01, 8, 3, "k400-16x8x3"),
    "ssv2": (174, 256, 0.01, 2, 3, "ssv2-16x2x3"),
    "in1k": (1000, 1024, 0.001, 1, 1, "in1k-16f"),
}
MODELS = {"vitl16": ("vit_large", 224), "vith16": ("vit_huge", 224), "vith16_384": ("vit_huge", 384)}


def get(model: str, task: str) -> ml_collections.ConfigDict:
  name, resolution = MODELS[model]
  num_classes, batch_size, weight_decay, segments, views, tag = TASKS[task]
  pretrain = default.get_config()
  config = ml_collections.ConfigDict()
  config.mode = "probe"
  config.seed = 0
  config.pretrained = ""  # our pretraining workdir, or an official .pth.tar (e.g. vitl16.pth.tar)
  config.checkpoint_key = "target_encoder"  # which encoder: 'target_encoder' (official) or 'encoder'
  config.write_tag = "probe"  # CSV {workdir}/{write_tag}_r0.csv
  config.tag = tag

  config.model = pretrain.model
  config.model.name = name
  config.model.crop_size = resolution
  config.model.num_frames = 16  # pretrain.frames_per_clip
  config.mesh = pretrain.mesh

  config.eval = e = ml_collections.ConfigDict()
  e.task = "image" if task == "in1k" else "video"
  # video: official-format lists ('path label' per line); image: image_folder with train/ and val/ inside, or
  # a TFDS dataset name (tfds_name, tfds_data_dir) prepared as array_record.
  e.train = ""
  e.val = ""
  e.image_folder = ""
  e.tfds_name = ""
  e.tfds_data_dir = ""
  # Non-empty (e.g. "motion"): empty train/val default to PRETRAINED/data/<name>_{train,val}.csv (the demo's data).
  e.lists_from_pretrained_data = ""
  e.num_classes = num_classes
  e.num_segments = segments
  e.num_views = views
  e.attend_across_segments = True
  e.frames = 16
  e.frame_step = 4  # [quirk] the official eval reads pretrain.frame_step, not data.frame_step (both 4)
  e.resolution = resolution
  e.batch_size = batch_size  # global (official: 64 GPUs x per-GPU batch)
  e.epochs = 20
  e.lr = 1e-3
  e.final_lr = 0.0
  e.weight_decay = weight_decay
  e.final_weight_decay = 1e-6  # [quirk] hard-coded in the official eval, docs/reference.md §6.2
  e.clip_grad = 1.0
  e.probe_num_heads = 0  # 0: the encoder's heads (16 for ViT-L/H), as the official AttentiveClassifier
  # The probe and protocol fields V-JEPA 2 sets (configs/eval/vjepa2/common.py); these values are V-JEPA 1's.
  e.num_probe_blocks = 1  # 1: the cross-attention block alone; 4: three self-attention blocks before it
  e.heads = ()  # probes trained together, one dict each (eval_config.probe_heads); (): one, from lr / weight_decay
  e.decay_all_params = False  # False: the V-JEPA 1 groups (no decay on biases, norms); True: one group, all decayed
  e.out_layers = ()  # encoder blocks whose normed outputs are joined along the tokens; (): the last block's
  e.probe_checkpoint = ""  # a probe file or probe run: evaluate its probes on the val split only, no training
  e.probe_remat = False  # recompute the probe blocks' activations in the backward pass (memory; same numbers)
  # Official training transform (docs/reference.md §6.2 / §6.3); the demo shrinks the crop scale for 64-pixel videos.
  e.random_resize_scale = (0.08, 1.0)
  e.auto_augment = True
  e.reprob = 0.25
  e.num_workers = 8
  # Unreadable or too-short videos are dropped, warned about and counted (the CSV's `skipped`); past this share of
  # a split's decodes the probe stops with an error (pretraining's data.max_failure_fraction).
  e.max_failure_fraction = 0.5
  return config
