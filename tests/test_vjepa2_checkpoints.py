"""V-JEPA 2 checkpoints in and out: the released layouts, the Hugging Face layout, our export, and the refusals.

No released file can be downloaded here. The files in these tests are built from the PyTorch oracle
(tests/torch_reference_v2.py, checked at 0.0 difference against the official modules) at tiny sizes, in the
official layout: top-level 'encoder' / 'predictor' / 'target_encoder' state_dicts under 'module.backbone.', the
stale 'pos_embed' / 'predictor_pos_embed' the released files carry, 10 mask tokens, and for training checkpoints the
official torch.optim.AdamW state of the 4 official groups. The Hugging Face files go through jepa_jax/hf_layout.py
(tested against the transformers names in tests/test_hf_layout.py).
"""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tiny
from jepa_jax import checkpoint_files, checkpointing, export, hf_layout, import_torch, loading, optim, torch_layout
from jepa_jax import train_state
from jepa_jax.models import layers
from tests import torch_reference as ref_v1
from tests import torch_reference_v2 as ref

torch.set_num_threads(1)
PREFIX = "module.backbone."
EPOCH = 3


def _torch_v2(seed):
  """Encoder, predictor (10 random mask tokens) and a distinct target encoder of the tiny V-JEPA 2 model."""
  torch.manual_seed(seed)
  enc = ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=32, depth=2, num_heads=2)
  pred = ref.TorchPredictorV2(img_size=64, num_frames=4, embed_dim=32, predictor_embed_dim=16, depth=1, num_heads=2,
                              num_mask_tokens=10, zero_init_mask_tokens=False)
  tgt = ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=32, depth=2, num_heads=2)
  return enc, pred, tgt


def _prefixed(module, stale=None):
  sd = {PREFIX + k: v.detach().clone() for k, v in module.state_dict().items()}
  if stale is not None:
    sd[PREFIX + stale[0]] = torch.randn(*stale[1])  # its values must not matter
  return sd


def _released_file(path, seed=0, *, target=True, stale=True, **extra):
  """A vitl.pt-like file: the stale tables in encoder, target and predictor (shapes as a 4 x 64 x 64 table)."""
  enc, pred, tgt = _torch_v2(seed)
  ckpt = {"encoder": _prefixed(enc, ("pos_embed", (1, 32, 32)) if stale else None),
          "predictor": _prefixed(pred, ("predictor_pos_embed", (1, 32, 16)) if stale else None)}
  if target:
    ckpt["target_encoder"] = _prefixed(tgt, ("pos_embed", (1, 32, 32)) if stale else None)
  ckpt.update(extra)
  torch.save(ckpt, str(path))
  return enc, pred, tgt


def _restore(workdir, config):
  defs = train_state.model_defs(config)
  tx = optim.make_optimizer(config.optim)
  shapes = train_state.abstract_param_shapes(defs)
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": shapes, "target_encoder": shapes["encoder"],
              "opt_state": jax.eval_shape(tx.init, shapes)}
  with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
    return ckpt.restore(abstract)


def _assert_equals_torch(pure, module, scanned=False):
  ours = torch_layout.to_torch_state_dict(pure, scanned=scanned)
  theirs = {k: v.numpy() for k, v in module.state_dict().items()}
  assert sorted(ours) == sorted(theirs)
  for k, v in theirs.items():
    np.testing.assert_array_equal(ours[k], v, err_msg=k)


# ----------------------------------------------------------------------------------------------- the released layout

