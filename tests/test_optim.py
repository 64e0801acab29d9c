"""Our optax chain is the official torch.optim.AdamW setup (docs/reference.md §4.1-§4.3), number for number."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from jepa_jax.configs import default
from jepa_jax import optim, schedules


def small_params(seed=0):
  """A tree with every kind of leaf the real model has: kernels, biases, LayerNorm scales, a conv, mask tokens."""
  rng = np.random.default_rng(seed)
  n = lambda *shape: rng.normal(0.0, 1.0, shape).astype(np.float32)
  block = lambda d: {
      "norm1": {"scale": 1.0 + 0.1 * n(d), "bias": n(d)},
      "attn": {"qkv": {"kernel": n(d, 3 * d), "bias": n(3 * d)}, "proj": {"kernel": n(d, d), "bias": n(d)}},
      "mlp": {"fc1": {"kernel": n(d, 2 * d), "bias": n(2 * d)}},
  }
  return {
      "encoder": {
          "patch_embed": {"proj": {"kernel": n(2, 2, 2, 3, 8), "bias": n(8)}},
          "blocks": {0: block(8), 1: block(8)},
          "norm": {"scale": 1.0 + 0.1 * n(8), "bias": n(8)},
      },
      "predictor": {
          "predictor_embed": {"kernel": n(8, 4), "bias": n(4)},
          "mask_tokens": {0: n(1, 1, 4), 1: n(1, 1, 4)},
          "predictor_blocks": {0: block(4)},
          "predictor_proj": {"kernel": n(4, 8), "bias": n(8)},
      },
  }


def flat(tree):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {optim._path_name(path): np.asarray(v) for path, v in leaves}


def small_cfg():
  """Short schedules: 4 steps per epoch, 1 warmup epoch, so clipping starts at step (1 + 1) * 4 = 8."""
  cfg = default.get_config().optim
  cfg.ipe, cfg.epochs, cfg.warmup = 4, 5, 1
  cfg.start_lr, cfg.lr, cfg.final_lr = 1e-2, 3e-2, 1e-3
  cfg.weight_decay, cfg.final_weight_decay = 0.04, 0.4
  cfg.clip_grad = 2.0
  return cfg


def test_decay_mask_follows_official_param_groups():
  mask = flat(optim.weight_decay_mask(small_params()))
  decayed = {k for k, v in mask.items() if v}
  assert "predictor.mask_tokens.0" in decayed and "predictor.mask_tokens.1" in decayed  # 3-D: decayed
  assert "encoder.patch_embed.proj.kernel" in decayed and "encoder.blocks.1.attn.qkv.kernel" in decayed
  assert not any(k.endswith("bias") for k in decayed)
  assert "encoder.norm.scale" not in decayed and "encoder.blocks.0.norm1.scale" not in decayed  # 1-D: excluded
  # encoder: conv + 3 kernels x 2 blocks; predictor: embed + proj + 3 kernels x 1 block + 2 mask tokens.
  assert len(decayed) == 7 + 7


def run_ours(cfg, params, grads_per_step):
  tx = optim.make_optimizer(cfg)
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), state

  for grads in grads_per_step:
    params, state = step(params, state, grads)
  return params


def run_torch(cfg, params, grads_per_step):
  """The official init_opt groups, scheduler order and per-module clip_grad_norm_ (docs/reference.md §4.1, §4.2)."""
  lr_fn, wd_fn = schedules.learning_rate_schedule(cfg), schedules.weight_decay_schedule(cfg)
  modules = {m: {k: torch.nn.Parameter(torch.tensor(v)) for k, v in flat(params[m]).items()} for m in params}
  groups = []
  for m in ("encoder", "predictor"):
    groups.append({"params": [p for k, p in modules[m].items() if "bias" not in k and p.ndim != 1]})
  for m in ("encoder", "predictor"):
    groups.append({"params": [p for k, p in modules[m].items() if "bias" in k or p.ndim == 1],
                   "WD_exclude": True, "weight_decay": 0})
  opt = torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps)
  for k, grads in enumerate(grads_per_step):
    # The official schedulers run in float64 Python; we feed the same values our float32 schedules give.
    lr, wd = float(lr_fn(k)), float(wd_fn(k))
    for g in opt.param_groups:
      g["lr"] = lr
      if not g.get("WD_exclude", False):
        g["weight_decay"] = wd
    for m in modules:
      for name, g in flat(grads[m]).items():
        modules[m][name].grad = torch.tensor(g)
    if bool(schedules.clip_active(k, cfg)):
      for m in ("encoder", "predictor"):
        torch.nn.utils.clip_grad_norm_(list(modules[m].values()), cfg.clip_grad)
    opt.step()
    opt.zero_grad()
  return {m: {k: p.detach().numpy() for k, p in modules[m].items()} for m in modules}


def test_matches_torch_adamw_with_official_groups_and_clipping():
  cfg = small_cfg()
  params = small_params(0)
  rng = np.random.default_rng(1)
  # Gradients of norm ~20 so clipping at 2.0 bites once it switches on at step 8; 12 steps cross the switch.
  grads_per_step = [jax.tree.map(lambda p: (3.0 * rng.normal(size=p.shape)).astype(np.float32), params)
                    for _ in range(12)]
  ours = {m: flat(v) for m, v in run_ours(cfg, params, grads_per_step).items()}
  theirs = run_torch(cfg, params, grads_per_step)
  # Per leaf, the largest difference relative to the leaf's largest value: float32 rounding of ~1 ulp per step.
  worst = max(float(np.abs(ours[m][k] - theirs[m][k]).max() / np.abs(theirs[m][k]).max())
              for m in theirs for k in theirs[m])
  print(f"max relative difference vs torch AdamW after 12 steps: {worst:.2e}")
  assert worst < 3e-6
  # The comparison can see clipping: without it torch lands far away (Adam is not scale-invariant across steps).
  cfg.clip_grad = 1e9
  unclipped = run_torch(cfg, params, grads_per_step)
  assert max(float(np.abs(unclipped[m][k] - theirs[m][k]).max()) for m in theirs for k in theirs[m]) > 1e-3


def test_clipping_switches_on_at_the_right_step():
  cfg = small_cfg()
  params = small_params(0)
  tx = optim.make_optimizer(cfg)
  clip = optim.clip_by_module_norm(cfg.clip_grad, lambda c: schedules.clip_active(c, cfg))
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 3.0, jnp.float32), params)
  state = clip.init(params)
  norms = []
  for _ in range(10):
    clipped, state = clip.update(grads, state)
    norms.append(optim.grad_norms(clipped))
  raw = optim.grad_norms(grads)
  for k in range(8):  # steps 0..7: no clipping during the warmup epoch and the epoch after it (official epoch > warmup)
    np.testing.assert_allclose(norms[k]["enc_grad_norm"], raw["enc_grad_norm"], rtol=1e-6)
  for k in (8, 9):  # encoder and predictor each clipped to 2.0 on their own
    np.testing.assert_allclose(norms[k]["enc_grad_norm"], 2.0, rtol=1e-5)
    np.testing.assert_allclose(norms[k]["pred_grad_norm"], 2.0, rtol=1e-5)
  assert tx.init(params)[0].count.dtype == jnp.int32


def test_decay_follows_the_schedule_and_skips_excluded_params():
  """With zero gradients only decay moves params: p <- p (1 - lr wd) for decayed leaves, unchanged otherwise."""
  cfg = small_cfg()
  params = small_params(0)
  zero = jax.tree.map(jnp.zeros_like, params)
  out = flat(run_ours(cfg, params, [zero]))
  before, mask = flat(params), flat(optim.weight_decay_mask(params))
  lr, wd = float(schedules.learning_rate_schedule(cfg)(0)), float(schedules.weight_decay_schedule(cfg)(0))
  for k in before:
    expected = before[k] * (1 - lr * wd) if mask[k] else before[k]
    np.testing.assert_allclose(out[k], expected, rtol=1e-6, err_msg=k)


def test_state_shardings_follow_params_via_tree_map_params():
  """tree_map_params gives the Adam moments the params' shardings, and the step count P()."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  params = small_params(0)
  params_sh = jax.tree.map(
      lambda p: NamedSharding(mesh, P("fsdp") if p.shape[0] % 8 == 0 else P()), params)
  tx = optim.make_optimizer(small_cfg())
  abstract = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract, params_sh,
                                 transform_non_params=lambda _: NamedSharding(mesh, P()))
  adam = opt_sh[1]
  assert adam.mu["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"].spec == P("fsdp")
  assert adam.count.spec == P() and opt_sh[0].count.spec == P()
  state = jax.jit(tx.init, out_shardings=opt_sh)(jax.device_put(params, params_sh))
  assert state[1].nu["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"].sharding.spec == P("fsdp")
