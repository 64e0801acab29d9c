"""The attention kernels: splash (through its interpreter on this CPU) equals XLA attention in values and gradients,
with and without packing masks, alone and per shard under a mesh; the per-platform choice and its errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from jepa_jax.configs import default
from jepa_jax import config_validation
from jepa_jax.models import attention
from jepa_jax.models.attention import TokenLayout

B, H, HD = 2, 2, 16


def _qkv(n, dtype, seed=0, head_dim=HD):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, (B, n, H, head_dim), jnp.float32).astype(dtype) for k in keys]


def _value_and_grads(impl, q, k, v, layout, rows=None):
  """Output and d(sum(out * w))/d(q, k, v) for a fixed random cotangent w (only `rows` of the sequence count)."""
  w = jax.random.normal(jax.random.key(9), q.shape, jnp.float32)
  if rows is not None:
    w = w * rows[:, :, None, None]

  def f(q, k, v):
    out = attention.dot_product_attention(q, k, v, implementation=impl, layout=layout)
    return jnp.sum(out.astype(jnp.float32) * w), out

  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return [np.asarray(x, np.float32) for x in (out, *grads)]


def _relative_error(got, want):
  return float(np.abs(got - want).max() / np.abs(want).max())


LAYOUTS = {
    # 150 tokens: not a multiple of the kernel's 128-token tiles, so the padding path runs too.
    "full": (150, lambda: TokenLayout()),
    "segments": (150, lambda: TokenLayout(segments=(96, 54))),
    "kv_lengths": (150, lambda: TokenLayout(kv_lengths=jnp.array([150, 97], jnp.int32))),
}


# 16: the kernel keeps q, k, v sequence-minor (head dims that do not fill 128 lanes); 128: head-minor.
@pytest.mark.parametrize("head_dim", [HD, 128])
@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_splash_equals_xla_attention_in_values_and_gradients(case, dtype, tolerance, head_dim):
  n, make_layout = LAYOUTS[case]
  layout = make_layout()
  q, k, v = _qkv(n, dtype, head_dim=head_dim)
  rows = None
  if layout.kv_lengths is not None:  # padded rows are dropped by the model: compare the real ones
    rows = (jnp.arange(n)[None] < layout.kv_lengths[:, None]).astype(jnp.float32)
  want = _value_and_grads("xla", q, k, v, layout, rows)
  with attention.pallas_interpret():
    got = _value_and_grads("splash", q, k, v, layout, rows)
  for name, g, w in zip(("output", "dq", "dk", "dv"), got, want):
    if rows is not None and name == "output":
      g, w = g * np.asarray(rows)[:, :, None, None], w * np.asarray(rows)[:, :, None, None]
    err = _relative_error(g, w)
    print(f"{case} {jnp.dtype(dtype).name} {name}: {err:.2e}")
    assert err < tolerance, (name, err)


def test_packing_masks_compute_each_segment_and_row_on_its_own():
  """The XLA reference itself: block-diagonal segments equal separate attentions; kv_lengths equal truncated rows."""
  q, k, v = _qkv(40, jnp.float32, seed=3)
  plain = lambda q, k, v: attention.dot_product_attention(q, k, v, implementation="xla")
  packed = attention.dot_product_attention(q, k, v, implementation="xla", layout=TokenLayout(segments=(25, 15)))
  np.testing.assert_allclose(packed[:, :25], plain(q[:, :25], k[:, :25], v[:, :25]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(packed[:, 25:], plain(q[:, 25:], k[:, 25:], v[:, 25:]), rtol=1e-6, atol=1e-6)
  padded = attention.dot_product_attention(q, k, v, implementation="xla",
                                           layout=TokenLayout(kv_lengths=jnp.array([40, 31], jnp.int32)))
  np.testing.assert_allclose(padded[1, :31], plain(q[1:, :31], k[1:, :31], v[1:, :31])[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(padded[0], plain(q, k, v)[0], rtol=1e-6, atol=1e-6)


def test_splash_runs_per_shard_under_a_mesh_and_equals_xla():
  """Batch over ('data', 'fsdp') and heads over 'tensor' through shard_map, as on a TPU slice."""
  q, k, v = [jnp.concatenate([x, x[:, :, ::-1]], axis=0) for x in _qkv(130, jnp.float32, seed=5)]  # batch 4
  layout = TokenLayout(segments=(70, 60))
  want = attention.dot_product_attention(q, k, v, implementation="xla", layout=layout)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  fn = jax.jit(lambda q, k, v: attention.dot_product_attention(q, k, v, implementation="splash", layout=layout))
  with attention.pallas_interpret(), jax.set_mesh(mesh), nnx.logical_axis_rules(default.get_config().mesh.rules):
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    got = fn(q, k, v)
  assert _relative_error(np.asarray(got), np.asarray(want)) < 1e-5


# --------------------------------------------------------------------------------------------------------------
# Choice per platform


@pytest.mark.parametrize("platform,dtype,expected", [
    ("tpu", "bfloat16", "splash"), ("tpu", "float32", "splash"), ("gpu", "bfloat16", "cudnn"),
    ("gpu", "float32", "xla"), ("cpu", "bfloat16", "xla")])
def test_empty_config_picks_the_platform_kernel(platform, dtype, expected):
  assert attention.resolve("", platform, dtype) == expected


@pytest.mark.parametrize("requested,platform,dtype,message", [
    ("cudnn", "tpu", "bfloat16", r"'cudnn' does not run on tpu; available there: \('xla', 'splash'\)"),
    ("splash", "gpu", "bfloat16", r"'splash' does not run on gpu; available there: \('xla', 'cudnn'\)"),
    ("splash", "cpu", "float32", r"'splash' does not run on cpu; available there: \('xla',\)"),
    ("cudnn", "gpu", "float32", r"needs bfloat16 or float16 compute"),
    ("flash", "tpu", "bfloat16", r"not a kernel")])
def test_impossible_kernel_is_a_config_error_before_anything_compiles(requested, platform, dtype, message):
  model = default.get_config().model
  model.attention_impl, model.dtype = requested, dtype
  with pytest.raises(config_validation.ConfigError, match=r"config\.model\.attention_impl=.*" + message):
    config_validation.validate_model(model, platform=platform)


def test_splash_is_allowed_on_cpu_only_in_interpret_mode_and_packing_is_checked():
  model = default.get_config().model
  model.attention_impl, model.dtype = "splash", "float32"
  with attention.pallas_interpret():
    config_validation.validate_model(model, platform="cpu")
  with pytest.raises(config_validation.ConfigError):
    config_validation.validate_model(model, platform="cpu")
  model.attention_impl, model.predictor_packing = "", "diagonal"
  with pytest.raises(config_validation.ConfigError, match=r"config\.model\.predictor_packing='diagonal'"):
    config_validation.validate_model(model, platform="cpu")


# --------------------------------------------------------------------------------------------------------------
# The real train step for a TPU slice, compiled ahead of time on this CPU


def test_train_step_compiles_for_a_v5e_2x2_slice_with_splash_per_shard_under_fsdp():
  """config.model.attention_impl='' picks splash for TPU; the kernels see one chip's share of the batch."""
  import importlib.util
  import os
  import re
  import sys
  from pathlib import Path
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install 'libtpu==0.0.42.*'): no compile-only TPU topologies")
  for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")):
    os.environ.setdefault(key, value)
  from jax.experimental import topologies
  path = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"
  spec = importlib.util.spec_from_file_location("bench_train_step_for_attention", path)
  bench = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = bench
  spec.loader.exec_module(bench)

  topology = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default")
  mesh = jax.sharding.Mesh(np.array(topology.devices).reshape(1, 4, 1), ("data", "fsdp", "tensor"),
                           axis_types=(AxisType.Auto,) * 3)
  config = bench.load_config("configs/demo.py")
  per_chip = 2
  bench.configure(config, per_device_batch=per_chip, num_devices=4, dtype="bfloat16", attention="", remat="none",
                  scan=True, size=bench.parse_size("embed=64,depth=2,heads=2,crop=64,frames=4,pred_depth=1,"
                                                   "pred_embed=32"), mesh_shape=(1, 4, 1))
  compiled, _, _ = bench.compile_step(bench.build_step(config, mesh=mesh))
  hlo = compiled.as_text()
  kernels = [line for line in hlo.splitlines() if "splash_mha" in line and "custom-call(" in line]
  names = {re.search(r"(splash_mha_\w+?)(_no)?_residuals", line).group(1) for line in kernels}
  # Forward and both backward kernels; with splash the generators are packed along the sequence (static masks,
  # no segment ids), so no '_segmented' variant appears.
  assert names == {"splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"}, names
  # Per shard: [rows, heads, tokens, head_dim] blocks hold one chip's clips.
  rows = {int(m.group(1)) for line in kernels for m in re.finditer(r"bf16\[(\d+),2,\d+,\d+\]", line)}
  assert rows == {per_chip}, rows
  assert compiled.memory_analysis().temp_size_in_bytes > 0


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_cpu_float32_backward_equals_autodiff_of_jax_nn_attention(case):
  """On the CPU the 'xla' kernel runs float32 through its own backward (attention._cpu_attention, laid out for
  XLA:CPU's matmul libraries); values and gradients equal autodiff of jax.nn.dot_product_attention's XLA path."""
  n, make_layout = LAYOUTS[case]
  layout = make_layout()
  q, k, v = _qkv(n, jnp.float32, seed=3)
  mask = None
  if layout.segments is not None:
    mask = jnp.asarray(attention._block_diagonal(layout.segment_ids()))[None, None]
  rows = None
  if layout.kv_lengths is not None:
    rows = (jnp.arange(n)[None] < layout.kv_lengths[:, None]).astype(jnp.float32)
  w = jax.random.normal(jax.random.key(9), q.shape, jnp.float32)
  w = w if rows is None else w * rows[:, :, None, None]

  def loss(fn):
    def f(q, k, v):
      out = fn(q, k, v)
      return jnp.sum(out * w), out if rows is None else out * rows[:, :, None, None]
    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, *grads

  assert attention.resolve("", "cpu", jnp.float32) == "xla"
  got = loss(lambda q, k, v: attention.dot_product_attention(q, k, v, implementation="xla", layout=layout))
  want = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=layout.kv_lengths,
                                                          implementation="xla"))
  for name, g, r in zip(("output", "dq", "dk", "dv"), got, want):
    err = _relative_error(np.asarray(g), np.asarray(r))
    print(f"{case} {name}: {err:.2e}")
    assert err < 1e-5, (name, err)


def test_splash_lays_narrow_heads_out_sequence_minor():
  """Head dims that do not fill the TPU's 128 lanes (24, 64, 80, 88: V-JEPA 1's predictors, ViT-L, ViT-H, ViT-g)
  go sequence-minor; multiples of 128 stay head-minor."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  assert [attention._splash_layout(hd) for hd in (24, 64, 80, 88)] == [splash.QKVLayout.SEQ_MINOR] * 4
  assert [attention._splash_layout(hd) for hd in (128, 256)] == [splash.QKVLayout.HEAD_DIM_MINOR] * 2
