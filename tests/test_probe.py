"""The attentive probe against a PyTorch oracle written from docs/reference.md §6.1, with identical weights."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jepa_jax.models.probe import AttentiveClassifier
from tests.torch_probe_reference import AttentiveClassifier as TorchAttentiveClassifier
from tests.torch_reference import rel_error
from tests.torch_reference_v2 import AttentiveClassifierV2 as TorchAttentiveClassifierV2

D, HEADS, CLASSES = 64, 4, 10


def _build(dim=D, heads=HEADS, classes=CLASSES, seed=0, dtype=jnp.float32):
  with nnx.use_eager_sharding(False):
    return AttentiveClassifier(dim, heads, classes, dtype=dtype, rngs=nnx.Rngs(seed))


def _torch_state_dict(model):
  """Our tree -> official keys: path joined with '.', kernel -> weight (transposed), scale -> weight."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  out = {}
  for path, var in flat:
    names = [str(p) for p in path]
    value = np.array(var[...], dtype=np.float32)
    if names[-1] == 'kernel':
      names[-1], value = 'weight', value.T
    elif names[-1] == 'scale':
      names[-1] = 'weight'
    out['.'.join(names)] = torch.from_numpy(value.copy())
  return out


def _tokens(b=3, n=50, dim=D, seed=1):
  return np.random.default_rng(seed).normal(size=(b, n, dim)).astype(np.float32) * 2.0


def test_param_names_are_the_official_probe_keys():
  sd = _torch_state_dict(_build())
  ref = TorchAttentiveClassifier(D, HEADS, CLASSES).state_dict()
  assert sorted(sd) == sorted(ref)
  assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
  assert 'pooler.cross_attention_block.xattn.proj.weight' in sd


def test_logits_match_torch_with_identical_weights():
  model = _build()
  ref = TorchAttentiveClassifier(D, HEADS, CLASSES)
  ref.load_state_dict(_torch_state_dict(model), strict=True)
  x = _tokens()
  ours = np.asarray(jax.jit(lambda m, t: m(t))(model, x))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(x)).numpy()
  assert ours.dtype == np.float32 and ours.shape == (3, CLASSES)
  rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
  assert rel < 1e-5, rel


def test_kv_rows_are_k_then_v():
  # The torch oracle fixes the layout; this guards the test itself: a swapped [v | k] split gives other logits.
  model = _build()
  x = _tokens()
  base = np.asarray(model(x))
  kv = model.pooler.cross_attention_block.xattn.kv
  k_rows = kv.kernel[...][:, :D]
  kv.kernel[...] = jnp.concatenate([kv.kernel[...][:, D:], k_rows], axis=1)
  assert not np.allclose(np.asarray(model(x)), base, atol=1e-6)


def test_output_projection_is_in_params_but_not_applied():
  model = _build()
  x = _tokens()
  base = np.asarray(model(x))
  proj = model.pooler.cross_attention_block.xattn.proj
  proj.kernel[...] = proj.kernel[...] * 7.0 + 1.0
  proj.bias[...] = proj.bias[...] + 3.0
  np.testing.assert_array_equal(np.asarray(model(x)), base)
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p)(x) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  assert float(jnp.abs(grads['pooler']['cross_attention_block']['xattn']['proj']['kernel'][...]).max()) == 0.0
  assert float(jnp.abs(grads['pooler']['query_tokens'][...]).max()) > 0.0


