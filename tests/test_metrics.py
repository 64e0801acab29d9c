"""The CSV carries the official columns first and survives a resume; TensorBoard can read our events."""
import csv
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator

from jepa_jax import metrics

OFFICIAL = ["epoch", "itr", "loss", "loss-jepa", "reg-loss", "enc-grad-norm", "pred-grad-norm", "gpu-time(ms)",
            "wall-time(ms)"]


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def test_csv_has_official_columns_first_and_appends_on_resume(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_primary=True, ipe=300) as w:
    w.write(1, {"loss": 0.5, "loss_jepa": 0.5, "loss_reg": 0.1, "enc_grad_norm": 0.0, "lr": 2.00035e-4,
                "mfu": None})
    w.write(300, {"loss": 0.4})
  with metrics.MetricsWriter(tmp_path, is_primary=True, ipe=300) as w:  # resumed run
    w.write(301, {"loss": 0.3, "clips/s": 12.5}, ipe=300)
  rows = read_rows(os.path.join(tmp_path, "jepa_r0.csv"))
  assert rows[0][:9] == OFFICIAL
  assert rows[0][9:] == ["lr", "wd", "ema-momentum", "target-std", "clips/s", "tokens/s-per-device", "mfu", "skipped-videos"]
  assert len(rows) == 4 and sum(r == rows[0] for r in rows) == 1  # one header
  first = dict(zip(rows[0], rows[1]))
  assert (first["epoch"], first["itr"], first["loss"], first["mfu"]) == ("1", "0", "0.50000", "n/a")
  assert first["reg-loss"] == "0.10000"
  assert float(first["lr"]) == pytest.approx(2.00035e-4)
  # step = updates done; the 300th update is the official epoch 1 (1-based), itr 299; the 301st opens epoch 2.
  assert rows[2][:2] == ["1", "299"] and rows[3][:2] == ["2", "0"]
  assert dict(zip(rows[0], rows[3]))["clips/s"] == "12.5"


def test_tensorboard_events_are_readable(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_primary=True, write_tag="demo", ipe=10) as w:
    for step in range(5):
      w.write(step, {"loss": 1.0 / (step + 1), "lr": 1e-3, "tokens_per_s_per_device": 100.0})
  acc = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tensorboard"))
  acc.Reload()
  assert {"train/loss", "train/lr", "train/tokens_per_s_per_device"} <= set(acc.Tags()["scalars"])
  losses = acc.Scalars("train/loss")
  assert [e.step for e in losses] == [0, 1, 2, 3, 4]
  assert losses[-1].value == pytest.approx(0.2)


def test_only_the_primary_process_writes(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_primary=False) as w:
    w.write(0, {"loss": 1.0})
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H200", 989e12), ("cpu", None)])
def test_peak_table(kind, peak):
  assert metrics.peak_flops(kind) == peak == metrics.peak_flops(kind, "bfloat16")


@pytest.mark.parametrize("kind,peak", [("NVIDIA H100 80GB HBM3", 495e12), ("NVIDIA A100-SXM4-80GB", 156e12),
                                       ("TPU v5p", None), ("cpu", None)])
def test_float32_peaks_are_the_gpus_tf32_and_unknown_on_tpus(kind, peak):
  assert metrics.peak_flops(kind, "float32") == peak


