"""The V-JEPA 2 recipe: shipped configs with the official values (docs/reference.md §9.3, §9.4), their schedules at
the official steps, the checks of the new fields, and the cooldown started through config.init_from (from a run
and from a file), resumed after a preemption from its own checkpoints."""
import csv
import os

import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from jepa_jax import checkpointing, config_files, config_validation, export, schedules, train, warm_start

PRETRAIN = {"vjepa2/vitl16_256": ("vit_large", 10), "vjepa2/vith16_256": ("vit_huge", 10),
            "vjepa2/vitg16_256": ("vit_giant_xformers", 800)}
# name: (model, crop, per-GPU batch x GPUs, epochs, ipe) of configs/train/vit*16/cooldown-*-64f.yaml
COOLDOWN = {"vjepa2/vitl16_256_cooldown": ("vit_large", 256, 12 * 256, 40, 300),
            "vjepa2/vith16_256_cooldown": ("vit_huge", 256, 12 * 256, 40, 300),
            "vjepa2/vitg16_256_cooldown": ("vit_giant_xformers", 256, 6 * 512, 4, 30),
            "vjepa2/vitg16_384_cooldown": ("vit_giant_xformers", 384, 6 * 512, 40, 300)}


def _common_v2_values(config):
  m, d, o = config.model, config.data, config.optim
  assert (m.pos_embed, m.depth_rescale_init, m.pred_depth, m.pred_embed_dim, m.pred_num_heads) == (
      "rope", True, 12, 384, 12)
  assert (m.num_mask_tokens, m.mask_token_rule, m.zero_init_mask_tokens, m.dtype) == (
      10, "frame_group", True, "bfloat16")
  assert (m.patch_size, m.tubelet_size) == (16, 2)
  assert d.datasets_weights == (0.335, 0.100, 0.565) and d.fps == 4.0 and len(d.datasets) == 3
  assert (d.random_resize_scale, d.random_resize_aspect_ratio) == ((0.3, 1.0), (0.75, 1.35))
  assert config.mask.num_blocks == (8, 2) and config.mask.spatial_scale == ((0.15, 0.15), (0.7, 0.7))
  assert config.mask.aspect_ratio == ((0.75, 1.5), (0.75, 1.5))
  assert (o.ipe_scale, o.lr, o.weight_decay, o.final_weight_decay, o.ema, o.clip_grad) == (
      1.25, 5.25e-4, 0.04, 0.04, (0.99925, 0.99925), 0.0)
  assert (o.betas, o.eps, config.loss.loss_exp, config.seed) == ((0.9, 0.999), 1e-8, 1.0, 239)


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_pretraining_configs_carry_the_official_values(name):
  config = config_files.load(name)
  model, epochs = PRETRAIN[name]
  _common_v2_values(config)
  assert (config.model.name, config.model.crop_size, config.model.num_frames, config.data.frames_per_clip) == (
      model, 256, 16, 16)
  o = config.optim
  assert (config.data.batch_size, o.ipe, o.epochs, o.warmup, o.start_lr, o.final_lr, o.lr_schedule) == (
      3072, 300, epochs, 40, 1e-4, 5.25e-4, "warmup_cosine")
  assert config.init_from == ""


@pytest.mark.parametrize("name", sorted(COOLDOWN))
def test_cooldown_configs_carry_the_official_values(name):
  config = config_files.load(name)
  model, crop, batch, epochs, ipe = COOLDOWN[name]
  _common_v2_values(config)
  assert (config.model.name, config.model.crop_size, config.model.num_frames, config.data.frames_per_clip) == (
      model, crop, 64, 64)
  o = config.optim
  assert (config.data.batch_size, o.epochs, o.ipe, o.warmup, o.final_lr, o.lr_schedule) == (
      batch, epochs, ipe, 0, 1e-6, "linear_decay")
  assert schedules.total_steps(o) == epochs * ipe


def _at(schedule_fn, optim_cfg, s):
  """The value our step s - 1 uses: the official scheduler's value at its step s."""
  return float(schedule_fn(optim_cfg)(jnp.int32(s - 1)))


