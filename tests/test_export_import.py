"""Checkpoints cross to the official PyTorch format and back (jepa_jax/export.py, jepa_jax/import_torch.py).

Tiny models (tests/tiny.py: width 32, 2 blocks, 4x64x64 clips). The measured relative errors print with pytest -s.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jepa_jax import checkpointing, export, import_torch, optim, torch_layout, train_state
from jepa_jax.models import build_encoder, build_predictor
from tests import tiny
from tests import torch_reference as ref

TOL = 1e-5
STEP = 6  # ipe 2 in the tiny config: epoch 3
torch.set_num_threads(1)


def _noise(tree, seed, scale=0.02):
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [jnp.asarray(rng.standard_normal(x.shape).astype(np.float32) * scale)
                                      for x in leaves])


def _write_run(workdir, config, seed=0):
  """A workdir with one checkpoint at STEP whose params, target and Adam moments are all distinct random draws."""
  params = _noise(train_state.init_params(config, seed), seed)
  tx = optim.make_optimizer(config.optim)
  opt_state = tx.init(params)
  adam = export.adam_state(opt_state)
  moments = adam._replace(count=jnp.asarray(STEP, jnp.int32), mu=_noise(params, seed + 1),
                          nu=jax.tree.map(jnp.abs, _noise(params, seed + 2)))
  opt_state = jax.tree.map(lambda s: moments if s is adam else s, opt_state, is_leaf=lambda s: s is adam)
  state = train_state.state_from_params(params, tx, target_encoder=_noise(params["encoder"], seed + 3),
                                        opt_state=opt_state, step=STEP)
  with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
    ckpt.save(STEP, state, config=config, force=True)
  return state


def _restore_all(workdir, config):
  defs = train_state.model_defs(config)
  tx = optim.make_optimizer(config.optim)
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), **train_state.abstract_param_shapes(defs)}
  abstract = {"step": abstract["step"], "params": {"encoder": abstract["encoder"], "predictor": abstract["predictor"]},
              "target_encoder": abstract["encoder"]}
  abstract["opt_state"] = jax.eval_shape(tx.init, abstract["params"])
  with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
    return ckpt.restore(abstract)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = tiny.tiny_config()
  workdir = str(tmp_path_factory.mktemp("run"))
  state = _write_run(workdir, config)
  out = os.path.join(str(tmp_path_factory.mktemp("export")), "tiny.pth.tar")
  exported = export.export_checkpoint(workdir, out, with_optimizer=True, write_safetensors=True)
  return config, state, out, exported


def test_export_has_the_official_keys_and_metadata(run):
  config, _, out, _ = run
  ckpt = torch.load(out, map_location="cpu", weights_only=True)  # no numpy scalars, nothing pickled
  assert set(ckpt) == {"encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size",
                       "world_size", "lr"}
  assert ckpt["epoch"] == STEP // config.optim.ipe and ckpt["scaler"] is None
  assert ckpt["batch_size"] * ckpt["world_size"] == config.data.batch_size and ckpt["lr"] == config.optim.lr
  torch_enc = ref.TorchVisionTransformer(img_size=64, num_frames=4, embed_dim=32, depth=2, num_heads=2)
  torch_pred = ref.TorchPredictor(img_size=64, num_frames=4, embed_dim=32, predictor_embed_dim=16, depth=1,
                                  num_heads=2, num_mask_tokens=2)
  # Same keys in the same order as the official modules (torch.optim numbers params in this order).
  for name, model in (("encoder", torch_enc), ("target_encoder", torch_enc), ("predictor", torch_pred)):
    assert list(ckpt[name]) == ["module.backbone." + k for k in model.state_dict()], name
  # The 4 official AdamW groups: every parameter once; state for all but the two positional tables.
  groups = ckpt["opt"]["param_groups"]
  n_params = len(ckpt["encoder"]) + len(ckpt["predictor"])
  assert sorted(i for g in groups for i in g["params"]) == list(range(n_params))
  assert len(ckpt["opt"]["state"]) == n_params - 2
  assert [g["weight_decay"] == 0 for g in groups] == [False, False, True, True]
  # Group 3 (encoder no-decay) = biases and 1-D weights, in named_parameters order.
  enc_names = [k for k, v in torch_enc.named_parameters() if "bias" in k or v.ndim == 1]
  assert len(groups[2]["params"]) == len(enc_names)
  assert os.path.exists(out.replace(".pth.tar", ".target_encoder.safetensors"))


def test_round_trip_jax_torch_jax_is_bit_exact(run, tmp_path):
  config, state, out, _ = run
  workdir = str(tmp_path / "imported")
  import_torch.import_checkpoint(out, config, workdir)
  back = _restore_all(workdir, config)
  assert int(back["step"]) == STEP
  for name in ("params", "target_encoder"):
    jax.tree.map(np.testing.assert_array_equal, back[name], state[name])
  adam_back, adam = export.adam_state(back["opt_state"]), export.adam_state(state["opt_state"])
  jax.tree.map(np.testing.assert_array_equal, (adam_back.mu, adam_back.nu), (adam.mu, adam.nu))
  assert int(adam_back.count) == STEP
  assert all(int(c) == STEP for c in jax.tree.leaves(back["opt_state"]) if np.ndim(c) == 0)
  assert os.path.exists(os.path.join(workdir, "config.json"))


def _jax_models(config, params, target):
  encoder = build_encoder(config.model, nnx.Rngs(0))
  predictor = build_predictor(config.model, num_mask_tokens=2, rngs=nnx.Rngs(0))
  target_model = build_encoder(config.model, nnx.Rngs(0))
  nnx.update(encoder, params["encoder"])
  nnx.update(predictor, params["predictor"])
  nnx.update(target_model, target)
  return encoder, predictor, target_model


def _torch_models(sds):
  enc = ref.TorchVisionTransformer(img_size=64, num_frames=4, embed_dim=32, depth=2, num_heads=2)
  tgt = ref.TorchVisionTransformer(img_size=64, num_frames=4, embed_dim=32, depth=2, num_heads=2)
  pred = ref.TorchPredictor(img_size=64, num_frames=4, embed_dim=32, predictor_embed_dim=16, depth=1, num_heads=2,
                            num_mask_tokens=2)
  for model, name in ((enc, "encoder"), (tgt, "target_encoder"), (pred, "predictor")):
    if name in sds:
      model.load_state_dict(sds[name], strict=True)
  return enc.eval(), pred.eval(), tgt.eval()


def _compare_outputs(jax_models, torch_models, seed=0) -> dict:
  """Relative errors of encoder (full and masked), target encoder and both predictor generators."""
  enc, pred, tgt = jax_models
  t_enc, t_pred, t_tgt = torch_models
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 4, 64, 64, 3)).astype(np.float32)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
  n = enc.num_patches
  perm = np.stack([rng.permutation(n) for _ in range(2)]).astype(np.int32)
  ctx, tgt_idx = np.sort(perm[:, :12], axis=1), np.sort(perm[:, 12:20], axis=1)
  errs = {}
  with torch.no_grad():
    errs["encoder"] = ref.rel_error(enc(jnp.asarray(x)), t_enc(xt).numpy())
    errs["target_encoder"] = ref.rel_error(tgt(jnp.asarray(x)), t_tgt(xt).numpy())
    z = t_enc(xt, masks=torch.from_numpy(ctx).long())
    errs["encoder_masked"] = ref.rel_error(enc(jnp.asarray(x), jnp.asarray(ctx)), z.numpy())
    for i in range(2):
      want = t_pred(z, torch.from_numpy(ctx).long(), torch.from_numpy(tgt_idx).long(), i).numpy()
      got = pred(jnp.asarray(z.numpy()), jnp.asarray(ctx), jnp.asarray(tgt_idx), i)
      errs[f"predictor_{i}"] = ref.rel_error(got, want)
  print("parity (max rel err):", {k: f"{v:.2e}" for k, v in errs.items()})
  return errs


def test_exported_modules_load_strictly_into_torch_and_match_jax(run):
  config, state, out, _ = run
  ckpt = torch.load(out, map_location="cpu", weights_only=True)
  sds = {m: {k[len("module.backbone."):]: v for k, v in ckpt[m].items()} for m in export.MODULES}
  errs = _compare_outputs(_jax_models(config, state["params"], state["target_encoder"]), _torch_models(sds))
  assert max(errs.values()) < TOL


def test_official_init_state_dict_imported_reproduces_torch(tmp_path):
  config = tiny.tiny_config()
  torch.manual_seed(0)
  t_enc, t_pred, t_tgt = _torch_models({})
  ref.init_official(t_enc, t_pred)
  torch.nn.init.normal_(t_pred.mask_tokens[0], std=0.02)  # distinct tokens, so a swapped generator would show
  torch.nn.init.normal_(t_pred.mask_tokens[1], std=0.02)
  t_tgt.load_state_dict(t_enc.state_dict())
  path = str(tmp_path / "official.pth.tar")
  prefixed = lambda m: {"module.backbone." + k: v for k, v in m.state_dict().items()}
  torch.save({"encoder": prefixed(t_enc), "predictor": prefixed(t_pred), "target_encoder": prefixed(t_tgt),
              "opt": None, "scaler": None, "epoch": 2, "loss": 0.5, "batch_size": 8, "world_size": 1, "lr": 1e-3},
             path)
  workdir = str(tmp_path / "run")
  import_torch.import_checkpoint(path, config, workdir)
  back = _restore_all(workdir, config)
  assert int(back["step"]) == 2 * config.optim.ipe
  assert int(export.adam_state(back["opt_state"]).count) == 0  # fresh optimizer
  errs = _compare_outputs(_jax_models(config, back["params"], back["target_encoder"]), (t_enc, t_pred, t_tgt))
  assert max(errs.values()) < TOL


def test_encoder_only_file_imports_with_only_target(run, tmp_path):
  config, state, out, _ = run
  import_torch.import_checkpoint(out.replace(".pth.tar", ".target_encoder.safetensors"), config,
                                 str(tmp_path / "t"), only_target=True)
  back = _restore_all(str(tmp_path / "t"), config)
  jax.tree.map(np.testing.assert_array_equal, back["params"]["encoder"], state["target_encoder"])
  jax.tree.map(np.testing.assert_array_equal, back["target_encoder"], state["target_encoder"])


def test_truncated_file_says_it_cannot_be_read(run, tmp_path):
  _, _, out, _ = run
  data = open(out, "rb").read()
  bad = tmp_path / "truncated.pth.tar"
  bad.write_bytes(data[:len(data) // 2])
  with pytest.raises(import_torch.CheckpointFormatError, match="cannot be read"):
    import_torch.import_checkpoint(str(bad), run[0], str(tmp_path / "w"))


def test_probe_checkpoint_passed_as_backbone_says_so(run, tmp_path):
  path = str(tmp_path / "probe.pth.tar")
  torch.save({"classifier": {"module.linear.weight": torch.zeros(3, 32)}, "opt": None, "scaler": None, "epoch": 1,
              "batch_size": 4, "world_size": 1, "lr": 1e-3}, path)
  with pytest.raises(import_torch.CheckpointFormatError, match="attentive-probe checkpoint.*issue #43"):
    import_torch.import_checkpoint(path, run[0], str(tmp_path / "w"))


def test_wrong_model_size_names_the_size_in_the_file(run, tmp_path):
  _, _, out, _ = run
  wider = tiny.tiny_config(**{"model.embed_dim": 64})
  with pytest.raises(import_torch.CheckpointFormatError, match="its 'encoder' has width 32, depth 2, MLP 128.*"
                     r"config.model builds vit_tiny \(width 64, depth 2, MLP 256.*a V-JEPA 1 layout"):
    import_torch.import_checkpoint(out, wider, str(tmp_path / "w"))
  sd = {"patch_embed.proj.weight": np.zeros((1024, 3, 2, 16, 16), np.float32),
        **{f"blocks.{i}.norm1.weight": np.zeros(1024, np.float32) for i in range(24)}}
  assert "vit_large" in import_torch.describe_encoder(sd)


def test_scanned_export_equals_unscanned_export(run, tmp_path):
  config, state, out, _ = run
  scanned_config = tiny.tiny_config(**{"model.scan_layers": True})
  tx = optim.make_optimizer(scanned_config.optim)
  params = {m: torch_layout.stack_layers(state["params"][m]) for m in ("encoder", "predictor")}
  params = jax.tree.map(jnp.asarray, params)
  adam = export.adam_state(state["opt_state"])
  opt_state = tx.init(params)
  fresh = export.adam_state(opt_state)
  stacked = fresh._replace(count=adam.count, mu={m: jax.tree.map(jnp.asarray, torch_layout.stack_layers(adam.mu[m]))
                                                 for m in adam.mu},
                           nu={m: jax.tree.map(jnp.asarray, torch_layout.stack_layers(adam.nu[m])) for m in adam.nu})
  opt_state = jax.tree.map(lambda s: stacked if s is fresh else s, opt_state, is_leaf=lambda s: s is fresh)
  scanned_state = train_state.state_from_params(
      params, tx, target_encoder=jax.tree.map(jnp.asarray, torch_layout.stack_layers(state["target_encoder"])),
      opt_state=opt_state, step=STEP)
  workdir = str(tmp_path / "scanned")
  with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
    ckpt.save(STEP, scanned_state, config=scanned_config, force=True)
  scanned_out = export.export_checkpoint(workdir, str(tmp_path / "scanned.pth.tar"), with_optimizer=True)
  plain = torch.load(out, map_location="cpu", weights_only=True)
  for m in export.MODULES:
    assert list(scanned_out[m]) == list(plain[m])
    for k in plain[m]:
      torch.testing.assert_close(scanned_out[m][k], plain[m][k], rtol=0, atol=0, msg=k)
  for i, entry in plain["opt"]["state"].items():
    for k in ("exp_avg", "exp_avg_sq"):
      torch.testing.assert_close(scanned_out["opt"]["state"][i][k], entry[k], rtol=0, atol=0)