def test_released_layout_imports_strictly_and_reports_the_stale_tables_in_one_line(tmp_path, caplog):
  enc, pred, tgt = _released_file(tmp_path / "vitl.pt", epoch=EPOCH)
  config = tiny.tiny_v2_config()
  with caplog.at_level(logging.INFO):
    import_torch.import_checkpoint(str(tmp_path / "vitl.pt"), config, str(tmp_path / "run"))
  stale_lines = [r.getMessage() for r in caplog.records if "stale position tables" in r.getMessage()]
  assert len(stale_lines) == 1
  assert all(s in stale_lines[0] for s in ("encoder.pos_embed [1, 32, 32]", "predictor.predictor_pos_embed",
                                           "target_encoder.pos_embed"))
  back = _restore(str(tmp_path / "run"), config)
  assert int(back["step"]) == EPOCH * config.optim.ipe
  _assert_equals_torch(back["params"]["encoder"], enc)
  _assert_equals_torch(back["params"]["predictor"], pred)
  _assert_equals_torch(back["target_encoder"], tgt)
  # scanned blocks take the same file
  scanned = tiny.tiny_v2_config(**{"model.scan_layers": True})
  state = import_torch.state_from_file(str(tmp_path / "vitl.pt"), scanned)
  _assert_equals_torch(state["target_encoder"], tgt, scanned=True)


def test_every_key_but_the_stale_tables_is_checked(tmp_path):
  config = tiny.tiny_v2_config()
  enc, pred, tgt = _torch_v2(1)
  extra = _prefixed(enc)
  extra[PREFIX + "blocks.0.attn.rope_cache"] = torch.zeros(3)
  torch.save({"encoder": extra, "predictor": _prefixed(pred), "target_encoder": _prefixed(tgt)},
             str(tmp_path / "extra.pt"))
  with pytest.raises(import_torch.CheckpointFormatError, match=r"unexpected keys \(1\).*blocks.0.attn.rope_cache"):
    import_torch.import_checkpoint(str(tmp_path / "extra.pt"), config, str(tmp_path / "a"))
  missing = _prefixed(pred)
  del missing[PREFIX + "predictor_norm.bias"]
  torch.save({"encoder": _prefixed(enc), "predictor": missing}, str(tmp_path / "missing.pt"))
  with pytest.raises(import_torch.CheckpointFormatError, match=r"missing keys \(1\).*predictor_norm.bias"):
    import_torch.import_checkpoint(str(tmp_path / "missing.pt"), config, str(tmp_path / "b"))


def test_a_file_without_target_encoder_starts_the_target_from_its_encoder_and_says_so(tmp_path, caplog):
  enc, _, _ = _released_file(tmp_path / "no_target.pt", target=False)
  config = tiny.tiny_v2_config()
  with caplog.at_level(logging.WARNING):
    import_torch.import_checkpoint(str(tmp_path / "no_target.pt"), config, str(tmp_path / "run"))
  assert "has no 'target_encoder'; the target encoder starts as a copy of its 'encoder'" in caplog.text
  back = _restore(str(tmp_path / "run"), config)
  _assert_equals_torch(back["target_encoder"], enc)
  assert int(back["step"]) == 0  # no 'epoch' in the file


# ----------------------------------------------------------------------------------------------- training checkpoints

def _official_adamw(enc, pred, steps=2, seed=0):
  """torch.optim.AdamW over the official 4 groups of app/vjepa/utils.py:init_opt (V-JEPA 2: no position tables),
  stepped with random gradients; mask tokens 1..9 never get one (the frame-group rule uses token 0 only)."""
  param_groups = [
      {"params": [p for n, p in enc.named_parameters() if "bias" not in n and p.ndim != 1]},
      {"params": [p for n, p in pred.named_parameters() if "bias" not in n and p.ndim != 1]},
      {"params": [p for n, p in enc.named_parameters() if "bias" in n or p.ndim == 1], "WD_exclude": True,
       "weight_decay": 0},
      {"params": [p for n, p in pred.named_parameters() if "bias" in n or p.ndim == 1], "WD_exclude": True,
       "weight_decay": 0}]
  opt = torch.optim.AdamW(param_groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.04)
  gen = torch.Generator().manual_seed(seed)
  unused = {id(p) for i, p in enumerate(pred.mask_tokens) if i > 0}
  for _ in range(steps):
    for m in (enc, pred):
      for p in m.parameters():
        p.grad = None if id(p) in unused else torch.randn(p.shape, generator=gen) * 0.01
    opt.step()
  return opt