def test_init_statistics_follow_the_official_init():
  dim = 256
  model = _build(dim=dim, heads=8, classes=400, seed=3)
  blk = model.pooler.cross_attention_block
  std = lambda v: float(np.std(np.asarray(v[...])))
  for lin in (blk.xattn.q, blk.xattn.kv, blk.mlp.fc1):
    assert std(lin.kernel) == pytest.approx(0.02, rel=0.03)
    assert float(np.abs(np.asarray(lin.bias[...])).max()) == 0.0
  # Rescaled by sqrt(2) after the init (_rescale_blocks with layer_id 1).
  assert std(blk.mlp.fc2.kernel) == pytest.approx(0.02 / math.sqrt(2), rel=0.03)
  assert std(blk.xattn.proj.kernel) == pytest.approx(0.02 / math.sqrt(2), rel=0.03)
  assert std(model.pooler.query_tokens) == pytest.approx(0.02, rel=0.25)  # only 256 draws
  np.testing.assert_array_equal(np.asarray(blk.norm1.scale[...]), 1.0)
  # The head keeps torch's default Linear init: U(+-1/sqrt(D)), std = bound / sqrt(3), for weight and bias.
  bound = 1 / math.sqrt(dim)
  head = np.asarray(model.linear.kernel[...])
  assert np.abs(head).max() <= bound and std(model.linear.kernel) == pytest.approx(bound / math.sqrt(3), rel=0.03)
  assert np.abs(np.asarray(model.linear.bias[...])).max() <= bound
  # Same statistics as the torch oracle's own init.
  torch.manual_seed(0)
  ref = TorchAttentiveClassifier(dim, 8, 400)
  assert float(ref.pooler.cross_attention_block.mlp.fc2.weight.detach().std()) == pytest.approx(
      std(blk.mlp.fc2.kernel), rel=0.05)


def test_layernorm_eps_is_torch_default():
  blk = _build().pooler.cross_attention_block
  assert blk.norm1.epsilon == 1e-5 and blk.norm2.epsilon == 1e-5


def test_logical_axis_names_for_sharding():
  model = _build()
  flat = {'.'.join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  names = lambda k: tuple(flat[k].get_metadata()['out_sharding'])
  assert names('linear.kernel') == ('embed', 'classes')
  assert names('linear.bias') == ('classes',)
  assert names('pooler.cross_attention_block.norm1.scale') == ('norm',)
  assert names('pooler.cross_attention_block.xattn.kv.kernel') == ('embed', 'heads')
  assert names('pooler.cross_attention_block.mlp.fc2.kernel') == ('mlp', 'embed')
  assert names('pooler.query_tokens') == (None, None, 'embed')


def test_bfloat16_compute_stays_close_and_returns_float32():
  f32 = _build()
  bf16 = _build(dtype=jnp.bfloat16)
  x = _tokens()
  a, b = np.asarray(f32(x)), bf16(jnp.asarray(x, jnp.bfloat16))
  assert b.dtype == jnp.float32
  assert np.linalg.norm(a - np.asarray(b)) / np.linalg.norm(a) < 3e-2


def test_depth_below_one_is_refused():
  with pytest.raises(ValueError, match="num_probe_blocks"):
    with nnx.use_eager_sharding(False):
      AttentiveClassifier(D, HEADS, CLASSES, depth=0, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------- V-JEPA 2 probe (num_probe_blocks 4)

V2_D, V2_HEADS, V2_DEPTH = 96, 16, 4  # 16 heads as every V-JEPA 2 eval config


def _build_v2(dim=V2_D, heads=V2_HEADS, classes=CLASSES, depth=V2_DEPTH, seed=0, dtype=jnp.float32):
  with nnx.use_eager_sharding(False):
    return AttentiveClassifier(dim, heads, classes, depth=depth, dtype=dtype, rngs=nnx.Rngs(seed))


def test_v2_param_names_are_the_official_probe_keys():
  sd = _torch_state_dict(_build_v2())
  ref = TorchAttentiveClassifierV2(V2_D, V2_HEADS, CLASSES, depth=V2_DEPTH).state_dict()
  assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
  assert 'pooler.blocks.2.attn.qkv.weight' in sd and 'pooler.blocks.3.norm1.weight' not in sd
  assert not any('xattn.proj' in k for k in sd)  # V-JEPA 2's CrossAttention has no proj


@pytest.mark.parametrize('depth', [2, 4])
def test_v2_logits_match_torch_with_identical_weights(depth):
  model = _build_v2(depth=depth, seed=4)
  ref = TorchAttentiveClassifierV2(V2_D, V2_HEADS, CLASSES, depth=depth)
  ref.load_state_dict(_torch_state_dict(model), strict=True)
  x = _tokens(b=3, n=70, dim=V2_D, seed=5)
  with torch.no_grad():
    theirs = ref(torch.from_numpy(x)).numpy()
  ours = np.asarray(jax.jit(lambda m, t: m(t))(model, x))
  err = rel_error(ours, theirs)
  bf16 = _build_v2(depth=depth, seed=4, dtype=jnp.bfloat16)
  err_bf16 = rel_error(np.asarray(jax.jit(lambda m, t: m(t))(bf16, jnp.asarray(x, jnp.bfloat16))), theirs)
  print(f'V-JEPA 2 probe depth {depth}: float32 rel err {err:.2e}, bfloat16 {err_bf16:.2e}')
  assert ours.dtype == np.float32 and ours.shape == (3, CLASSES)
  assert err <= 1e-5
  assert err_bf16 <= 2e-2


def test_v2_blocks_run_over_the_tokens_before_the_query():
  # With the blocks' output projections zeroed each block is the identity, so the pooler reduces to its
  # cross-attention block over the raw tokens; with them, the tokens are changed before the query attends.
  model = _build_v2(seed=6)
  x = _tokens(b=2, n=30, dim=V2_D, seed=7)
  run = jax.jit(lambda m, t: m(t))
  full = np.asarray(run(model, x))
  for blk in model.pooler.blocks:
    for lin in (blk.attn.proj, blk.mlp.fc2):
      lin.kernel[...] = jnp.zeros_like(lin.kernel[...])
      lin.bias[...] = jnp.zeros_like(lin.bias[...])
  pooled = model.pooler.cross_attention_block(
      jnp.broadcast_to(model.pooler.query_tokens[...], (2, 1, V2_D)), jnp.asarray(x))
  identity_blocks = np.asarray(run(model, x))
  np.testing.assert_allclose(identity_blocks, np.asarray(model.linear(pooled[:, 0])), rtol=1e-5, atol=1e-6)
  assert rel_error(full, identity_blocks) > 1e-3


def test_v2_every_parameter_gets_a_gradient():
  model = _build_v2(seed=8)
  x = _tokens(b=2, n=20, dim=V2_D, seed=9)
  graphdef, params = nnx.split(model, nnx.Param)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)))(params)
  dead = [k for k, g in nnx.to_flat_state(grads) if float(jnp.abs(g[...]).max()) == 0.0]
  assert dead == []


