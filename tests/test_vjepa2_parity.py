"""Our V-JEPA 2 encoder and predictor equal the PyTorch oracle (tests/torch_reference_v2.py, checked at 0.0 against
the official modules) with the same weights: our parameters exported to the official keys and loaded strictly.

Head dims as the released models: 64 (ViT-L, ViT-g: 20 channels per axis + 4 unrotated), 80 (ViT-H: 26 + 2) and
32 in the predictor (10 + 2). float32 relative error (max |ours - torch| / max |torch|) <= 1e-5; bfloat16 compute
within 2e-2. The measured errors print with pytest -s.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import tiny
from jepa_jax import models, optim, torch_layout, train_state
from jepa_jax import train_step as train_step_lib
from jepa_jax.models import attention, predictor, vit
from tests import torch_reference_v2 as ref
from tests.torch_reference import rel_error

TOL, TOL_BF16 = 1e-5, 2e-2
torch.set_num_threads(1)


def _params(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _to_torch(model, torch_model):
  """Our params -> official state_dict (no position table) -> strict load."""
  sd = torch_layout.to_torch_state_dict(_params(model), scanned=model.scan_layers)
  assert torch_layout.pos_embed_entries(model) == {}
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  return torch_model.eval()


def _encoder(embed_dim, num_heads, seed=0, **kwargs):
  with nnx.use_eager_sharding(False):
    return vit.VisionTransformer(img_size=64, num_frames=4, embed_dim=embed_dim, depth=2, num_heads=num_heads,
                                 pos_embed="rope", depth_rescale_init=True, rngs=nnx.Rngs(seed), **kwargs)


def _torch_clip(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


def _run(model, *args):
  """Our forward, jitted and functional as the train step runs it; int arguments (mask_index) stay static."""
  graphdef, state = nnx.split(model)
  static = tuple(a for a in args if isinstance(a, int))
  arrays = tuple(a for a in args if not isinstance(a, int))
  return jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a, *static))(state, *arrays)


# ----------------------------------------------------------------------------------------------- encoder

@pytest.mark.parametrize("embed_dim,num_heads,scan", [(128, 2, False), (160, 2, True)])  # head dim 64 and 80
def test_encoder_matches_torch_on_full_masked_and_non_square_clips(embed_dim, num_heads, scan):
  rng = np.random.default_rng(embed_dim)
  model = _encoder(embed_dim, num_heads, scan_layers=scan)
  torch_model = _to_torch(model, ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=embed_dim,
                                                              depth=2, num_heads=num_heads))
  x = rng.standard_normal((2, 4, 64, 64, 3)).astype(np.float32)
  keep = np.stack([rng.permutation(32)[:13] for _ in range(2)]).astype(np.int32)  # unsorted on purpose
  wide = rng.standard_normal((2, 6, 48, 80, 3)).astype(np.float32)  # grid (3, 3, 5): neither built nor square
  with torch.no_grad():
    want = {"full": torch_model(_torch_clip(x)).numpy(),
            "masked": torch_model(_torch_clip(x), masks=torch.from_numpy(keep).long()).numpy(),
            "non-square": torch_model(_torch_clip(wide)).numpy()}
  got = {"full": _run(model, jnp.asarray(x)), "masked": _run(model, jnp.asarray(x), jnp.asarray(keep)),
         "non-square": _run(model, jnp.asarray(wide))}
  errs = {k: rel_error(got[k], want[k]) for k in want}
  print(f"V-JEPA 2 encoder, head dim {embed_dim // num_heads}, scan={scan}:",
        {k: f"{v:.2e}" for k, v in errs.items()})
  assert got["non-square"].shape == (2, 45, embed_dim) and got["masked"].shape == (2, 13, embed_dim)
  assert max(errs.values()) <= TOL


def test_encoder_in_bfloat16_stays_within_2e_2_of_float32_torch():
  rng = np.random.default_rng(7)
  model = _encoder(128, 2, dtype=jnp.bfloat16)
  torch_model = _to_torch(model, ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=128, depth=2,
                                                              num_heads=2))
  x = rng.standard_normal((2, 4, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want = torch_model(_torch_clip(x)).numpy()
  err = rel_error(_run(model, jnp.asarray(x, jnp.bfloat16)), want)
  print(f"V-JEPA 2 encoder bfloat16: {err:.2e}")
  assert 1e-4 < err <= TOL_BF16  # bfloat16 really ran (not float32), and stayed close


def test_rope_positions_matter_and_the_sincos_table_is_gone():
  model = _encoder(128, 2)
  x = jnp.asarray(np.random.default_rng(8).standard_normal((1, 4, 64, 64, 3)), jnp.float32)
  keep = jnp.asarray([[3, 9, 17, 30]], jnp.int32)
  moved = jnp.asarray([[0, 1, 2, 3]], jnp.int32)
  tokens = model.embed(x)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(model.patch_embed(x)))  # no table added
  # The same tokens at other positions give other outputs: RoPE reads the indices (the effect is small at init,
  # where the depth rescale keeps the attention branch small, but far above float32 rounding).
  a = model.encode(jnp.take_along_axis(tokens, keep[..., None], 1), model._layout(keep, x))
  b = model.encode(jnp.take_along_axis(tokens, keep[..., None], 1), model._layout(moved, x))
  assert rel_error(a, b) > 1e-4
  with pytest.raises(ValueError, match="no position table"):
    model.pos_embed()


# ----------------------------------------------------------------------------------------------- predictor

def _pair(seed=3, **pred_kwargs):
  """Our encoder and predictor (random mask tokens) and the oracle's, with the same weights."""
  enc = _encoder(128, 2, seed=seed)
  with nnx.use_eager_sharding(False):
    pred = predictor.VisionTransformerPredictor(
        img_size=64, num_frames=4, embed_dim=128, predictor_embed_dim=64, depth=2, num_heads=2, pos_embed="rope",
        depth_rescale_init=True, num_mask_tokens=10, mask_token_rule="frame_group", zero_init_mask_tokens=False,
        rngs=nnx.Rngs(seed + 1), **pred_kwargs)
  t_enc = _to_torch(enc, ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=128, depth=2,
                                                      num_heads=2))
  t_pred = _to_torch(pred, ref.TorchPredictorV2(img_size=64, num_frames=4, embed_dim=128, predictor_embed_dim=64,
                                                depth=2, num_heads=2, num_mask_tokens=10))
  return enc, pred, t_enc, t_pred