def test_training_checkpoint_brings_its_adamw_moments_and_exports_them_back(tmp_path, caplog):
  enc, pred, tgt = _torch_v2(2)
  opt = _official_adamw(enc, pred)
  path = str(tmp_path / "latest.pt")
  torch.save({"encoder": _prefixed(enc), "predictor": _prefixed(pred), "target_encoder": _prefixed(tgt),
              "opt": opt.state_dict(), "scaler": None, "epoch": EPOCH, "loss": 0.4, "batch_size": 24,
              "world_size": 128, "lr": 5.25e-4}, path)
  config = tiny.tiny_v2_config()
  with caplog.at_level(logging.INFO):
    state = import_torch.import_checkpoint(path, config, str(tmp_path / "run"))
  assert "9 parameters have no AdamW state" in caplog.text
  adam = export.adam_state(state["opt_state"])
  assert int(adam.count) == 2 and int(state["step"]) == EPOCH * config.optim.ipe
  # Every moment where torch put it: compare through the export, which writes the official AdamW state_dict.
  out = str(tmp_path / "back.pt")
  written = export.export_checkpoint(str(tmp_path / "run"), out, with_optimizer=True)
  theirs = opt.state_dict()
  assert [len(g["params"]) for g in written["opt"]["param_groups"]] == [len(g["params"]) for g in
                                                                        theirs["param_groups"]]
  for index, entry in theirs["state"].items():
    for k in ("exp_avg", "exp_avg_sq"):
      torch.testing.assert_close(written["opt"]["state"][index][k], entry[k], rtol=0, atol=0)
  mask_token_1 = [i for g in theirs["param_groups"] for i in g["params"] if i not in theirs["state"]]
  assert len(mask_token_1) == 9
  for index in mask_token_1:  # never updated: zero moments both ways
    assert not written["opt"]["state"][index]["exp_avg"].any()


# ----------------------------------------------------------------------------------------------- export

def test_export_of_a_v2_run_is_the_official_v2_layout_strict_loadable(tmp_path):
  enc, pred, tgt = _released_file(tmp_path / "vitl.pt", seed=3, epoch=EPOCH)
  config = tiny.tiny_v2_config()
  import_torch.import_checkpoint(str(tmp_path / "vitl.pt"), config, str(tmp_path / "run"))
  out = str(tmp_path / "export.pt")
  written = export.export_checkpoint(str(tmp_path / "run"), out, write_safetensors=True)
  ckpt = torch.load(out, map_location="cpu", weights_only=True)
  assert not any(k.endswith("pos_embed") for m in export.MODULES for k in ckpt[m])  # the stale tables left out
  fresh_enc, fresh_pred, fresh_tgt = _torch_v2(99)
  for module, fresh, want in (("encoder", fresh_enc, enc), ("predictor", fresh_pred, pred),
                              ("target_encoder", fresh_tgt, tgt)):
    assert list(ckpt[module]) == [PREFIX + k for k in want.state_dict()]  # the official order
    fresh.load_state_dict({k[len(PREFIX):]: v for k, v in ckpt[module].items()}, strict=True)
    for k, v in want.state_dict().items():
      torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)
  assert written["epoch"] == EPOCH
  # Our safetensors of a V-JEPA 2 run say the model (RoPE included) to the front door.
  found = loading._read_export_safetensors(out.replace(".pt", ".target_encoder.safetensors"), "target_encoder")
  assert found.pos_embed == "rope" and found.model["num_mask_tokens"] == 10


# ----------------------------------------------------------------------------------------------- Hugging Face

def _hf_file(folder, seed=4, *, with_config=True):
  from safetensors.torch import save_file
  enc, pred, _ = _torch_v2(seed)
  official = {**{k: v.detach().clone() for k, v in enc.state_dict().items()},
              **{k: v.detach().clone() for k, v in pred.state_dict().items()}}
  os.makedirs(folder, exist_ok=True)
  save_file({k: v.contiguous() for k, v in hf_layout.to_hf(official).items()}, os.path.join(folder,
                                                                                             "model.safetensors"))
  if with_config:
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump({"model_type": "vjepa2", "crop_size": 64, "frames_per_clip": 4, "hidden_size": 32,
                 "num_attention_heads": 2, "num_hidden_layers": 2, "mlp_ratio": 4.0, "pred_hidden_size": 16,
                 "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1, "pred_num_mask_tokens": 10,
                 "patch_size": 16, "tubelet_size": 2}, f)
  return enc, pred