def test_v2_init_statistics_follow_the_official_init():
  dim, heads = 512, 16
  model = _build_v2(dim=dim, heads=heads, classes=400, seed=10)
  std = lambda v: float(np.std(np.asarray(v[...])))
  blocks, cross = model.pooler.blocks, model.pooler.cross_attention_block
  for i, blk in enumerate(blocks):
    for lin in (blk.attn.qkv, blk.mlp.fc1):
      assert std(lin.kernel) == pytest.approx(0.02, rel=0.03)
    # _rescale_blocks: layer_id = i + 1.
    for lin in (blk.attn.proj, blk.mlp.fc2):
      assert std(lin.kernel) == pytest.approx(0.02 / math.sqrt(2 * (i + 1)), rel=0.03)
    assert blk.norm1.epsilon == 1e-5 and blk.norm2.epsilon == 1e-5
  for lin in (cross.xattn.q, cross.xattn.kv, cross.mlp.fc1):
    assert std(lin.kernel) == pytest.approx(0.02, rel=0.03)
  # The cross block's fc2 takes the last block's layer_id + 1 = 3: 0.02 / sqrt(6).
  assert std(cross.mlp.fc2.kernel) == pytest.approx(0.02 / math.sqrt(6), rel=0.03)
  ref = TorchAttentiveClassifierV2(dim, heads, 400, depth=4)
  for name in ('blocks.2.mlp.fc2', 'cross_attention_block.mlp.fc2', 'blocks.0.attn.proj'):
    theirs = float(ref.pooler.get_submodule(name).weight.detach().std())
    ours = std(model.pooler.blocks[int(name.split('.')[1])].mlp.fc2.kernel if name.startswith('blocks.2')
               else cross.mlp.fc2.kernel if name.startswith('cross') else blocks[0].attn.proj.kernel)
    assert ours == pytest.approx(theirs, rel=0.05), name