# (config, official step s, lr): LinearDecaySchedule / WarmupCosineSchedule of src/utils/schedulers.py in float64.
OFFICIAL_LR = [
    ("vjepa2/vitl16_256", 1, 1e-4 + 1 / 12_000 * 4.25e-4),
    ("vjepa2/vitl16_256", 3_000, 1e-4 + 3_000 / 12_000 * 4.25e-4),  # the yaml's last step: still warming up
    ("vjepa2/vitg16_256", 11_999, 1e-4 + 11_999 / 12_000 * 4.25e-4),
    ("vjepa2/vitg16_256", 12_000, 5.25e-4),
    ("vjepa2/vitg16_256", 240_000, 5.25e-4),
    ("vjepa2/vitl16_256_cooldown", 1, 5.25e-4 + 1 / 15_000 * (1e-6 - 5.25e-4)),
    ("vjepa2/vith16_256_cooldown", 6_000, 5.25e-4 + 6_000 / 15_000 * (1e-6 - 5.25e-4)),
    ("vjepa2/vitg16_384_cooldown", 12_000, 5.25e-4 + 12_000 / 15_000 * (1e-6 - 5.25e-4)),  # ~1.058e-4
    ("vjepa2/vitg16_256_cooldown", 1, 5.25e-4 + 1 / 150 * (1e-6 - 5.25e-4)),
    ("vjepa2/vitg16_256_cooldown", 120, 5.25e-4 + 120 / 150 * (1e-6 - 5.25e-4)),
]


@pytest.mark.parametrize("name,s,lr", OFFICIAL_LR)
def test_shipped_schedules_at_the_official_steps(name, s, lr):
  o = config_files.load(name).optim
  assert _at(schedules.learning_rate_schedule, o, s) == pytest.approx(lr, rel=1e-6)
  assert _at(schedules.weight_decay_schedule, o, s) == pytest.approx(0.04, rel=1e-7)
  assert _at(schedules.ema_momentum_schedule, o, s) == pytest.approx(0.99925, rel=1e-7)
  assert not bool(schedules.clip_active(jnp.int32(s - 1), o))
  if name.endswith("cooldown") and s == schedules.total_steps(o):
    assert lr == pytest.approx(1.058e-4, rel=1e-9)  # [quirk, docs/reference.md §9.4] it stops at 80% of the ramp


@pytest.mark.parametrize("field,value,message", [
    ("model.pos_embed", "learned", "config.model.pos_embed='learned'; use 'sincos'"),
    ("model.mask_token_rule", "dataset", "config.model.mask_token_rule='dataset'"),
    ("model.num_mask_tokens", -1, "config.model.num_mask_tokens=-1 must be >= 0"),
    ("model.pred_num_heads", 96, r"needs a head dim of at least 6 .* 384 / 96 heads = 4; lower "
     "config.model.pred_num_heads"),
])
def test_new_model_fields_are_checked_with_the_field_named(field, value, message):
  config = config_files.load("vjepa2/vitl16_256")
  section, leaf = field.split(".")
  config[section][leaf] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate_model(config.model)


def test_a_cooldown_without_init_from_is_refused_before_anything_is_built():
  config = config_files.load("vjepa2/vitl16_256_cooldown")
  with pytest.raises(config_validation.ConfigError, match="set --config.init_from=PRETRAIN_WORKDIR"):
    config_validation.validate_pretrain_config(config, 8)


# ----------------------------------------------------------------------------------------------- the cooldown path

def _loop_config(videos, total_steps, **overrides):
  """The tiny V-JEPA 2 model (RoPE, its predictor and schedules) in the real loop on synthetic videos."""
  config = tiny.tiny_v2_config(**overrides)
  config.data.synthetic_videos = 0
  config.data.datasets = (str(videos / "videos" / "motion_train.csv"),)
  config.optim.total_steps = total_steps
  config.checkpoint.every_steps = 2
  config.checkpoint.async_save = False
  config.log_every = 1
  return config


def _cooldown_config(videos, source, total_steps):
  config = _loop_config(videos, total_steps)
  o = config.optim
  o.lr_schedule, o.warmup, o.final_lr, o.epochs = "linear_decay", 0, 1e-6, 2  # T = int(1.25 * 2 * 2) = 5
  config.init_from = str(source)
  return config


