"""Encoder and predictor: official sizes and init, and the options (bf16, scan, remat, image input, masks,
sharding) that must not change what the model computes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from jepa_jax.configs import default
from jepa_jax import models, torch_layout
from jepa_jax.models import layers, predictor, vit


def _encoder(seed=0, **kwargs) -> vit.VisionTransformer:
  dims = dict(img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=4)
  with nnx.use_eager_sharding(False):
    return vit.VisionTransformer(**{**dims, **kwargs}, rngs=nnx.Rngs(seed))


def _abstract(make):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(make)


def _params(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _apply(model):
  """A jitted functional forward f(params, *args) of the model's graph, as the train step uses it."""
  graphdef = nnx.graphdef(model)
  return jax.jit(lambda params, *args: nnx.merge(graphdef, params)(*args))


def _clip(batch=4, frames=4, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, frames, size, size, 3))


def _small_config(**overrides):
  cfg = default.get_config().model
  cfg.update(dict(name="vit_tiny", crop_size=32, num_frames=4, pred_depth=2, pred_embed_dim=48, dtype="float32"))
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def shared():
  """One small float32 encoder, its params and its jitted forward, reused so the loaded CI box compiles it once."""
  model = _encoder(seed=1)
  return model, _params(model), _apply(model)


# --------------------------------------------------------------------------------------------------------------
# Sizes and init


@pytest.mark.parametrize("name,encoder_params,predictor_params", [
    ("vit_large", 303_885_312, 22_082_944),
    ("vit_huge", 631_648_000, 22_279_808),
])
def test_trainable_parameter_counts_equal_the_official_models(name, encoder_params, predictor_params):
  cfg = default.get_config().model
  cfg.name = name
  cfg.scan_layers = True  # the same parameters as unrolled (tested below), one abstract block: a faster build
  encoder = _abstract(lambda: models.build_encoder(cfg, nnx.Rngs(0)))
  pred = _abstract(lambda: models.build_predictor(cfg, 2, nnx.Rngs(0)))
  assert models.count_params(encoder) == encoder_params
  assert models.count_params(pred) == predictor_params
  assert pred.num_heads == 16 and pred.depth == 12  # V1: predictor heads = encoder heads (head_dim 24)
  assert "pos_embed" not in _params(encoder)  # computed table, not a parameter
  assert encoder.num_patches == 1568 and encoder.grid == (8, 14, 14)


@pytest.mark.parametrize("name,dim,depth,heads,hidden,patch", [
    ("vit_tiny", 192, 12, 3, 768, 16), ("vit_small", 384, 12, 6, 1536, 16), ("vit_base", 768, 12, 12, 3072, 16),
    ("vit_large", 1024, 24, 16, 4096, 16), ("vit_huge", 1280, 32, 16, 5120, 16),
    ("vit_giant", 1408, 40, 16, 6144, 16),
    ("vit_gigantic", 1664, 48, 16, 6656, 14),  # the mpl_ratio typo leaves mlp_ratio at 4
])
def test_model_zoo_has_the_official_dimensions(name, dim, depth, heads, hidden, patch):
  model = _abstract(lambda: vit.MODEL_ZOO[name](img_size=2 * patch, num_frames=2, scan_layers=True,
                                                 rngs=nnx.Rngs(0)))
  assert (model.embed_dim, model.depth, model.num_heads, model.patch_size) == (dim, depth, heads, patch)
  assert model.blocks.mlp.fc1.kernel.shape == (depth, dim, hidden)