def test_v2_parameter_count_vit_large_ssv2():
  # ViT-L width, 16 heads, 174 classes (SSv2), num_probe_blocks 4; counted on an abstract model.
  from jepa_jax.models import count_params
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: AttentiveClassifier(1024, 16, 174, depth=4, rngs=nnx.Rngs(0)))
  assert count_params(abstract) == 49_514_670


# ---------------------------------------------------------------------------------------------- optimizer (6.2)

def _official_lr_wd(s, total, lr=1e-3, final_lr=0.0, wd=0.01, final_wd=1e-6):
  """WarmupCosineSchedule(warmup 0) and CosineWDSchedule as written in docs/reference.md §4.3 / §6.2, at official step
  s."""
  c = 0.5 * (1.0 + math.cos(math.pi * s / total))
  return max(final_lr, final_lr + (lr - final_lr) * c), max(final_wd, final_wd + (wd - final_wd) * c)


def test_probe_optimizer_matches_torch_adamw_with_official_groups_and_clipping():
  import optax
  from jepa_jax.evaluation.probe_optim import make_probe_optimizer, probe_weight_decay_mask

  steps, wd = 6, 0.05
  model = _build(dim=32, heads=4, classes=5)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  ref = TorchAttentiveClassifier(32, 4, 5)
  ref.load_state_dict(_torch_state_dict(model), strict=True)
  named = dict(ref.named_parameters())
  decay = [p for n, p in named.items() if 'bias' not in n and p.ndim != 1]
  no_decay = [p for n, p in named.items() if 'bias' in n or p.ndim == 1]
  opt_t = torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}])

  mask = probe_weight_decay_mask(params)
  assert mask['pooler']['query_tokens'] and mask['linear']['kernel']
  assert not mask['linear']['bias'] and not mask['pooler']['cross_attention_block']['norm1']['scale']

  tx = make_probe_optimizer(1e-3, 0.0, wd, total_steps=steps)
  opt_state = tx.init(params)

  @jax.jit
  def apply(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(0)
  clipped = 0
  for step in range(steps):
    # Global grad norm ~ factor: some steps above the clip norm 1.0, some below.
    scale = [0.3, 3.0, 0.5, 5.0, 0.2, 2.0][step] / math.sqrt(sum(p.numel() for p in named.values()))
    grads_t = {n: None if 'xattn.proj' in n else rng.normal(size=p.shape).astype(np.float32) * scale
               for n, p in named.items()}
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads_t.values() if g is not None))
    clipped += norm > 1.0
    # torch: schedulers step before the forward, so this step uses s = step + 1.
    lr, wdv = _official_lr_wd(step + 1, steps, wd=wd)
    for i, g in enumerate(opt_t.param_groups):
      g['lr'] = lr
      if i == 0:
        g['weight_decay'] = wdv
    for n, p in named.items():
      p.grad = None if grads_t[n] is None else torch.from_numpy(grads_t[n])
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    opt_t.step()
    # ours: same grads in our layout (kernel = weight.T), zero for the unused proj.
    flat = {}
    for (path, var) in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      names = [str(p) for p in path]
      tkey = '.'.join(names[:-1] + ['weight' if names[-1] in ('kernel', 'scale') else names[-1]])
      g = grads_t[tkey]
      g = np.zeros(var[...].shape, np.float32) if g is None else (g.T if names[-1] == 'kernel' else g)
      flat[tuple(path)] = g
    grads = jax.tree_util.tree_map_with_path(
        lambda path, _: jnp.asarray(flat[tuple(getattr(k, 'key', k) for k in path)]), params)
    params, opt_state = apply(grads, opt_state, params)
  assert 0 < clipped < steps

  with nnx.use_eager_sharding(False):
    nnx.update(model, nnx.State(params))
  ours = _torch_state_dict(model)
  init = _torch_state_dict(_build(dim=32, heads=4, classes=5))
  theirs = {k: v.detach() for k, v in ref.state_dict().items()}
  for k in theirs:
    rel = float((ours[k] - theirs[k]).norm() / theirs[k].norm().clamp_min(1e-12))
    assert rel < 1e-6, (k, rel)
    # The change itself (~lr per step) must agree too, not only the large initial values. Zero-init biases
    # agree to ~2e-7; weights carry float32 rounding of p (ulp of 0.1 vs steps of 1e-3), ~7e-6 at worst.
    moved_t, moved_o = theirs[k] - init[k], ours[k] - init[k]
    if moved_t.norm() > 0:
      assert float((moved_o - moved_t).norm() / moved_t.norm()) < 2e-5, k
  proj = 'pooler.cross_attention_block.xattn.proj.weight'
  assert torch.equal(ours[proj], init[proj])  # never updated, never decayed, as in torch


