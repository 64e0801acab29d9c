"""The schedules reproduce the official scheduler classes (reference §4.3) step for step."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.configs import default
from jepa_jax import schedules


def official_values(cfg, num_steps):
  """float64 transcription of WarmupCosineSchedule, CosineWDSchedule and the momentum generator (§4.3).

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


# (official step s, lr, wd, ema momentum): the sample table of reference §4.3.
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
  # Official: clip when 0-based epoch > warmup (40), i.e. from 0-based iteration 41 * 300 = 12,300 (§4.2 step 6).
  active = jax.vmap(lambda k: schedules.clip_active(k, cfg))(jnp.arange(13_000, dtype=jnp.int32))
  assert int(jnp.argmax(active)) == 12_300
  assert not bool(active[12_299]) and bool(active[12_300:].all())
  always = default.get_config().optim
  always.clip_always = True
  assert bool(schedules.clip_active(jnp.int32(0), always))