def test_hugging_face_safetensors_import_through_the_same_command(tmp_path, caplog):
  enc, pred = _hf_file(tmp_path / "vjepa2-tiny")
  path = str(tmp_path / "vjepa2-tiny" / "model.safetensors")
  assert checkpoint_files.is_hf_file(path)
  config = tiny.tiny_v2_config()
  with caplog.at_level(logging.WARNING):
    import_torch.import_checkpoint(path, config, str(tmp_path / "run"))
  assert "no 'target_encoder'" in caplog.text
  back = _restore(str(tmp_path / "run"), config)
  _assert_equals_torch(back["params"]["encoder"], enc)
  _assert_equals_torch(back["params"]["predictor"], pred)
  _assert_equals_torch(back["target_encoder"], enc)


def test_hugging_face_file_says_its_model_to_the_front_door(tmp_path):
  _hf_file(tmp_path / "hf")
  found = loading._read_hf(str(tmp_path / "hf" / "model.safetensors"), "target_encoder")
  assert found.pos_embed == "rope"
  # No zoo model is 32 wide: the config.json sizes are used as they are, heads included.
  assert found.model == {"name": "vit_large", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16,
                         "tubelet_size": 2, "num_frames": 4, "crop_size": 64, "pos_embed": "rope",
                         "depth_rescale_init": True}


# ----------------------------------------------------------------------------------------------- the refusals

def _v1_file(path, seed=5):
  """A V-JEPA 1 file of the tiny size: sin-cos tables, 2 mask tokens (tests/torch_reference.py)."""
  torch.manual_seed(seed)
  enc = ref_v1.TorchVisionTransformer(img_size=64, num_frames=4, embed_dim=32, depth=2, num_heads=2)
  pred = ref_v1.TorchPredictor(img_size=64, num_frames=4, embed_dim=32, predictor_embed_dim=16, depth=1,
                               num_heads=2, num_mask_tokens=2)
  torch.save({"encoder": _prefixed(enc), "predictor": _prefixed(pred), "target_encoder": _prefixed(enc)}, str(path))


def test_a_v1_file_under_a_v2_config_says_what_it_holds(tmp_path):
  _v1_file(tmp_path / "vitl16.pth.tar")
  with pytest.raises(import_torch.CheckpointFormatError) as info:
    import_torch.import_checkpoint(str(tmp_path / "vitl16.pth.tar"), tiny.tiny_v2_config(), str(tmp_path / "w"))
  message = str(info.value)
  assert "its predictor has 2 mask tokens, the config 10 (config.model.num_mask_tokens)" in message
  assert "pos_embed [1, 32, 32] (the sin-cos table of 4 frames x 64 px)" in message
  assert "a V-JEPA 1 layout" in message and "pos_embed='rope'" in message
  assert len(message.splitlines()) == 1


def test_a_v2_file_under_a_v1_config_says_what_it_holds(tmp_path):
  _released_file(tmp_path / "train.pt", stale=False)  # an official training checkpoint: no tables
  v1 = tiny.tiny_config(**{"model.num_mask_tokens": 10})
  with pytest.raises(import_torch.CheckpointFormatError, match="its 'encoder' has no position table: a V-JEPA 2 "
                     r"\(RoPE\) encoder.*a V-JEPA 2 layout"):
    import_torch.import_checkpoint(str(tmp_path / "train.pt"), v1, str(tmp_path / "w"))
  _released_file(tmp_path / "vitl.pt")  # the release: stale tables, 10 mask tokens
  with pytest.raises(import_torch.CheckpointFormatError, match="its predictor has 10 mask tokens, the config 2.*"
                     "a V-JEPA 2 layout"):
    import_torch.import_checkpoint(str(tmp_path / "vitl.pt"), tiny.tiny_config(), str(tmp_path / "w"))