def test_probe_schedules_start_at_step_one_and_end_at_the_final_values():
  from jepa_jax.evaluation.probe_optim import probe_lr_schedule, probe_wd_schedule
  lr, wd = probe_lr_schedule(1e-3, 0.0, 100), probe_wd_schedule(0.01, 1e-6, 100)
  assert float(lr(0)) == pytest.approx(_official_lr_wd(1, 100)[0], rel=1e-6)
  assert float(lr(0)) < 1e-3  # no warmup, and the first step already uses s = 1
  assert float(lr(99)) == pytest.approx(0.0, abs=1e-12)
  assert float(wd(99)) == pytest.approx(1e-6, rel=1e-4)
  assert float(wd(49)) == pytest.approx(_official_lr_wd(50, 100)[1], rel=1e-5)


# ------------------------------------------------------------------------------- V-JEPA 2 optimizer (9.5)

def _official_multihead_lr_wd(s, total, ipe, head):
  """The official V-JEPA 2 eval's WarmupCosineLRSchedule and CosineWDSchedule (evals/video_classification_frozen/
  eval.py, docs/reference.md §9.5), transcribed, at official step s (counted from 1)."""
  warm = int(head['warmup'] * ipe)
  if s < warm:
    lr = head['start_lr'] + s / max(1, warm) * (head['lr'] - head['start_lr'])
  else:
    progress = (s - warm) / max(1, total - warm)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    lr = max(head['final_lr'], head['final_lr'] + (head['lr'] - head['final_lr']) * cosine)
  ref_wd, final_wd = head['weight_decay'], head['final_weight_decay']
  wd = final_wd + (ref_wd - final_wd) * 0.5 * (1 + math.cos(math.pi * s / total))
  return lr, (max(final_wd, wd) if final_wd <= ref_wd else min(final_wd, wd))


def test_official_multihead_schedules_at_every_step():
  from jepa_jax.evaluation.probe_optim import head_hparams, lr_at, wd_at
  ipe, total = 3, 60  # 20 epochs of 3 steps
  in1k_warm = {'lr': 1.5e-3, 'start_lr': 2e-4, 'final_lr': 0.0, 'warmup': 5.0, 'weight_decay': 4e-3,
               'final_weight_decay': 4e-3}
  in1k_first = {'lr': 1e-3, 'start_lr': 1e-3, 'final_lr': 0.0, 'warmup': 0.0, 'weight_decay': 1e-3,
                'final_weight_decay': 0.0}
  growing = {'lr': 1e-3, 'start_lr': 1e-3, 'final_lr': 1e-4, 'warmup': 0.0, 'weight_decay': 0.01,
             'final_weight_decay': 0.1}
  for head in (in1k_warm, in1k_first, growing):
    h = head_hparams(head, ipe)
    ours = np.asarray(jax.jit(jax.vmap(lambda c: jnp.stack([lr_at(h, c, total), wd_at(h, c, total)])))(
        jnp.arange(total)))
    theirs = np.array([_official_multihead_lr_wd(c + 1, total, ipe, head) for c in range(total)])
    # float32 cos near pi: the last lr values (~1e-6 of the peak) carry ~1e-11 absolute rounding.
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-10)
  h = head_hparams(in1k_warm, ipe)
  assert float(lr_at(h, 0, total)) == pytest.approx(2e-4 + (1.5e-3 - 2e-4) / 15, rel=1e-6)  # warming up from s = 1
  assert float(lr_at(h, 14, total)) == pytest.approx(1.5e-3, rel=1e-6)  # s = 15 = 5 epochs: the peak
  assert float(wd_at(h, 37, total)) == pytest.approx(4e-3, rel=1e-6)  # constant


