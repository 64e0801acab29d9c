"""Checkpoints round-trip the sharded train state and the data position, survive a killed save, a damaged step
and a full disk, and stop on SIGTERM at a step every process agrees on."""
import glob
import logging
import os
import shutil
import signal
import socket
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
from small_disk import resize, small_disk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert not partial.exists()  # removed at start: it holds space and is never restored
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


def test_sigterm_sets_the_preemption_flag_and_close_puts_the_previous_handler_back(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  ckpt = checkpointing.Checkpointer(tmp_path, keep=1, every_steps=1)
  ckpt.install_sigterm_handler()
  try:
    assert signal.getsignal(signal.SIGTERM) is not before
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.reached_preemption(2) and ckpt.should_stop(2)
  finally:
    ckpt.close()
  assert signal.getsignal(signal.SIGTERM) is before


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_under_jax_distributed_sigterm_is_left_to_jax_and_stops_at_the_agreed_step(tmp_path):
  """jax.distributed starts JAX's preemption sync manager, whose notifier owns SIGTERM: we install no Python
  handler (it would replace JAX's), and reached_preemption turns true at the sync step JAX chose."""
  script = textwrap.dedent(f"""
      import os, signal, time
      import jax, jax.numpy as jnp
      jax.distributed.initialize(coordinator_address="127.0.0.1:{_free_port()}", num_processes=1, process_id=0)
      from jepa_jax import checkpointing
      ckpt = checkpointing.Checkpointer({str(tmp_path)!r}, keep=2, every_steps=1000)
      ckpt.install_sigterm_handler()
      print("python handler installed:", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
      step = 0
      while step < 20000:
        step += 1
        if step == 5:
          os.kill(os.getpid(), signal.SIGTERM)
        if ckpt.should_stop(step):
          ckpt.save(step, {{"w": jnp.arange(4.0) + step}}, force=True)
          print("stopped at", step, flush=True)
          break
        time.sleep(0.005)
      ckpt.close()
  """)
  proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "python handler installed: False" in proc.stdout
  assert "SIGTERM caught" in proc.stderr  # JAX's own notifier saw it
  stopped = int(proc.stdout.split("stopped at")[1].split()[0])
  assert stopped > 5  # the sync point is after the step the signal came in
  with checkpointing.Checkpointer(tmp_path, read_only=True) as ckpt:
    assert ckpt.latest_step() == stopped


# --- damaged checkpoints ---------------------------------------------------------------------------------------

def _array_files(step_dir):
  """The OCDBT data files of a step's state: the merged tree under state/d and each process's own."""
  return glob.glob(f"{step_dir}/state/d/*") + glob.glob(f"{step_dir}/state/ocdbt.process_*/d/*")


def _biggest(step_dir):
  return max(_array_files(step_dir), key=os.path.getsize)


def _truncate(path, size):
  with open(path, "r+b") as f:
    f.truncate(size)


DAMAGE = {  # what a crash, a full disk or a bad copy leaves in a step folder, done to the real files
    "truncated array files": lambda d: [_truncate(p, os.path.getsize(p) // 2) for p in _array_files(d)],
    "empty array file": lambda d: _truncate(_biggest(d), 0),
    "missing array files": lambda d: [os.remove(p) for p in _array_files(d)],
    "truncated state manifest": lambda d: _truncate(f"{d}/state/manifest.ocdbt", 10),
    "state metadata not JSON": lambda d: _truncate(f"{d}/state/_METADATA", 20),
    "iterator position not JSON": lambda d: _truncate(f"{d}/data_iter/process_0-of-1.json", 5),
    "config not JSON": lambda d: _truncate(f"{d}/config/metadata", 3),
    "checkpoint metadata not JSON": lambda d: _truncate(f"{d}/_CHECKPOINT_METADATA", 7),
    "half-written folder without state": lambda d: shutil.rmtree(f"{d}/state"),
}


def _save_steps(directory, mesh, steps, keep=3):
  """Real saves of distinct states (seed = step) with the iterator advanced one batch per step."""
  it = data_iterator()
  with checkpointing.Checkpointer(directory, keep=keep, async_save=True, every_steps=1) as ckpt:
    for step in steps:
      next(it)
      state, sh = make_state(mesh, seed=step)
      ckpt.save(step, state, data_iterator=it, config={"step": step})
  return sh


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_is_reported_set_aside_and_the_previous_one_restored(tmp_path, mesh, caplog, damage):
  sh = _save_steps(tmp_path, mesh, (1, 2, 3))
  DAMAGE[damage](str(tmp_path / "checkpoints" / "3"))
  fresh = data_iterator()
  with caplog.at_level(logging.WARNING), checkpointing.Checkpointer(tmp_path, keep=3) as ckpt:
    restored = ckpt.restore(abstract_of(make_state(mesh)[0], sh), data_iterator=fresh)
    assert ckpt.restored_step == 2 and ckpt.all_steps() == [1, 2]
  want, _ = make_state(mesh, seed=2)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  expected_iter = data_iterator()
  for _ in range(2):
    next(expected_iter)
  np.testing.assert_array_equal(next(fresh), next(expected_iter))  # the data position of step 2
  warnings = [r.getMessage() for r in caplog.records if "step 3" in r.getMessage() and "cannot be read" in
              r.getMessage()]
  assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
  assert (tmp_path / "checkpoints" / "3.unreadable").is_dir()  # kept for inspection, not deleted


def test_a_set_aside_step_never_makes_max_to_keep_delete_the_good_one(tmp_path, mesh):
  """keep=2 with steps 1 and a damaged 2: had step 2 stayed in the listing, saving step 3 would delete step 1,
  the only readable one."""
  sh = _save_steps(tmp_path, mesh, (1, 2), keep=2)
  DAMAGE["truncated array files"](str(tmp_path / "checkpoints" / "2"))
  with checkpointing.Checkpointer(tmp_path, keep=2, async_save=False, every_steps=1) as ckpt:
    ckpt.restore(abstract_of(make_state(mesh)[0], sh))
    assert ckpt.restored_step == 1
    ckpt.save(3, make_state(mesh, seed=3)[0])
    assert ckpt.all_steps() == [1, 3]
    again = ckpt.restore(abstract_of(make_state(mesh)[0], sh), step=1)
  np.testing.assert_array_equal(again["params"]["predictor"]["mask_tokens"][0],
                                make_state(mesh, seed=1)[0]["params"]["predictor"]["mask_tokens"][0])


def test_no_readable_step_is_one_clear_error_and_nothing_is_moved(tmp_path, mesh):
  sh = _save_steps(tmp_path, mesh, (1, 2))
  DAMAGE["state metadata not JSON"](str(tmp_path / "checkpoints" / "2"))
  DAMAGE["missing array files"](str(tmp_path / "checkpoints" / "1"))
  with checkpointing.Checkpointer(tmp_path, keep=3) as ckpt:
    with pytest.raises(checkpointing.NoReadableCheckpointError, match=r"step 2: state/_METADATA is not valid JSON"
                       r".*step 1: ") as error:
      ckpt.restore(abstract_of(make_state(mesh)[0], sh))
  assert "Nothing was moved or deleted" in str(error.value)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_readers_fall_back_without_moving_anything(tmp_path, mesh):
  """Export and evaluation read beside a live run: they skip a damaged step but leave it where it is."""
  sh = _save_steps(tmp_path, mesh, (1, 2))
  DAMAGE["missing array files"](str(tmp_path / "checkpoints" / "2"))
  subset = {"params": abstract_of(make_state(mesh)[0]["params"], sh["params"])}
  restored = checkpointing.restore_params_only(tmp_path, subset)
  np.testing.assert_array_equal(restored["params"]["predictor"]["mask_tokens"][0],
                                make_state(mesh, seed=1)[0]["params"]["predictor"]["mask_tokens"][0])
  assert checkpointing.Checkpointer(tmp_path, read_only=True).restore_config() == {"step": 2}
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


# --- full disk -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("async_save", [False, True])
def test_full_disk_names_workdir_step_and_bytes_keeps_the_last_step_and_resumes_after_space_is_freed(
    tmp_path, async_save):
  """A real small file system (tmpfs): 100,000 bytes of incompressible floats per step, room for two steps."""
  disk = tmp_path / "disk"
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  rng = np.random.default_rng(0)
  states = {s: {"w": jnp.asarray(rng.standard_normal(25_000).astype(np.float32))} for s in (1, 2, 3, 4)}
  with small_disk(disk, 300):
    workdir = disk / "run"
    ckpt = checkpointing.Checkpointer(workdir, keep=3, async_save=async_save, every_steps=1)
    with pytest.raises(checkpointing.DiskFullError) as error:
      for step in (1, 2, 3, 4):
        ckpt.save(step, states[step])
      ckpt.wait()
    ckpt.close()  # after the error: no second error, no hang
    message = str(error.value)
    assert message.startswith("no space left on device")
    assert f"workdir {workdir}" in message and "saving checkpoint step 3" in message
    assert "tried to write 100000 bytes" in message and "step 2, is kept" in message
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]  # the half-written save is gone
    resize(disk, 1024)  # space freed
    abstract = {"w": jax.ShapeDtypeStruct((25_000,), jnp.float32, sharding=one)}
    with checkpointing.Checkpointer(workdir, keep=3, async_save=async_save, every_steps=1) as ckpt:
      assert ckpt.all_steps() == [1, 2]
      np.testing.assert_array_equal(ckpt.restore(abstract)["w"], states[2]["w"])
      assert ckpt.save(3, states[3])
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
      np.testing.assert_array_equal(ckpt.restore(abstract)["w"], states[3]["w"])


def test_out_of_space_is_recognised_through_wrapped_errors():
  wrapped = ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device [os_error_code='28']")
  try:
    try:
      raise OSError(122, "Disk quota exceeded")
    except OSError as quota:
      raise RuntimeError("save failed") from quota
  except RuntimeError as outer:
    chained = outer
  assert checkpointing.is_out_of_space(wrapped) and checkpointing.is_out_of_space(chained)
  assert not checkpointing.is_out_of_space(ValueError("DATA_LOSS: Error reading manifest"))