def test_mfu():
  # 4 H100s doing 1.978e15 FLOPs in 1 s run at half of their 4 x 989 TFLOP/s.
  assert metrics.mfu(1.978e15, 1.0, 4, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
  assert metrics.mfu(1e12, 1.0, 1, "cpu") is None
  # float32 on an A100 is measured against its TF32 peak (156 TFLOP/s), bf16 against 312.
  assert metrics.mfu(1.56e14, 2.0, 1, "NVIDIA A100-SXM4-80GB", "float32") == pytest.approx(0.5)
  assert metrics.format_mfu(None) == "n/a" and metrics.format_mfu(0.4321) == "43.2%"


# --- analytic FLOPs (jepa_jax/flops.py) against XLA's own count -------------------------------------------------

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from input_pipeline import masks  # noqa: E402
from jepa_jax import config_files, flops, models  # noqa: E402


def _block(x, p, heads):
  b, n, d = x.shape
  ln = lambda v: (v - v.mean(-1, keepdims=True)) * jax.lax.rsqrt(v.var(-1, keepdims=True) + 1e-6)
  qkv = (ln(x) @ p["qkv"]).reshape(b, n, 3, heads, d // heads)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  att = jax.nn.softmax(jnp.einsum("bqhc,bkhc->bhqk", q, k) / (d // heads) ** 0.5, axis=-1)
  x = x + jnp.einsum("bhqk,bkhc->bqhc", att, v).reshape(b, n, d) @ p["proj"]
  return x + jax.nn.gelu(ln(x) @ p["fc1"], approximate=False) @ p["fc2"]


def _block_params(key, d, hidden, depth):
  ks = jax.random.split(key, 4 * depth)
  return [{"qkv": jax.random.normal(ks[4 * i], (d, 3 * d)), "proj": jax.random.normal(ks[4 * i + 1], (d, d)),
           "fc1": jax.random.normal(ks[4 * i + 2], (d, hidden)), "fc2": jax.random.normal(ks[4 * i + 3], (hidden, d))}
          for i in range(depth)]


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()  # unsharded inputs: one device
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


D, HIDDEN, DEPTH, HEADS, TOKENS, PATCH_DIM, BATCH = 256, 1024, 2, 4, 128, 384, 2


def test_encoder_forward_flops_match_xla():
  params = {"embed": jax.random.normal(jax.random.key(0), (PATCH_DIM, D)),
            "blocks": _block_params(jax.random.key(1), D, HIDDEN, DEPTH)}
  patches = jnp.ones((BATCH, TOKENS, PATCH_DIM))

  def forward(params, patches):  # unrolled python loop over blocks, float32
    x = patches @ params["embed"]
    for p in params["blocks"]:
      x = _block(x, p, HEADS)
    return x

  xla = _xla_flops(forward, params, patches)
  ours = flops.train_step_flops(
      embed_dim=D, depth=DEPTH, mlp_hidden=HIDDEN, num_tokens=TOKENS, pred_embed_dim=D, pred_depth=1,
      pred_mlp_hidden=HIDDEN, num_context=(), num_target=(), batch=BATCH, patch_dim=PATCH_DIM)["target_fwd"]
  print(f"encoder forward: analytic {ours:.4g}, XLA {xla:.4g}")
  assert ours == pytest.approx(xla, rel=0.05)


def test_predictor_forward_and_backward_flops_match_xla():
  pd, n_ctx, n_tgt = 256, 48, 80  # wide enough that matmuls dominate erf-GELU and softmax
  params = {"embed": jax.random.normal(jax.random.key(0), (D, pd)),
            "blocks": _block_params(jax.random.key(1), pd, 4 * pd, DEPTH),
            "proj": jax.random.normal(jax.random.key(2), (pd, D))}
  context = jnp.ones((BATCH, n_ctx, D))
  targets = jnp.ones((BATCH, n_tgt, pd))

  def forward(params, context):
    x = jnp.concatenate([context @ params["embed"], targets], axis=1)
    for p in params["blocks"]:
      x = _block(x, p, HEADS)
    return x[:, n_ctx:] @ params["proj"]

  fwd = flops.predictor_forward_flops(embed_dim=D, pred_embed_dim=pd, pred_depth=DEPTH, pred_mlp_hidden=4 * pd,
                                      num_context=n_ctx, num_target=n_tgt) * BATCH
  assert fwd == pytest.approx(_xla_flops(forward, params, context), rel=0.05)
  # Forward + backward (grads for params and the context input, as in training) is 3x the forward.
  grad = jax.grad(lambda params, context: forward(params, context).sum(), argnums=(0, 1))
  xla_fwd_bwd = _xla_flops(grad, params, context)
  print(f"predictor fwd+bwd: analytic {3 * fwd:.4g}, XLA {xla_fwd_bwd:.4g}")
  assert 3 * fwd == pytest.approx(xla_fwd_bwd, rel=0.08)


def _kernel_sizes(module) -> dict:
  """Weights per Linear, {path: count}, of a built (abstract) module; stacked (scanned) blocks count every layer."""
  flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
  return {"/".join(map(str, path)): int(np.prod(v.shape)) for path, v in flat if path[-1] == "kernel"}


@pytest.mark.parametrize("name,config_file,batch", [("vitl16", "vitl16", 24), ("vith16_384", "vith16_384", 10)])
def test_step_flops_of_the_real_models_equal_a_count_from_their_built_weights(name, config_file, batch):
  """Every matmul costs 2 x tokens x its weights: count that from the shapes of the models the config builds
  (an independent route to the same number: a wrong depth, MLP width or patch size in flops.py would show), plus
  attention's 4 x n^2 x width per block (QK^T and AV)."""
  config = config_files.load(config_file)
  config.data.batch_size = batch
  specs = masks.mask_specs_from_config(config, batch)
  encoder = nnx.eval_shape(lambda: models.build_encoder(config.model, nnx.Rngs(0)))
  pred = nnx.eval_shape(lambda: models.build_predictor(config.model, len(specs), nnx.Rngs(0)))
  enc_w, pred_w = _kernel_sizes(encoder), _kernel_sizes(pred)
  patch = enc_w.pop("patch_embed/proj/kernel")
  p_embed, p_proj = pred_w.pop("predictor_embed/kernel"), pred_w.pop("predictor_proj/kernel")
  enc_blocks, pred_blocks = sum(enc_w.values()), sum(pred_w.values())
  width, p_width = encoder.embed_dim, pred.predictor_embed_dim
  depth, p_depth = encoder.blocks.attn.qkv.kernel.shape[0], pred.predictor_blocks.attn.qkv.kernel.shape[0]
  n = encoder.num_patches

  def encoder_fwd(k):
    return 2 * k * enc_blocks + 4 * k * k * width * depth

  def predictor_fwd(kc, kt):
    return 2 * kc * p_embed + 2 * (kc + kt) * pred_blocks + 4 * (kc + kt) ** 2 * p_width * p_depth + 2 * kt * p_proj

  # Target: forward on all N tokens. Context encoder and predictor: forward + backward (3x), per mask generator;
  # the patch embedding runs on all N tokens and its backward is the weight gradient only (2x).
  per_clip = 2 * n * patch + encoder_fwd(n)
  per_clip += sum(2 * 2 * n * patch + 3 * (encoder_fwd(s.num_context) + predictor_fwd(s.num_context, s.num_target))
                  for s in specs)
  got = flops.train_step_flops_from_config(config, specs)
  print(f"{name}, {batch} clips: {got['total']:.4g} FLOPs per step")
  assert got["total"] == pytest.approx(batch * per_clip, rel=1e-12)
  assert got["target_fwd"] == pytest.approx(batch * (2 * n * patch + encoder_fwd(n)), rel=1e-12)
