"""The train step: sharded equals single-device, accumulation equals one big batch, EMA and loss as specified."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jepa_jax import optim
from jepa_jax import sharding
from jepa_jax import train_state
from jepa_jax import train_step as train_step_lib
import tiny


def _setup(config):
  defs = train_state.model_defs(config)
  tx = optim.make_optimizer(config.optim)
  fns = train_step_lib.make_step_functions(config, defs.encoder_def, defs.predictor_def, tx)
  return defs, tx, fns


def _single_device_losses(config, batches):
  defs, tx, fns = _setup(config)
  state = jax.jit(lambda: train_state.state_from_params(train_state.init_params(config, 0), tx))()
  step = jax.jit(functools.partial(train_step_lib.train_step, fns=fns))
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), state


def _sharded_losses(config, batches, mesh_shape):
  config.mesh.shape = mesh_shape
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  defs, tx, fns = _setup(config)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state_sh = train_state.state_shardings(defs, tx, mesh, rules)
    state = train_state.create_train_state(config, tx, state_sh, seed=0)
    step = jax.jit(functools.partial(train_step_lib.train_step, fns=fns),
                   in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.host_local_batch_to_global(batch, mesh))
      losses.append(float(metrics["loss"]))
  return np.array(losses), state


@pytest.fixture(scope="module")
def reference():
  config = tiny.tiny_config()
  batches = tiny.random_batches(config, 5)
  losses, _ = _single_device_losses(config, batches)
  return config, batches, losses


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_losses_equal_single_device(reference, mesh_shape):
  config, batches, expected = reference
  losses, state = _sharded_losses(config.copy_and_resolve_references(), batches, mesh_shape)
  np.testing.assert_allclose(losses, expected, rtol=1e-5)
  assert np.all(np.diff(expected) != 0)  # the steps really changed the model
  _check_sharded(state, mesh_shape)


def test_scanned_layers_on_the_three_axis_mesh_equal_single_device(reference):
  config, batches, _ = reference
  config = config.copy_and_resolve_references()
  config.model.scan_layers = True
  expected, _ = _single_device_losses(config, batches)
  losses, state = _sharded_losses(config, batches, (2, 2, 2))
  np.testing.assert_allclose(losses, expected, rtol=1e-5)
  _check_sharded(state, (2, 2, 2))
  stacked = state["params"]["encoder"]["blocks"]["attn"]["qkv"]["kernel"]
  assert stacked.sharding.spec[0] is None  # the layer axis is never sharded


def _qkv_kernel(encoder):
  blocks = encoder["blocks"]
  return (blocks[0] if 0 in blocks else blocks)["attn"]["qkv"]["kernel"]


def _check_sharded(state, mesh_shape):
  qkv = _qkv_kernel(state["params"]["encoder"])
  spec = qkv.sharding.spec
  if mesh_shape[1] > 1:
    assert "fsdp" in jax.tree.leaves(tuple(spec)), spec
    assert qkv.addressable_shards[0].data.size < qkv.size
  if mesh_shape[2] > 1:
    assert "tensor" in jax.tree.leaves(tuple(spec)), spec
  assert _qkv_kernel(state["target_encoder"]).sharding.spec == spec


def test_grad_accumulation_equals_one_batch():
  config = tiny.tiny_config()
  batch = tiny.random_batches(config, 1)[0]
  params = train_state.init_params(config, 0)
  results = []
  for accum in (1, 2, 4):
    config.optim.grad_accum_steps = accum
    _, _, fns = _setup(config)
    (loss, aux), grads = jax.jit(train_step_lib.loss_and_grads, static_argnums=3)(
        params, params["encoder"], batch, fns)
    results.append((float(loss), grads))
  for loss, grads in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(results[0][1])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def test_ema_update_and_schedules_in_metrics():
  config = tiny.tiny_config()
  batches = tiny.random_batches(config, 1)
  defs, tx, fns = _setup(config)
  state = train_state.state_from_params(train_state.init_params(config, 0), tx)
  before_target = jax.tree.map(np.array, state["target_encoder"])
  new_state, metrics = jax.jit(functools.partial(train_step_lib.train_step, fns=fns))(state, batches[0])
  m = float(metrics["ema_momentum"])
  assert m == pytest.approx(config.optim.ema[0])
  expected = jax.tree.map(lambda t, p: m * t + (1 - m) * np.asarray(p), before_target,
                          new_state["params"]["encoder"])
  for a, b in zip(jax.tree.leaves(new_state["target_encoder"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert int(new_state["step"]) == 1
  assert float(metrics["lr"]) == pytest.approx(
      config.optim.start_lr + (config.optim.lr - config.optim.start_lr) / (config.optim.warmup * config.optim.ipe))


def test_loss_is_l1_against_layer_normed_target():
  """Loss recomputed by hand from the modules, generator by generator."""
  config = tiny.tiny_config()
  batch = tiny.random_batches(config, 1)[0]
  defs, tx, fns = _setup(config)
  params = train_state.init_params(config, 1)
  target_params = jax.tree.map(lambda x: x * 1.01, params["encoder"])
  loss, aux = train_step_lib.jepa_loss(params, target_params, batch, fns)
  enc = nnx.merge(defs.encoder_def, params["encoder"])
  tgt = nnx.merge(defs.encoder_def, target_params)
  pred = nnx.merge(defs.predictor_def, params["predictor"])
  x = (batch["clips"].astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  h = np.asarray(tgt(jnp.asarray(x, jnp.float32)))
  h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
  per_gen = []
  for i, (c, t) in enumerate(zip(batch["context_masks"], batch["target_masks"])):
    p = np.asarray(pred(enc(jnp.asarray(x, jnp.float32), keep_indices=c), c, t, mask_index=i))
    per_gen.append(np.abs(p - np.take_along_axis(h, t[..., None], axis=1)).mean())
  np.testing.assert_allclose(float(aux["loss_jepa"]), np.mean(per_gen), rtol=1e-5)
  np.testing.assert_allclose(float(loss), np.mean(per_gen), rtol=1e-5)  # reg_coeff = 0