@pytest.mark.parametrize("name,overrides", [
    # 22 heads do not divide the predictor's 384 channels: V-JEPA 2's ViT-g pairs with a 12-head predictor.
    *[(name, {"pred_num_heads": 12} if name == "vit_giant_xformers" else {}) for name in sorted(vit.MODEL_SIZES)],
    ("vit_giant", {"embed_dim": 176, "depth": 3}),  # the zoo's MLP ratio 48/11 carries over to a new width
    ("vit_tiny", {"embed_dim": 96, "num_heads": 4, "pred_num_heads": 6, "patch_size": 8, "crop_size": 64}),
])
def test_model_dims_are_the_sizes_the_builders_build(name, overrides):
  """models.model_dims (what flops.py, import_torch and bench/ read) reads the zoo's one table as the builders do."""
  cfg = default.get_config().model
  cfg.name, cfg.scan_layers = name, True
  cfg.update(overrides)
  dims = models.model_dims(cfg)
  encoder = _abstract(lambda: models.build_encoder(cfg, nnx.Rngs(0)))
  pred = _abstract(lambda: models.build_predictor(cfg, 2, nnx.Rngs(0)))
  assert (dims.depth, dims.embed_dim, dims.mlp_hidden) == encoder.blocks.mlp.fc1.kernel.shape
  assert (dims.embed_dim, dims.num_heads, dims.grid, dims.num_tokens) == (
      encoder.embed_dim, encoder.num_heads, encoder.grid, encoder.num_patches)
  assert dims.patch_dim == int(np.prod(encoder.patch_embed.proj.kernel.shape[:-1]))
  assert (dims.pred_depth, dims.pred_embed_dim, dims.pred_mlp_hidden) == pred.predictor_blocks.mlp.fc1.kernel.shape
  assert dims.pred_num_heads == pred.num_heads
  cfg.name = "vit_nope"
  with pytest.raises(ValueError, match="config.model.name 'vit_nope'"):
    models.model_dims(cfg)


def test_init_is_the_effective_official_pretraining_init():
  model = _encoder(embed_dim=192, num_heads=3, depth=2, seed=3)
  params = _params(model)
  for i in range(2):
    for name, kernel in [("qkv", params["blocks"][i]["attn"]["qkv"]["kernel"]),
                         ("proj", params["blocks"][i]["attn"]["proj"]["kernel"]),
                         ("fc2", params["blocks"][i]["mlp"]["fc2"]["kernel"])]:
      # std 0.02 in every block: no 1/sqrt(2 i) rescale (overwritten by the official re-init).
      assert abs(float(jnp.std(kernel)) - 0.02) < 0.001, (i, name)
  qkv = np.asarray(params["blocks"][0]["attn"]["qkv"]["kernel"])
  assert np.abs(qkv).max() > 2.2 * 0.02  # a plain normal; jax's truncated_normal would stop at 2 sigma
  assert abs(float(jnp.std(params["patch_embed"]["proj"]["kernel"])) - 0.02) < 0.002
  for path, leaf in torch_layout._flatten(params).items():
    if path[-1] == "bias":
      assert not np.any(leaf), path
    if path[-1] == "scale":
      assert np.all(np.asarray(leaf) == 1), path
  with nnx.use_eager_sharding(False):
    pred = predictor.VisionTransformerPredictor(img_size=32, num_frames=4, embed_dim=384, predictor_embed_dim=48,
                                                depth=1, num_heads=4, rngs=nnx.Rngs(0))
  assert all(not np.any(t[...]) for t in pred.mask_tokens)


# --------------------------------------------------------------------------------------------------------------
# Options that must not change the function


def test_bfloat16_compute_is_within_2e_2_of_float32_and_outputs_float32(shared):
  _, params, apply = shared
  bf16 = _encoder(seed=1, dtype=jnp.bfloat16)
  x = _clip()
  want = apply(params, x)
  got = _apply(bf16)(params, x)
  err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
  print(f"bf16 vs f32 relative error: {err:.2e}")
  assert got.dtype == jnp.float32 and 0 < err < 2e-2
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(_params(bf16)))


def test_attention_softmax_runs_in_float32_for_bfloat16_inputs():
  with nnx.use_eager_sharding(False):
    attn = layers.Attention(64, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  jaxpr = jax.make_jaxpr(lambda x: attn(x))(jnp.ones((1, 8, 64), jnp.float32))
  exps = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "exp"]
  assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)


def test_scanned_and_unrolled_layers_compute_the_same_function(shared):
  _, params, apply = shared
  scanned = _abstract(lambda: vit.VisionTransformer(img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=4,
                                                    scan_layers=True, rngs=nnx.Rngs(0)))
  stacked = torch_layout.stack_layers(params)
  assert stacked["blocks"]["attn"]["qkv"]["kernel"].shape == (2, 64, 192)
  x = _clip()
  np.testing.assert_allclose(_apply(scanned)(stacked, x), apply(params, x), rtol=0, atol=1e-6)
  # The layouts convert both ways without loss and export to the same official state_dict.
  back = torch_layout.unstack_layers(stacked)
  assert torch_layout.stack_layers(stacked) == stacked and torch_layout.unstack_layers(back) == back  # idempotent
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), back, params))
  sd_scanned = torch_layout.to_torch_state_dict(stacked, scanned=True)
  sd_unrolled = torch_layout.to_torch_state_dict(params)
  assert sd_scanned.keys() == sd_unrolled.keys()
  assert all(np.array_equal(sd_scanned[k], sd_unrolled[k]) for k in sd_unrolled)