def _two_generators(rng, batch=2, n=32):
  """Two mask generators of different sizes: sorted context and target indices, disjoint per sample."""
  ctx, tgt = [], []
  for kc, kt in ((20, 8), (7, 19)):
    perm = np.stack([rng.permutation(n) for _ in range(batch)])
    ctx.append(np.sort(perm[:, :kc], axis=1).astype(np.int32))
    tgt.append(np.sort(perm[:, kc:kc + kt], axis=1).astype(np.int32))
  return ctx, tgt


def _torch_one_pass(t_enc, t_pred, x, ctx, tgt):
  """The official step's predictions: per generator, context encoder then PredictorMultiSeqWrapper (one
  frame-count group: mask token 0 for both generators)."""
  with torch.no_grad():
    zs = [t_enc(_torch_clip(x), masks=torch.from_numpy(c).long()) for c in ctx]
    out = ref.predict_multiseq(t_pred, [zs], [[torch.from_numpy(c).long() for c in ctx]],
                               [[torch.from_numpy(t).long() for t in tgt]])
  return [o.numpy() for o in out[0]]


@pytest.mark.parametrize("context_packing,predictor_packing,kernel", [
    ("none", "none", "xla"), ("sequence", "batch", "xla"), ("batch", "sequence", "xla"),
    ("sequence", "sequence", "splash")])
