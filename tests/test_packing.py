"""One pass for all mask generators: the packed step (along the sequence or the batch, for the context encoder and the
predictor) computes the loss, metrics and gradients of the official pass per generator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import optim
from jepa_jax import train_state
from jepa_jax import train_step as train_step_lib
from jepa_jax.models import attention, packing
import tiny


def _loss_and_grads(config, params, target_params, batch):
  defs = train_state.model_defs(config)
  fns = train_step_lib.make_step_functions(config, defs.encoder_def, defs.predictor_def,
                                           optim.make_optimizer(config.optim))
  grad_fn = jax.value_and_grad(train_step_lib.jepa_loss, has_aux=True)
  (loss, aux), grads = jax.jit(grad_fn, static_argnums=3)(params, target_params, batch, fns)
  return float(loss), {k: float(v) for k, v in aux.items()}, grads


@pytest.fixture(scope="module")
def two_pass():
  config = tiny.tiny_config(**{"model.context_packing": "none", "model.predictor_packing": "none",
                               "loss.reg_coeff": 0.5})  # the reg term reads the predictions' spread: check it too
  batch = tiny.random_batches(config, 1, seed=3)[0]
  contexts = [c.shape[1] for c in batch["context_masks"]]
  sequences = [c + t.shape[1] for c, t in zip(contexts, batch["target_masks"])]
  assert len(set(contexts)) == 2 and len(set(sequences)) == 2, (contexts, sequences)  # batch packing pads
  params = train_state.init_params(config, 2)
  params["predictor"]["mask_tokens"] = {  # distinct mask tokens, so a swapped generator would show
      i: jax.random.normal(jax.random.key(i), t.shape) for i, t in params["predictor"]["mask_tokens"].items()}
  target = jax.tree.map(lambda x: x * 1.01, params["encoder"])
  return config, params, target, batch, _loss_and_grads(config, params, target, batch)


def _assert_same_step(got, want):
  loss, aux, grads = got
  want_loss, want_aux, want_grads = want
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for key in want_aux:
    np.testing.assert_allclose(aux[key], want_aux[key], rtol=1e-5, err_msg=key)
  flat, want_flat = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (grads, want_grads))
  assert [p for p, _ in flat] == [p for p, _ in want_flat]
  for (path, g), (_, w) in zip(flat, want_flat):
    g, w = np.asarray(g), np.asarray(w)
    assert np.abs(w).max() > 0, jax.tree_util.keystr(path)
    err = float(np.abs(g - w).max() / np.abs(w).max())
    assert err < 1e-5, (jax.tree_util.keystr(path), err)


@pytest.mark.parametrize("context_packing,predictor_packing", [
    ("sequence", "batch"), ("batch", "sequence"), ("sequence", "sequence"), ("batch", "batch")])
def test_packed_step_equals_the_pass_per_generator(two_pass, context_packing, predictor_packing):
  config, params, target, batch, want = two_pass
  config = config.copy_and_resolve_references()
  config.model.context_packing, config.model.predictor_packing = context_packing, predictor_packing
  _assert_same_step(_loss_and_grads(config, params, target, batch), want)


def test_packed_step_with_the_splash_kernel_equals_the_pass_per_generator(two_pass):
  """The default packing through the Pallas kernel (interpreted here): segments and row lengths reach the kernel."""
  config, params, target, batch, want = two_pass
  config = config.copy_and_resolve_references()
  config.model.attention_impl = "splash"
  with attention.pallas_interpret():
    _assert_same_step(_loss_and_grads(config, params, target, batch), want)


def test_batch_packing_interleaves_rows_and_round_trips():
  parts = [jnp.arange(2 * 3).reshape(2, 3), jnp.arange(2 * 5).reshape(2, 5) + 100]
  packed = packing.pack_batch(parts)
  assert packed.shape == (4, 5)
  np.testing.assert_array_equal(packed[1], [100, 101, 102, 103, 104])  # clip 0, generator 1
  np.testing.assert_array_equal(packed[2], [3, 4, 5, 0, 0])  # clip 1, generator 0, padded
  np.testing.assert_array_equal(packing.batch_lengths([3, 5], 2), [3, 5, 3, 5])
  for got, want in zip(packing.unpack_batch(packed, [3, 5]), parts):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(packing.unpack_sequence(packing.pack_sequence(parts), [3, 5]), parts):
    np.testing.assert_array_equal(got, want)


def test_flops_wasted_on_padding_match_xla_and_vanish_without_packing():
  """jepa_jax/flops.py's packing waste against XLA's own count of the predictor blocks, packed and one pass per
  generator (blocks only, all rows summed: XLA would otherwise drop rows the model slices away)."""
  from flax import nnx
  from jepa_jax import flops
  from jepa_jax.models import predictor as predictor_lib
  from jepa_jax.models.attention import TokenLayout
  dim, pdim, depth, batch = 64, 64, 2, 2
  num_context, num_target = (12, 5), (20, 40)  # predictor sequences of 32 and 45 tokens: 13 padding tokens
  kwargs = dict(embed_dim=dim, depth=depth, mlp_hidden=4 * dim, pred_embed_dim=pdim, pred_depth=depth,
                pred_mlp_hidden=4 * pdim, num_context=num_context, num_target=num_target, batch=batch)
  assert flops.packing_waste_flops(**kwargs, context_packing="none", predictor_packing="none")["total"] == 0
  assert flops.packing_waste_flops(**kwargs, context_packing="sequence", predictor_packing="sequence",
                                   dense_attention=False)["total"] == 0

  with nnx.use_eager_sharding(False):
    model = predictor_lib.VisionTransformerPredictor(img_size=64, num_frames=4, embed_dim=dim,
                                                     predictor_embed_dim=pdim, depth=depth, num_heads=4,
                                                     rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  lengths = [c + t for c, t in zip(num_context, num_target)]
  rng = np.random.default_rng(0)
  sequences = [jnp.asarray(rng.normal(size=(batch, n, pdim)), jnp.float32) for n in lengths]
  layouts = {"none": None, "batch": TokenLayout(kv_lengths=packing.batch_lengths(lengths, batch)),
             "sequence": TokenLayout(segments=tuple(lengths))}
  inputs = {"none": sequences, "batch": [packing.pack_batch(sequences)],
            "sequence": [packing.pack_sequence(sequences)]}

  def xla_flops(name):
    def blocks(p, xs):
      model = nnx.merge(graphdef, p)
      return sum(model._blocks(x, layouts[name] or TokenLayout()).sum() for x in xs)
    cost = jax.jit(blocks).lower(params, inputs[name]).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

  baseline = xla_flops("none")
  for name in ("batch", "sequence"):
    waste = flops.packing_waste_flops(**kwargs, context_packing="none", predictor_packing=name)
    measured = xla_flops(name) - baseline
    print(f"predictor {name} packing, forward waste: analytic {waste['predictor'] / 3:.4g}, XLA {measured:.4g}")
    # XLA also counts the softmax and masking of the extra logits, which the matmul count leaves out (~10%).
    assert waste["context"] == 0 and measured == pytest.approx(waste["predictor"] / 3, rel=0.15)