def test_scanned_predictor_equals_unrolled_predictor():
  kwargs = dict(img_size=32, num_frames=4, embed_dim=64, predictor_embed_dim=32, depth=2, num_heads=4,
                zero_init_mask_tokens=False)
  with nnx.use_eager_sharding(False):
    unrolled = predictor.VisionTransformerPredictor(**kwargs, rngs=nnx.Rngs(4))
  scanned = _abstract(lambda: predictor.VisionTransformerPredictor(**kwargs, scan_layers=True, rngs=nnx.Rngs(0)))
  params = _params(unrolled)
  ctx = jax.random.normal(jax.random.key(0), (2, 3, 64))
  ctx_idx, tgt_idx = jnp.array([[0, 2, 5]] * 2), jnp.array([[1, 7], [3, 4]])
  apply = lambda m, p: jax.jit(lambda p, *a: nnx.merge(nnx.graphdef(m), p)(*a, 1))(p, ctx, ctx_idx, tgt_idx)
  np.testing.assert_allclose(apply(scanned, torch_layout.stack_layers(params)), apply(unrolled, params),
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize("scan_layers,policies", [(False, ("dots",)), (True, ("full", "dots_no_batch"))])
def test_remat_changes_neither_outputs_nor_gradients(scan_layers, policies):
  base = _encoder(seed=5, scan_layers=scan_layers)
  params, x = _params(base), _clip()

  def loss_and_grad(model):
    graphdef = nnx.graphdef(model)
    fn = lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)
    return jax.jit(jax.value_and_grad(fn))(params), jax.make_jaxpr(fn)(params)

  (want_loss, want_grad), _ = loss_and_grad(base)
  for remat in policies:
    (loss, grad), jaxpr = loss_and_grad(_encoder(seed=5, scan_layers=scan_layers, remat=remat))
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr), remat
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad, want_grad)


def test_image_input_equals_the_image_repeated_along_time(shared):
  model, params, apply = shared
  image = _clip(4, 1)[:, 0]
  clip = jnp.repeat(image[:, None], model.num_frames, axis=1)
  np.testing.assert_array_equal(apply(params, image), apply(params, clip))


def test_kept_tokens_keep_their_absolute_positions(shared):
  """keep_indices gathers after the positions are added: attention is order-free, so a permutation of all tokens
  permutes the output, and keeping every token in order is the full forward."""
  model, params, apply = shared
  x = _clip()
  full = apply(params, x)
  rng = np.random.default_rng(0)
  perm = np.stack([rng.permutation(model.num_patches) for _ in range(4)]).astype(np.int32)
  in_order = np.tile(np.arange(model.num_patches, dtype=np.int32), (4, 1))
  np.testing.assert_allclose(apply(params, x, in_order), full, rtol=0, atol=1e-6)
  np.testing.assert_allclose(apply(params, x, perm), np.take_along_axis(np.asarray(full), perm[..., None], 1),
                             rtol=0, atol=1e-5)