def test_packed_one_pass_predicts_both_generators_as_the_official_step(context_packing, predictor_packing, kernel):
  rng = np.random.default_rng(11)
  enc, pred, t_enc, t_pred = _pair()
  x = rng.standard_normal((2, 4, 64, 64, 3)).astype(np.float32)
  ctx, tgt = _two_generators(rng)
  want = _torch_one_pass(t_enc, t_pred, x, ctx, tgt)
  if kernel == "splash":  # the Pallas kernel through its interpreter: RoPE happens before any kernel
    for module in (enc, pred):
      for blk in (module.blocks if hasattr(module, "blocks") else module.predictor_blocks):
        blk.attn.attention_impl = "splash"

  def one_pass(e, p, x, ctx, tgt):
    zs = e.encode_masks(x, ctx, packing=context_packing)
    return p.predict_masks(zs, ctx, tgt, packing=predictor_packing)

  (eg, es), (pg, ps) = nnx.split(enc), nnx.split(pred)
  args = (jnp.asarray(x), [jnp.asarray(c) for c in ctx], [jnp.asarray(t) for t in tgt])
  run = lambda: jax.jit(lambda es, ps, *a: one_pass(nnx.merge(eg, es), nnx.merge(pg, ps), *a))(es, ps, *args)
  if kernel == "splash":
    with attention.pallas_interpret():
      got = run()
  else:
    got = run()
  errs = [rel_error(g, w) for g, w in zip(got, want)]
  print(f"V-JEPA 2 one pass ({context_packing}, {predictor_packing}, {kernel}): generators "
        + ", ".join(f"{e:.2e}" for e in errs))
  assert [g.shape for g in got] == [(2, 8, 128), (2, 19, 128)]
  assert max(errs) <= TOL


def test_predictor_single_call_matches_torch_for_any_mask_index():
  rng = np.random.default_rng(12)
  _, pred, _, t_pred = _pair(seed=5)
  ctx, tgt = _two_generators(rng)
  z = rng.standard_normal((2, 20, 128)).astype(np.float32)
  for mask_index in (0, 1, 13):  # 13 % 10 = 3, as the official predictor
    with torch.no_grad():
      want = t_pred(torch.from_numpy(z), torch.from_numpy(ctx[0]).long(), torch.from_numpy(tgt[0]).long(),
                    mask_index=mask_index).numpy()
    got = _run(pred, jnp.asarray(z), jnp.asarray(ctx[0]), jnp.asarray(tgt[0]), mask_index)
    err = rel_error(got, want)
    print(f"V-JEPA 2 predictor, mask_index {mask_index}: {err:.2e}")
    assert err <= TOL


def test_frame_group_rule_gives_every_generator_mask_token_0():
  _, pred, _, _ = _pair(seed=6)
  assert [pred.mask_index(g) for g in range(2)] == [0, 0]
  pred.mask_token_rule = "generator"
  assert [pred.mask_index(g) for g in range(2)] == [0, 1]


def test_packed_v2_train_step_equals_the_pass_per_generator():
  """Loss and gradients of the V-JEPA 2 step with every packing equal the official pass per generator."""
  config = tiny.tiny_v2_config(**{"model.context_packing": "none", "model.predictor_packing": "none"})
  batch = tiny.random_batches(config, 1, seed=4)[0]
  params = train_state.init_params(config, 3)
  params["predictor"]["mask_tokens"] = {
      i: jax.random.normal(jax.random.key(i), t.shape) for i, t in params["predictor"]["mask_tokens"].items()}
  target = jax.tree.map(lambda x: x * 1.01, params["encoder"])

  def loss_and_grads(context_packing, predictor_packing):
    cfg = config.copy_and_resolve_references()
    cfg.model.context_packing, cfg.model.predictor_packing = context_packing, predictor_packing
    defs = train_state.model_defs(cfg)
    fns = train_step_lib.make_step_functions(cfg, defs.encoder_def, defs.predictor_def,
                                             optim.make_optimizer(cfg.optim))
    grad_fn = jax.value_and_grad(train_step_lib.jepa_loss, has_aux=True)
    (loss, _), grads = jax.jit(grad_fn, static_argnums=3)(params, target, batch, fns)
    return float(loss), grads

  want_loss, want_grads = loss_and_grads("none", "none")
  # Mask tokens 1..9 get no gradient (the frame-group rule uses token 0 only), as in the official run.
  tokens = want_grads["predictor"]["mask_tokens"]
  assert np.abs(np.asarray(tokens[0])).max() > 0 and all(not np.asarray(tokens[i]).any() for i in range(1, 10))
  for packings in (("sequence", "batch"), ("batch", "sequence")):
    loss, grads = loss_and_grads(*packings)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      w = np.asarray(w)
      assert float(np.abs(np.asarray(g) - w).max()) <= 1e-5 * max(float(np.abs(w).max()), 1e-12), packings