def _csv(workdir):
  with open(os.path.join(workdir, "jepa_r0.csv")) as f:
    return [{k: float(r[k]) for k in ("loss", "lr")} for r in csv.DictReader(f)]


def _adam_count(workdir):
  from jepa_jax import loading
  _, _, state = loading.read_run(workdir, ("opt_state",))
  return int(np.asarray(export.adam_state(state["opt_state"]).count))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  from input_pipeline import synthetic
  root = tmp_path_factory.mktemp("cooldown")
  synthetic.write_dataset(str(root / "videos"), 12, num_frames=24)
  train.train_and_evaluate(_loop_config(root, 3), str(root / "pretrain"))
  return root


@pytest.mark.slow
def test_cooldown_from_a_run_starts_its_schedule_at_zero_and_resumes_from_its_own_checkpoints(pretrained):
  root = pretrained
  straight = root / "cool_straight"
  train.train_and_evaluate(_cooldown_config(root, root / "pretrain", 4), str(straight))
  rows = _csv(straight)
  o = _cooldown_config(root, root / "pretrain", 4).optim
  # The linear decay starts at the official s = 1 (our step 0): not fast-forwarded by the source's 3 steps.
  official = [o.lr + s / 5 * (o.final_lr - o.lr) for s in range(1, 5)]  # LinearDecaySchedule, T_max 5
  np.testing.assert_allclose([r["lr"] for r in rows], official, rtol=1e-6)
  # Adam's step count carries over (3 in the source, + 4 here), as torch's per-parameter 'step' in the anneal.
  assert _adam_count(straight) == 3 + 4
  # Preempted after 2 steps, restarted with the same command: it resumes from its own step 2, not from init_from.
  resumed = root / "cool_resumed"
  train.train_and_evaluate(_cooldown_config(root, root / "pretrain", 2), str(resumed))
  assert checkpointing.Checkpointer(resumed).latest_step() == 2
  train.train_and_evaluate(_cooldown_config(root, root / "pretrain", 4), str(resumed))
  np.testing.assert_allclose([r["loss"] for r in _csv(resumed)], [r["loss"] for r in rows], rtol=1e-6)
  assert _adam_count(resumed) == 3 + 4


@pytest.mark.slow
def test_cooldown_from_a_file_equals_cooldown_from_the_run(pretrained, tmp_path):
  root = pretrained
  out = str(tmp_path / "pretrain.pth.tar")
  export.export_checkpoint(str(root / "pretrain"), out, with_optimizer=True)
  from_run, from_file = tmp_path / "from_run", tmp_path / "from_file"
  train.train_and_evaluate(_cooldown_config(root, root / "pretrain", 2), str(from_run))
  train.train_and_evaluate(_cooldown_config(root, out, 2), str(from_file))
  np.testing.assert_allclose([r["loss"] for r in _csv(from_file)], [r["loss"] for r in _csv(from_run)], rtol=1e-5)
  assert _adam_count(from_file) == _adam_count(from_run) == 3 + 2


def test_init_from_that_names_nothing_usable_is_a_clear_error(pretrained, tmp_path):
  config = _cooldown_config(pretrained, tmp_path / "nowhere", 2)
  with pytest.raises(warm_start.InitFromError, match="config.init_from=.*nowhere.*neither a run of ours"):
    train.train_and_evaluate(config, str(tmp_path / "w1"))
  other = _cooldown_config(pretrained, pretrained / "pretrain", 2)
  other.model.pred_depth = 2
  with pytest.raises(warm_start.InitFromError, match="config.model.pred_depth: 2 here, 1 in"):
    train.train_and_evaluate(other, str(tmp_path / "w2"))
  v1 = _cooldown_config(pretrained, pretrained / "pretrain", 2)
  v1.model.pos_embed = "sincos"
  with pytest.raises(warm_start.InitFromError, match="config.model.pos_embed='sincos' gives pos_embed sincos but the "
                     "run .* has rope"):
    train.train_and_evaluate(v1, str(tmp_path / "w3"))