def test_the_wrong_size_and_a_probe_file_are_named(tmp_path):
  _released_file(tmp_path / "vitl.pt")
  wider = tiny.tiny_v2_config(**{"model.embed_dim": 64, "model.num_heads": 4})
  with pytest.raises(import_torch.CheckpointFormatError, match="its 'encoder' has width 32, depth 2, MLP 128.*"
                     "config.model builds vit_tiny \\(width 64, depth 2, MLP 256"):
    import_torch.import_checkpoint(str(tmp_path / "vitl.pt"), wider, str(tmp_path / "w"))
  torch.save({"classifiers": [{"module.linear.weight": torch.zeros(3, 32)}] * 2, "opt": [None, None],
              "scaler": None, "epoch": 1}, str(tmp_path / "ssv2-vitl-16x2x3.pt"))
  with pytest.raises(import_torch.CheckpointFormatError, match="attentive-probe checkpoint, not a backbone"):
    import_torch.import_checkpoint(str(tmp_path / "ssv2-vitl-16x2x3.pt"), tiny.tiny_v2_config(),
                                   str(tmp_path / "w"))
  with pytest.raises(loading.EncoderSourceError, match="attentive-probe checkpoint, not a backbone"):
    loading.load_encoder(str(tmp_path / "ssv2-vitl-16x2x3.pt"))


def _zoo_shaped(name, *, table=None, mask_tokens=None):
  """The keys and shapes of a real-size encoder (and predictor), without allocating them."""
  from jepa_jax.models.vit import MODEL_SIZES
  z = MODEL_SIZES[name]
  zeros = lambda *shape: np.broadcast_to(np.float32(0), shape)
  sd = {PREFIX + "patch_embed.proj.weight": zeros(z.embed_dim, 3, 2, 16, 16)}
  sd.update({PREFIX + f"blocks.{i}.mlp.fc1.weight": zeros(int(z.embed_dim * z.mlp_ratio), z.embed_dim)
             for i in range(z.depth)})
  if table is not None:
    sd[PREFIX + "pos_embed"] = table
  ckpt = {"encoder": sd}
  if mask_tokens is not None:
    ckpt["predictor"] = {PREFIX + "predictor_embed.weight": zeros(384, z.embed_dim),
                         **{PREFIX + f"mask_tokens.{i}": zeros(1, 1, 384) for i in range(mask_tokens)}}
  return ckpt


def test_the_configs_that_fit_a_file_are_named():
  v1_table = layers.get_3d_sincos_pos_embed(1024, 8, 14, True)[None]  # the V-JEPA 1 ViT-L table: 16 x 224
  assert checkpoint_files.fitting_configs(_zoo_shaped("vit_large", table=v1_table, mask_tokens=2)) == [
      "configs/vitl16.py"]
  v2 = _zoo_shaped("vit_large", mask_tokens=10)
  assert checkpoint_files.looks_vjepa2(v2)
  assert checkpoint_files.fitting_configs(v2) == ["configs/vjepa2/vitl16_256.py",
                                                  "configs/vjepa2/vitl16_256_cooldown.py"]
  vitg = _zoo_shaped("vit_giant_xformers", table=np.zeros((1, 2048, 1408), np.float32), mask_tokens=10)
  assert "configs/vjepa2/vitg16_256.py" in checkpoint_files.fitting_configs(vitg)
  assert "(vit_giant or vit_giant_xformers)" in checkpoint_files.describe(vitg)
  fields = loading.infer_v2_model(checkpoint_files.strip_prefixes(vitg["encoder"]), "vitg.pt['target_encoder']")
  assert fields == {"name": "vit_giant_xformers", "patch_size": 16, "tubelet_size": 2, "num_frames": 64,
                    "crop_size": 256, "pos_embed": "rope", "depth_rescale_init": True}