def test_v2_probe_optimizer_matches_torch_adamw_one_group_without_clipping():
  import optax
  from jepa_jax.evaluation.probe_optim import head_hparams, make_probe_optimizer, probe_weight_decay_mask

  steps, ipe = 8, 2
  head = {'lr': 2e-3, 'start_lr': 5e-4, 'final_lr': 0.0, 'warmup': 1.5, 'weight_decay': 0.8,
          'final_weight_decay': 0.1}  # warmup 3 steps, then cosine; weight decay falling: every branch used
  model = _build_v2(dim=32, heads=4, classes=5, depth=4, seed=11)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  ref = TorchAttentiveClassifierV2(32, 4, 5, depth=4)
  ref.load_state_dict(_torch_state_dict(model), strict=True)
  named = dict(ref.named_parameters())
  opt_t = torch.optim.AdamW(ref.parameters())  # the official V-JEPA 2 probe: one group, every parameter decayed

  assert all(jax.tree.leaves(probe_weight_decay_mask(params, decay_all_params=True)))
  tx = make_probe_optimizer(total_steps=steps, clip=0.0, decay_all_params=True)
  opt_state = tx.init(params, head_hparams(head, ipe))

  @jax.jit
  def apply(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(3)
  n = sum(p.numel() for p in named.values())
  for step in range(steps):
    # Global grad norms far above and below 1.0: clipping at 1.0 (V-JEPA 1) would change the Adam moments.
    scale = [0.3, 3.0, 0.5, 5.0, 0.2, 2.0, 8.0, 0.1][step] / math.sqrt(n)
    grads_t = {k: rng.normal(size=p.shape).astype(np.float32) * scale for k, p in named.items()}
    lr, wd = _official_multihead_lr_wd(step + 1, steps, ipe, head)
    opt_t.param_groups[0]['lr'], opt_t.param_groups[0]['weight_decay'] = lr, wd
    for k, p in named.items():
      p.grad = torch.from_numpy(grads_t[k])
    opt_t.step()
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      names = [str(p) for p in path]
      g = grads_t['.'.join(names[:-1] + ['weight' if names[-1] in ('kernel', 'scale') else names[-1]])]
      flat[tuple(path)] = g.T if names[-1] == 'kernel' else g
    grads = jax.tree_util.tree_map_with_path(
        lambda path, _: jnp.asarray(flat[tuple(getattr(k, 'key', k) for k in path)]), params)
    params, opt_state = apply(grads, opt_state, params)

  with nnx.use_eager_sharding(False):
    nnx.update(model, nnx.State(params))
  ours = _torch_state_dict(model)
  init = _torch_state_dict(_build_v2(dim=32, heads=4, classes=5, depth=4, seed=11))
  theirs = {k: v.detach() for k, v in ref.state_dict().items()}
  for k in theirs:
    assert float((ours[k] - theirs[k]).norm() / theirs[k].norm().clamp_min(1e-12)) < 1e-6, k
    # The change itself must agree too, up to the float32 rounding of p at each step (LayerNorm weights near 1.0
    # round at ~6e-8 per step, a visible share of their small moves).
    moved_t, moved_o = theirs[k] - init[k], ours[k] - init[k]
    rounding = steps * 2.0 ** -24 * float(theirs[k].norm())
    assert float((moved_o - moved_t).norm()) < 2e-5 * float(moved_t.norm()) + rounding, k


def test_v2_probe_remat_recomputes_the_blocks_with_the_same_numbers():
  # The official V-JEPA 2 eval checkpoints the probe blocks' activations; ours (config.eval.probe_remat) too.
  x = jnp.asarray(_tokens(b=2, n=20, dim=32, seed=12))
  out = {}
  for remat in (False, True):
    with nnx.use_eager_sharding(False):
      model = AttentiveClassifier(32, 4, 5, depth=4, remat=remat, rngs=nnx.Rngs(13))
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    out[remat] = (np.asarray(jax.jit(loss)(params)), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert ('remat' in jaxpr or 'checkpoint' in jaxpr) == remat
  assert out[True][0] == out[False][0]
  assert rel_error(out[True][1], out[False][1]) <= 1e-6