# ----------------------------------------------------------------------------------------------- sizes and init

@pytest.mark.parametrize("name,encoder_count,predictor_count", [
    ("vjepa2/vitl16_256", 303_885_312, 22_086_016), ("vjepa2/vith16_256", 631_648_000, 22_282_880),
    ("vjepa2/vitg16_256", 1_012_173_952, 22_381_312)])
def test_parameter_counts_of_the_released_models(name, encoder_count, predictor_count):
  from jepa_jax import config_files
  config = config_files.load(name)
  defs = train_state.model_defs(config)  # nnx.eval_shape: nothing allocated
  assert models.count_params(defs.abstract_encoder) == encoder_count
  assert models.count_params(defs.abstract_predictor) == predictor_count


def test_v2_init_keeps_the_depth_rescale_and_v1_does_not():
  with nnx.use_eager_sharding(False):
    for scan in (False, True):
      v2 = vit.VisionTransformer(img_size=32, num_frames=2, embed_dim=512, depth=3, num_heads=8, pos_embed="rope",
                                 depth_rescale_init=True, scan_layers=scan, rngs=nnx.Rngs(0))
      v1 = vit.VisionTransformer(img_size=32, num_frames=2, embed_dim=512, depth=3, num_heads=8, scan_layers=scan,
                                 rngs=nnx.Rngs(0))
      for i in range(3):
        layer = lambda m, a, b: np.asarray(getattr(getattr(m.blocks if scan else m.blocks[i], a), b).kernel[...])
        pick = (lambda w: w[i]) if scan else (lambda w: w)
        assert float(pick(layer(v2, "attn", "qkv")).std()) == pytest.approx(0.02, rel=0.03)
        for a, b in (("attn", "proj"), ("mlp", "fc2")):
          assert float(pick(layer(v2, a, b)).std()) == pytest.approx(0.02 / np.sqrt(2 * (i + 1)), rel=0.03)
          assert float(pick(layer(v1, a, b)).std()) == pytest.approx(0.02, rel=0.03)


def test_v2_train_step_compiles_for_a_v5e_2x2_slice_with_rope_splash_and_fsdp():
  """The V-JEPA 2 step ahead of time for a TPU slice on this CPU: RoPE before the splash kernel, per shard."""
  import importlib.util
  import os
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install 'libtpu==0.0.42.*'): no compile-only TPU topologies")
  for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")):
    os.environ.setdefault(key, value)
  from jax.experimental import topologies
  from input_pipeline import masks as masks_lib
  from jepa_jax import compiled_step, sharding
  topology = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default")
  mesh = jax.sharding.Mesh(np.array(topology.devices).reshape(1, 4, 1), sharding.MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)
  config = tiny.tiny_v2_config(**{"model.dtype": "bfloat16", "model.scan_layers": True, "model.embed_dim": 128,
                                  "model.pred_embed_dim": 64, "data.batch_size": 8, "mesh.shape": (1, 4, 1)})
  assert config.model.attention_impl == ""  # splash, picked for the TPU
  specs = masks_lib.mask_specs_from_config(config, 2)
  defs = train_state.model_defs(config)
  tx = optim.make_optimizer(config.optim)
  # Not under jax.set_mesh: eval_shape(tx.init) evaluates constants eagerly on the mesh's devices, which fails for
  # compile-only TPU devices (as bench/train_step.py:build_step).
  with nnx.logical_axis_rules(sharding.logical_rules(config.mesh)):
    state_sh = train_state.state_shardings(defs, tx, mesh, sharding.logical_rules(config.mesh))
    abstract = train_state.abstract_state(defs, tx, state_sh)
  fns = train_step_lib.make_step_functions(config, defs.encoder_def, defs.predictor_def, tx)
  compiled, _, _ = compiled_step.compile_train_step(config, fns, state_sh, abstract, specs, mesh)
  hlo = compiled.as_text()
  assert any("splash_mha" in line and "custom-call(" in line for line in hlo.splitlines())
  assert compiled.memory_analysis().temp_size_in_bytes > 0
