"""The schedules reproduce the official scheduler classes (docs/reference.md §4.3) step for step."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.configs import default
from jepa_jax import schedules


def official_values(cfg, num_steps):
  """float64 transcription of WarmupCosineSchedule, CosineWDSchedule and the momentum generator (docs/reference.md
  §4.3).

  Element s-1 is the value the official loop uses at its step s (counters are incremented before use).
  """
  ipe, epochs, scale = cfg.ipe, cfg.epochs, cfg.ipe_scale
  warmup_steps, t_max = int(cfg.warmup * ipe), int(scale * epochs * ipe)
  lrs, wds = [], []
  for s in range(1, num_steps + 1):
    if s < warmup_steps:
      lr = cfg.start_lr + s / max(1, warmup_steps) * (cfg.lr - cfg.start_lr)
    else:
      progress = (s - warmup_steps) / max(1, t_max - warmup_steps)
      lr = max(cfg.final_lr, cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    lrs.append(lr)
    wd = cfg.final_weight_decay + (cfg.weight_decay - cfg.final_weight_decay) * 0.5 * (
        1.0 + math.cos(math.pi * s / t_max))
    wd = min(cfg.final_weight_decay, wd) if cfg.final_weight_decay > cfg.weight_decay else max(
        cfg.final_weight_decay, wd)
    wds.append(wd)
  ema0, ema1 = cfg.ema
  gen = (ema0 + i * (ema1 - ema0) / (ipe * epochs * scale) for i in range(int(ipe * epochs * scale) + 1))
  emas = list(itertools.islice(gen, num_steps))  # shorter than num_steps past the generator's end
  return np.array(lrs), np.array(wds), np.array(emas)


@pytest.fixture(scope="module")
def cfg():
  return default.get_config().optim


# (official step s, lr, wd, ema momentum): the sample table of docs/reference.md §4.3.
REFERENCE_TABLE = [
    (1, 2.00035e-4, 0.04, 0.998),
    (12_000, 6.25e-4, 0.0500123, 0.998213),
    (45_000, 4.73204e-4, 0.164377, 0.9988),
    (90_000, 7.50422e-5, 0.365623, 0.9996),
]


@pytest.mark.parametrize("s,lr,wd,ema", REFERENCE_TABLE)
def test_schedules_match_reference_table(cfg, s, lr, wd, ema):
  step = jnp.int32(s - 1)  # our step k runs with the official s = k + 1
  np.testing.assert_allclose(schedules.learning_rate_schedule(cfg)(step), lr, rtol=1e-5)
  np.testing.assert_allclose(schedules.weight_decay_schedule(cfg)(step), wd, rtol=1e-5)
  np.testing.assert_allclose(schedules.ema_momentum_schedule(cfg)(step), ema, rtol=1e-6)


def test_schedules_match_official_classes_every_step(cfg):
  n = schedules.total_steps(cfg)
  lr_ref, wd_ref, ema_ref = official_values(cfg, n)
  steps = jnp.arange(n, dtype=jnp.int32)
  lr = jax.jit(jax.vmap(schedules.learning_rate_schedule(cfg)))(steps)
  wd = jax.jit(jax.vmap(schedules.weight_decay_schedule(cfg)))(steps)
  ema = jax.jit(jax.vmap(schedules.ema_momentum_schedule(cfg)))(steps)
  np.testing.assert_allclose(lr, lr_ref, rtol=2e-5)
  np.testing.assert_allclose(wd, wd_ref, rtol=2e-5)
  np.testing.assert_allclose(ema, ema_ref, rtol=1e-6)
  assert ema[0] == np.float32(0.998)  # the first EMA update uses exactly ema0


def test_schedules_on_the_other_side_of_the_clamps():
  """A config where the cosine passes final (ipe_scale 1) and wd rises: both clamps hold."""
  cfg = default.get_config().optim
  cfg.ipe, cfg.epochs, cfg.warmup, cfg.ipe_scale = 10, 4, 1, 1.0
  lr_ref, wd_ref, ema_ref = official_values(cfg, 50)
  steps = jnp.arange(50, dtype=jnp.int32)
  np.testing.assert_allclose(jax.vmap(schedules.learning_rate_schedule(cfg))(steps), lr_ref, rtol=2e-5)
  np.testing.assert_allclose(jax.vmap(schedules.weight_decay_schedule(cfg))(steps), wd_ref, rtol=2e-5)
  # The official generator stops after int(ipe epochs ipe_scale)+1 values; we hold the last one.
  np.testing.assert_allclose(jax.vmap(schedules.ema_momentum_schedule(cfg))(steps)[:41], ema_ref, rtol=1e-6)
  assert float(schedules.ema_momentum_schedule(cfg)(49)) == pytest.approx(1.0)


def test_total_steps(cfg):
  assert schedules.total_steps(cfg) == 90_000
  cfg2 = default.get_config().optim
  cfg2.total_steps = 123
  assert schedules.total_steps(cfg2) == 123


def test_clipping_starts_after_warmup_epochs(cfg):
  # Official: clip when 0-based epoch > warmup (40), i.e. from 0-based iteration 41 * 300 = 12,300 (docs/reference.md
  # §4.2 step 6).
  active = jax.vmap(lambda k: schedules.clip_active(k, cfg))(jnp.arange(13_000, dtype=jnp.int32))
  assert int(jnp.argmax(active)) == 12_300
  assert not bool(active[12_299]) and bool(active[12_300:].all())
  always = default.get_config().optim
  always.clip_always = True
  assert bool(schedules.clip_active(jnp.int32(0), always))


# ------------------------------------------------------------------------------- V-JEPA 2 (docs/reference.md §

def _vjepa2_optim(epochs, ipe=300, lr_schedule="warmup_cosine", final_lr=5.25e-4, warmup=40):
  """configs/train/vit{l,h,g}16/{pretrain,cooldown}-*.yaml: start_lr 1e-4, lr 5.25e-4, wd 0.04 constant,
  ema 0.99925 constant, ipe_scale 1.25, no clipping."""
  cfg = default.get_config().optim
  cfg.ipe, cfg.epochs, cfg.ipe_scale, cfg.warmup = ipe, epochs, 1.25, warmup
  cfg.start_lr, cfg.lr, cfg.final_lr = 1e-4, 5.25e-4, final_lr
  cfg.weight_decay = cfg.final_weight_decay = 0.04
  cfg.ema = (0.99925, 0.99925)
  cfg.clip_grad = 0.0
  cfg.lr_schedule = lr_schedule
  return cfg


def official_linear_decay(cfg, num_steps):
  """float64 transcription of LinearDecaySchedule (src/utils/schedulers.py): element s-1 is the value at step s."""
  t_max = int(cfg.ipe_scale * cfg.epochs * cfg.ipe)
  return np.array([cfg.lr + s / max(1, t_max) * (cfg.final_lr - cfg.lr) for s in range(1, num_steps + 1)])


# (official step s, lr) of the ViT-g pretraining (800 epochs x 300): warmup 1e-4 -> 5.25e-4 over 12,000 steps.
VJEPA2_PRETRAIN = [(1, 1.0003541667e-4), (6_000, 3.125e-4), (11_999, 5.2496458e-4), (12_000, 5.25e-4),
                   (240_000, 5.25e-4)]


@pytest.mark.parametrize("s,lr", VJEPA2_PRETRAIN)
def test_vjepa2_pretraining_warmup_then_constant(s, lr):
  cfg = _vjepa2_optim(epochs=800)
  step = jnp.int32(s - 1)
  np.testing.assert_allclose(schedules.learning_rate_schedule(cfg)(step), lr, rtol=1e-6)
  assert float(schedules.weight_decay_schedule(cfg)(step)) == np.float32(0.04)
  assert float(schedules.ema_momentum_schedule(cfg)(step)) == np.float32(0.99925)
  assert not bool(schedules.clip_active(step, cfg))


def test_vjepa2_pretraining_matches_the_official_classes_every_step():
  cfg = _vjepa2_optim(epochs=800)
  n = 13_000  # warmup and past it
  lr_ref, wd_ref, ema_ref = official_values(cfg, n)
  steps = jnp.arange(n, dtype=jnp.int32)
  np.testing.assert_allclose(jax.jit(jax.vmap(schedules.learning_rate_schedule(cfg)))(steps), lr_ref, rtol=2e-6)
  np.testing.assert_array_equal(jax.vmap(schedules.weight_decay_schedule(cfg))(steps), np.float32(wd_ref))
  np.testing.assert_array_equal(jax.vmap(schedules.ema_momentum_schedule(cfg))(steps), np.float32(ema_ref))
  assert set(np.float32(lr_ref[12_000 - 1:])) == {np.float32(5.25e-4)}  # constant after warmup


def test_vjepa2_vitl_pretraining_config_never_leaves_warmup():
  # configs/train/vitl16/pretrain-256px-16f.yaml says epochs 10: 3,000 steps, all inside the 12,000-step warmup.
  cfg = _vjepa2_optim(epochs=10)
  assert schedules.total_steps(cfg) == 3_000
  lr = jax.vmap(schedules.learning_rate_schedule(cfg))(jnp.arange(3_000, dtype=jnp.int32))
  np.testing.assert_allclose(lr, official_values(cfg, 3_000)[0], rtol=2e-6)
  assert float(lr[-1]) == pytest.approx(1e-4 + 3_000 / 12_000 * 4.25e-4, rel=1e-6)


# (ipe, epochs, official step s, lr): cooldown ViT-L/H and ViT-g-384 (40 x 300, T_max 15,000) and ViT-g-256
# (4 x 30, T_max 150); both stop at 80% of the ramp, near 1.058e-4.
VJEPA2_COOLDOWN = [(300, 40, 1, 5.2496507e-4), (300, 40, 6_000, 3.154e-4), (300, 40, 12_000, 1.058e-4),
                   (30, 4, 1, 5.2150667e-4), (30, 4, 120, 1.058e-4)]


@pytest.mark.parametrize("ipe,epochs,s,lr", VJEPA2_COOLDOWN)
def test_vjepa2_cooldown_linear_decay_at_official_steps(ipe, epochs, s, lr):
  cfg = _vjepa2_optim(epochs=epochs, ipe=ipe, lr_schedule="linear_decay", final_lr=1e-6, warmup=0)
  np.testing.assert_allclose(schedules.learning_rate_schedule(cfg)(jnp.int32(s - 1)), lr, rtol=1e-5)
  assert schedules.total_steps(cfg) == ipe * epochs


def test_vjepa2_cooldown_matches_the_official_class_every_step():
  cfg = _vjepa2_optim(epochs=40, lr_schedule="linear_decay", final_lr=1e-6, warmup=0)
  n = schedules.total_steps(cfg)
  lr = jax.jit(jax.vmap(schedules.learning_rate_schedule(cfg)))(jnp.arange(n, dtype=jnp.int32))
  np.testing.assert_allclose(lr, official_linear_decay(cfg, n), rtol=1e-5)
  assert float(lr[-1]) == pytest.approx(1.058e-4, rel=1e-5)  # the quirk: far from final_lr 1e-6


def test_linear_decay_refuses_a_warmup_and_unknown_schedules_are_named():
  cfg = _vjepa2_optim(epochs=40, lr_schedule="linear_decay", final_lr=1e-6, warmup=40)
  with pytest.raises(ValueError, match="config.optim.warmup=40"):
    schedules.learning_rate_schedule(cfg)
  cfg.lr_schedule = "cosine"
  with pytest.raises(ValueError, match="config.optim.lr_schedule='cosine'"):
    schedules.learning_rate_schedule(cfg)


def test_clip_grad_zero_never_clips_and_negative_is_refused():
  cfg = _vjepa2_optim(epochs=800)
  cfg.clip_always = True
  active = jax.vmap(lambda k: schedules.clip_active(k, cfg))(jnp.arange(0, 20_000, 97, dtype=jnp.int32))
  assert not bool(active.any())
  cfg.clip_grad = -1.0
  with pytest.raises(ValueError, match="config.optim.clip_grad=-1.0"):
    schedules.clip_active(jnp.int32(0), cfg)


def test_v1_default_is_unchanged_by_the_new_fields(cfg):
  assert cfg.lr_schedule == "warmup_cosine" and cfg.clip_grad == 10.0
  legacy = default.get_config().optim
  del legacy["lr_schedule"]  # a config saved before the field existed
  steps = jnp.arange(0, 90_000, 7, dtype=jnp.int32)
  np.testing.assert_array_equal(jax.vmap(schedules.learning_rate_schedule(legacy))(steps),
                                jax.vmap(schedules.learning_rate_schedule(cfg))(steps))