def test_embedding_kept_tubelets_equals_the_official_embed_then_gather(shared):
  """embed(x, keep) selects the tubelets' pixels before the projection; the official encoder embeds every token and
  gathers after the positions are added. Same tokens, and the same patch-embedding gradient (which the gather-first
  order computes without scattering into all N tokens)."""
  model, params, _ = shared
  graphdef = nnx.graphdef(model)
  x = _clip()
  keep = jnp.asarray(np.sort(np.random.default_rng(1).permutation(model.num_patches)[:5]), jnp.int32)
  keep = jnp.tile(keep, (4, 1))

  def first_then_gather(p):
    return jnp.take_along_axis(nnx.merge(graphdef, p).embed(x), keep[..., None], axis=1)

  def gather_then_embed(p):
    return nnx.merge(graphdef, p).embed(x, keep)

  np.testing.assert_allclose(gather_then_embed(params), first_then_gather(params), rtol=1e-6, atol=1e-6)
  assert gather_then_embed(params).shape == (4, 5, model.embed_dim)
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))
  g_official = jax.grad(loss(first_then_gather))(params)["patch_embed"]
  g_ours = jax.grad(loss(gather_then_embed))(params)["patch_embed"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_ours, g_official)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_take_tokens_one_hot_path_equals_the_gather(monkeypatch, dtype):
  """On TPU take_tokens selects by one-hot matmul (layers.take_tokens); forced here on the CPU, it returns exactly
  the gathered values for batched tokens and for a table shared by the batch, at magnitudes from 1e-20 to 1e20;
  above ONE_HOT_MAX_TOKENS it gathers."""
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 40, 24)) * 10.0 ** rng.integers(-20, 20, size=(3, 40, 24))).astype(np.float32)
  x = jnp.asarray(x, dtype)
  table = x[0]
  idx = jnp.asarray(np.stack([np.sort(rng.choice(40, 17, replace=False)) for _ in range(3)]), jnp.int32)
  gathered = layers.take_tokens(x, idx), layers.take_tokens(table, idx)
  monkeypatch.setattr(layers.attention, "current_platform", lambda: "tpu")
  one_hot = layers.take_tokens(x, idx), layers.take_tokens(table, idx)
  np.testing.assert_array_equal(np.asarray(gathered[0], np.float32), np.take_along_axis(np.asarray(x, np.float32),
                                                                                        np.asarray(idx)[..., None], 1))
  for g, o in zip(gathered, one_hot):
    assert o.dtype == g.dtype and o.shape == g.shape
    np.testing.assert_array_equal(np.asarray(o, np.float32), np.asarray(g, np.float32))
  monkeypatch.setattr(layers, "ONE_HOT_MAX_TOKENS", 39)  # above the limit: the gather again
  jaxpr = str(jax.make_jaxpr(layers.take_tokens)(x, idx))
  assert "gather" in jaxpr and "dot_general" not in jaxpr


def test_sharded_forward_on_a_2x2x2_mesh_equals_single_device(shared):
  """The activation constraints keep XLA's partitioner honest (docs/reference.md §10)."""
  model, params, apply = shared
  x = _clip()
  want = apply(params, x)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  rules = default.get_config().mesh.rules
  graphdef = nnx.graphdef(model)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    shardings = nnx.to_pure_dict(nnx.get_named_sharding(nnx.state(model, nnx.Param), mesh))
    batch = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
    fn = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x), in_shardings=(shardings, batch))
    got = fn(jax.device_put(params, shardings), jax.device_put(x, batch))
  assert shardings["blocks"][0]["attn"]["qkv"]["kernel"].spec == jax.P("fsdp", "tensor")
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Builders


def test_builders_honour_config_model():
  cfg = _small_config(dtype="bfloat16", attention_impl="", remat="dots", scan_layers=True, pred_num_heads=0)
  encoder = _abstract(lambda: models.build_encoder(cfg, nnx.Rngs(0)))
  pred = _abstract(lambda: models.build_predictor(cfg, 3, nnx.Rngs(0)))
  assert encoder.embed_dim == 192 and encoder.num_heads == 3 and encoder.grid == (2, 2, 2)
  assert encoder.remat == "dots" and encoder.scan_layers
  assert encoder.blocks.attn.qkv.dtype == jnp.bfloat16 and encoder.blocks.attn.attention_impl is None
  assert encoder.blocks.attn.qkv.kernel.shape == (12, 192, 576)
  assert pred.num_heads == 3 and pred.depth == 2 and len(pred.mask_tokens) == 3
  assert pred.predictor_embed.kernel.shape == (192, 48) and pred.predictor_proj.kernel.shape == (48, 192)
  cfg = _small_config(pred_num_heads=6, attention_impl="xla")
  pred = _abstract(lambda: models.build_predictor(cfg, 2, nnx.Rngs(0)))
  assert pred.num_heads == 6 and pred.predictor_blocks[0].attn.attention_impl == "xla"
  with pytest.raises(ValueError, match="vit_nope"):
    models.build_encoder(_small_config(name="vit_nope"), nnx.Rngs(0))
