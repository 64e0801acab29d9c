"""Checkpoints round-trip the sharded train state and the data position, and survive a killed save."""
import os
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jepa_jax import checkpointing


def make_state(mesh, seed=0):
  """A train state shaped like ours: int layer keys, optax namedtuples, fsdp-sharded kernels."""
  k = jax.random.split(jax.random.key(seed), 4)
  params = {
      "encoder": {"blocks": {0: {"attn": {"qkv": {"kernel": jax.random.normal(k[0], (16, 24)),
                                                  "bias": jnp.zeros(24)}}},
                             1: {"attn": {"qkv": {"kernel": jax.random.normal(k[1], (16, 24)),
                                                  "bias": jnp.ones(24)}}}}},
      "predictor": {"mask_tokens": {0: jax.random.normal(k[2], (1, 1, 8)), 1: jnp.zeros((1, 1, 8))},
                    "predictor_proj": {"kernel": jax.random.normal(k[3], (8, 16))}},
  }
  tx = optax.adamw(1e-3)
  state = {"step": jnp.int32(7), "params": params, "target_encoder": params["encoder"],
           "opt_state": tx.init(params)}
  sh = jax.tree.map(lambda a: NamedSharding(mesh, P("fsdp") if a.ndim >= 2 and a.shape[0] % 4 == 0 else P()),
                    state)
  return jax.device_put(state, sh), sh


def abstract_of(state, sh):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, sh)


@pytest.fixture
def mesh():
  return jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=3).map(lambda x: x * 2).batch(4).to_iter_dataset())


def test_round_trip_keeps_values_structure_and_shardings(tmp_path, mesh):
  state, sh = make_state(mesh)
  with checkpointing.Checkpointer(tmp_path, keep=2, async_save=True, every_steps=5) as ckpt:
    assert ckpt.latest_step() is None
    assert not ckpt.should_save(3) and ckpt.should_save(5)
    assert ckpt.save(5, state, config={"model": {"name": "vit_tiny"}, "mask": {"num_blocks": (8, 2)}})
    ckpt.wait()
    restored = ckpt.restore(abstract_of(state, sh))
    assert ckpt.restore_config()["mask"]["num_blocks"] == [8, 2]
  assert jax.tree.structure(restored) == jax.tree.structure(state)  # int keys, ScaleByAdamState namedtuples
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding
  kernel = restored["opt_state"][0].mu["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"]
  assert kernel.sharding.spec == P("fsdp") and len(kernel.addressable_shards) == 8


def test_iterator_position_round_trips(tmp_path, mesh):
  state, sh = make_state(mesh)
  it = data_iterator()
  for _ in range(3):
    next(it)
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, async_save=True, every_steps=1)
  ckpt.save(3, state, data_iterator=it)
  expected = [next(it) for _ in range(2)]  # advancing after save() must not leak into the checkpoint
  ckpt.wait()
  fresh = data_iterator()
  ckpt.restore(abstract_of(state, sh), data_iterator=fresh)
  ckpt.close()
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)


def test_keeps_only_the_last_k(tmp_path, mesh):
  state, _ = make_state(mesh)
  with checkpointing.Checkpointer(tmp_path, keep=2, async_save=True, every_steps=10) as ckpt:
    for step in (10, 20, 30, 40):
      ckpt.save(step, state)
    assert not ckpt.save(41, state)  # not a save step
    assert ckpt.save(41, state, force=True)  # e.g. preemption or the final step
    ckpt.wait()
    assert ckpt.all_steps() == [40, 41]
    assert ckpt.latest_step() == 41


def test_unfinished_save_leaves_previous_checkpoint_latest(tmp_path, mesh):
  """What orbax leaves after SIGKILL mid-write: a temporary step folder that is never renamed into place."""
  state, sh = make_state(mesh)
  with checkpointing.Checkpointer(tmp_path, keep=3, every_steps=10) as ckpt:
    ckpt.save(10, state)
  partial = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1700000000000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "partial_shard").write_bytes(b"\x00" * 100)
  with checkpointing.Checkpointer(tmp_path, keep=3, every_steps=10) as ckpt:
    assert ckpt.latest_step() == 10
    restored = ckpt.restore(abstract_of(state, sh))
    np.testing.assert_array_equal(restored["params"]["encoder"]["blocks"][1]["attn"]["qkv"]["kernel"],
                                  state["params"]["encoder"]["blocks"][1]["attn"]["qkv"]["kernel"])
    ckpt.save(20, state)  # the step number of the broken save can be saved again
    ckpt.wait()
    assert ckpt.latest_step() == 20


def test_process_killed_during_async_save(tmp_path):
  """A real SIGKILL right after an async save starts: the step before stays the latest and restorable."""
  script = textwrap.dedent(f"""
      import os, signal
      import jax, jax.numpy as jnp
      from jepa_jax import checkpointing
      ckpt = checkpointing.Checkpointer({str(tmp_path)!r}, keep=3, async_save=True, every_steps=1)
      small = {{"w": jnp.arange(8.0)}}
      ckpt.save(1, small); ckpt.wait()
      big = {{"w": jnp.ones((4096, 4096))}}  # 64 MiB: still being written when the process dies
      ckpt.save(2, big)
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                        capture_output=True, timeout=120)
  assert proc.returncode == -9, proc.stderr.decode()[-2000:]
  with checkpointing.Checkpointer(tmp_path, keep=3, every_steps=1) as ckpt:
    assert ckpt.latest_step() == 1
    restored = ckpt.restore({"w": jax.ShapeDtypeStruct((8,), jnp.float32,
                                                        sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})
    np.testing.assert_array_equal(restored["w"], np.arange(8.0))


def test_restore_params_only_skips_optimizer_state(tmp_path, mesh):
  state, sh = make_state(mesh)
  with checkpointing.Checkpointer(tmp_path, keep=1, every_steps=1) as ckpt:
    ckpt.save(1, state)
  subset = {"params": abstract_of(state["params"], sh["params"]),
            "target_encoder": abstract_of(state["target_encoder"], sh["target_encoder"])}
  restored = checkpointing.restore_params_only(tmp_path, subset)
  assert set(restored) == {"params", "target_encoder"}
  assert jax.tree.structure(restored["params"]) == jax.tree.structure(state["params"])
  got = restored["params"]["predictor"]["mask_tokens"][0]
  np.testing.assert_array_equal(got, state["params"]["predictor"]["mask_tokens"][0])
  assert restored["target_encoder"]["blocks"][0]["attn"]["qkv"]["kernel"].sharding.spec == P("fsdp")


def test_sigterm_sets_the_preemption_flag(tmp_path):
  import signal
  ckpt = checkpointing.Checkpointer(tmp_path, keep=1, every_steps=1)
  ckpt.install_sigterm_handler()
  try:
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.reached_preemption(2) and ckpt.should_stop(2)
  finally:
    ckpt.close()
  assert signal.getsignal(signal.SIGTERM) is not None