def test_front_door_readers_tell_the_layouts_apart(tmp_path):
  _released_file(tmp_path / "vitl.pt")
  _released_file(tmp_path / "train.pt", stale=False)
  _v1_file(tmp_path / "vitl16.pth.tar")
  _hf_file(tmp_path / "hf")
  claim = lambda p: next(r for r in loading.FILE_READERS if r.claims(str(p))).name
  assert claim(tmp_path / "vitl.pt").startswith("V-JEPA 2 PyTorch")
  assert claim(tmp_path / "train.pt").startswith("V-JEPA 2 PyTorch")
  assert claim(tmp_path / "vitl16.pth.tar").startswith("V-JEPA 1 PyTorch")
  assert claim(tmp_path / "hf" / "model.safetensors").startswith("Hugging Face")
  with pytest.raises(loading.ModelConfigNeeded, match="V-JEPA 2 encoder of width 32.*vjepa2/vitl16_256"):
    loading.load_encoder(str(tmp_path / "vitl.pt"))
  with pytest.raises(loading.EncoderSourceError, match=r"is a V-JEPA 1 \(sin-cos table\) encoder but "
                     "config.model.pos_embed='rope'"):
    loading.load_encoder(str(tmp_path / "vitl16.pth.tar"), config=tiny.tiny_v2_config())
  with pytest.raises(loading.EncoderSourceError, match=r"is a V-JEPA 2 \(RoPE\) encoder but "
                     "config.model.pos_embed='sincos'"):
    loading.load_encoder(str(tmp_path / "vitl.pt"), config=tiny.tiny_config())


# ----------------------------------------------------------------------------------------------- features

def _torch_features(enc, clips):
  """The oracle's features of uint8 clips, normalised as our Encoder normalises them."""
  from jepa_jax.train_step import normalize_clips
  x = np.asarray(normalize_clips(clips, np.float32))
  with torch.no_grad():
    return enc.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))).numpy()


def test_released_and_hugging_face_files_give_the_oracles_features(tmp_path):
  _, _, tgt = _released_file(tmp_path / "vitl.pt", seed=6)
  enc_hf, _ = _hf_file(tmp_path / "hf", seed=7)
  clips = np.random.default_rng(0).integers(0, 256, (3, 4, 64, 64, 3), dtype=np.uint8)
  released = loading.load_encoder(str(tmp_path / "vitl.pt"), config=tiny.tiny_v2_config())
  err = ref_v1.rel_error(released.encode(clips), _torch_features(tgt, clips))
  hf = loading.load_encoder(str(tmp_path / "hf" / "model.safetensors"))  # config.json says the model
  err_hf = ref_v1.rel_error(hf.encode(clips), _torch_features(enc_hf, clips))
  print(f"front door features: released layout {err:.2e}, Hugging Face {err_hf:.2e}")
  assert hf.config.model.pos_embed == "rope" and hf.config.model.num_heads == 2
  assert err <= 1e-5 and err_hf <= 1e-5


def test_extract_and_feature_maps_on_a_released_file_and_its_imported_run(tmp_path):
  from input_pipeline import synthetic
  from jepa_jax import extract, visualize
  _, _, tgt = _released_file(tmp_path / "vitl.pt", seed=8, epoch=1)
  config = tiny.tiny_v2_config()
  clips = np.random.default_rng(1).integers(0, 256, (2, 4, 64, 64, 3), dtype=np.uint8)
  np.save(tmp_path / "clips.npy", clips)
  from_file = extract.run(str(tmp_path / "vitl.pt"), str(tmp_path / "a.npz"), clips=str(tmp_path / "clips.npy"),
                          config=config)
  np.testing.assert_allclose(from_file["features"], _torch_features(tgt, clips), rtol=1e-5, atol=1e-5)
  import_torch.import_checkpoint(str(tmp_path / "vitl.pt"), config, str(tmp_path / "run"))
  from_run = extract.run(str(tmp_path / "run"), str(tmp_path / "b.npz"), clips=str(tmp_path / "clips.npy"))
  np.testing.assert_allclose(from_run["features"], from_file["features"], rtol=1e-6, atol=1e-6)
  synthetic.write_dataset(str(tmp_path / "videos"), 2, num_frames=12)
  video = sorted((tmp_path / "videos").rglob("*.mp4"))[0]
  out = visualize.draw_features(str(tmp_path / "run"), str(video), str(tmp_path / "features.png"))
  assert os.path.getsize(out) > 1000
