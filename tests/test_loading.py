"""The front door: jepa_jax.load_encoder from every source (runs, official PyTorch files, safetensors),
Encoder.encode, where a run's config comes from, clear errors, and the model zoo outside a mesh."""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import tiny
from test_evaluate import make_pretrained_workdir
import jepa_jax
from jepa_jax import checkpointing
from jepa_jax import loading
from jepa_jax import models
from jepa_jax import torch_layout
from jepa_jax.encoder import Encoder
from jepa_jax.models import vit
from jepa_jax.train_step import normalize_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference_features(config, params, clips):
  """The encoder's features computed by hand: the model merged with `params`, the training normalisation."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.build_encoder(config.model, nnx.Rngs(0))))
  return np.asarray(nnx.merge(graphdef, params)(normalize_clips(clips, np.float32)))


def _clips(n=5, seed=0, frames=4, size=64):
  return np.random.default_rng(seed).integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("loading")
  config, state = make_pretrained_workdir(str(root / "run"))
  return root, config, state


# ----------------------------------------------------------------------------------------------- the model zoo

def test_the_zoo_builds_and_shapes_outside_any_mesh():
  assert jax.sharding.get_abstract_mesh().empty  # a plain session: no mesh, no rules
  model = vit.vit_tiny(img_size=32, num_frames=4, rngs=nnx.Rngs(0))  # allocated, official init
  assert model.blocks[0].attn.qkv.kernel.get_metadata("out_sharding") == ("embed", "heads")  # names kept
  large = nnx.eval_shape(lambda: vit.vit_large(rngs=nnx.Rngs(0)))
  assert models.count_params(large) == 303_885_312
  config = loading.resolve_config("vitl16")
  encoder = nnx.eval_shape(lambda: models.build_encoder(config.model, nnx.Rngs(0)))
  predictor = nnx.eval_shape(lambda: models.build_predictor(config.model, 2, nnx.Rngs(0)))
  assert models.count_params(encoder) == 303_885_312 and models.count_params(predictor) == 22_082_944


def test_package_import_stays_light():
  proc = subprocess.run([sys.executable, "-c", "import sys, jepa_jax; print('jax' in sys.modules, "
                         "callable(jepa_jax.load_encoder))"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["False", "True"]  # jax only arrives with the first use of the front door


# ----------------------------------------------------------------------------------------------- runs

def test_a_run_gives_its_target_encoder_and_on_request_its_context_encoder(run):
  root, config, state = run
  clips = _clips()
  target = jepa_jax.load_encoder(str(root / "run"))
  assert isinstance(target, jepa_jax.Encoder) and target.step == 1 and target.which == "target_encoder"
  np.testing.assert_allclose(target.encode(clips), _reference_features(config, state["target_encoder"], clips),
                             rtol=1e-5, atol=1e-5)
  context = jepa_jax.load_encoder(str(root / "run"), which="encoder")
  np.testing.assert_allclose(context.encode(clips), _reference_features(config, state["params"]["encoder"], clips),
                             rtol=1e-5, atol=1e-5)
  # .params is the plain pure dict (official names) and .module the NNX model holding it
  np.testing.assert_array_equal(np.asarray(target.params["norm"]["scale"]),
                                np.asarray(state["target_encoder"]["norm"]["scale"]))
  assert target.module.embed_dim == 32 and target.config.data.batch_size == config.data.batch_size


def test_encode_does_not_depend_on_the_batch_size_padding_or_input_form(run):
  root, _, _ = run
  encoder = jepa_jax.load_encoder(str(root / "run"))
  assert encoder.mesh.size == 8  # conftest's simulated devices: batches are spread over all of them
  clips = _clips(n=5, seed=1)
  whole = encoder.encode(clips)
  assert whole.shape == (5, 32, 32) and whole.dtype == np.float32
  np.testing.assert_allclose(encoder.encode(clips, batch_size=3), whole, rtol=1e-5, atol=1e-5)  # 2 padded batches
  np.testing.assert_allclose(encoder.encode(iter(list(clips)), batch_size=2), whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(encoder.encode(clips, pooled=True), whole.mean(axis=1), rtol=1e-5, atol=1e-5)
  images = clips[:, 0]
  np.testing.assert_allclose(encoder.encode(images), encoder.encode(np.repeat(images[:, None], 4, axis=1)),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="uint8 RGB"):
    encoder.encode(clips.astype(np.float32))


def test_the_step_comes_from_the_argument_or_the_path(run):
  root, config, state = run
  workdir = root / "two_steps"
  shutil.copytree(root / "run", workdir)
  later = dict(state, step=np.int32(2), target_encoder=jax.tree.map(lambda x: x * -1.0, state["target_encoder"]))
  with checkpointing.Checkpointer(str(workdir), async_save=False) as ckpt:
    ckpt.save(2, later, config=config, force=True)
  clips = _clips(n=2)
  latest = jepa_jax.load_encoder(str(workdir))
  assert latest.step == 2
  np.testing.assert_allclose(latest.encode(clips), _reference_features(config, later["target_encoder"], clips),
                             rtol=1e-5, atol=1e-5)
  first = _reference_features(config, state["target_encoder"], clips)
  np.testing.assert_allclose(jepa_jax.load_encoder(str(workdir), step=1).encode(clips), first, rtol=1e-5, atol=1e-5)
  by_path = jepa_jax.load_encoder(str(workdir / "checkpoints" / "1"))
  assert by_path.step == 1
  np.testing.assert_allclose(by_path.encode(clips), first, rtol=1e-5, atol=1e-5)
  with pytest.raises(loading.EncoderSourceError, match=r"no complete checkpoint at step 7; it has \[1, 2\]"):
    jepa_jax.load_encoder(str(workdir), step=7)


def test_the_config_comes_from_the_checkpoint_step_and_config_json_only_for_older_runs(run, tmp_path, caplog):
  root, config, state = run
  # config.json written at the start says depth 3; the step's own copy (written after every override) says 2.
  workdir = tmp_path / "overridden"
  shutil.copytree(root / "run", workdir)
  stale = tiny.tiny_config(**{"model.depth": 3})
  (workdir / "config.json").write_text(stale.to_json_best_effort())
  assert jepa_jax.load_encoder(str(workdir)).config.model.depth == 2
  # A run whose steps carry no config (older runs): config.json, with a warning.
  old = tmp_path / "old"
  with checkpointing.Checkpointer(str(old), async_save=False) as ckpt:
    ckpt.save(1, state, force=True)
  (old / "config.json").write_text(config.to_json_best_effort())
  with caplog.at_level("WARNING"):
    encoder = jepa_jax.load_encoder(str(old))
  assert encoder.config.model.depth == 2 and "carries no copy of the config" in caplog.text
  clips = _clips(n=2)
  np.testing.assert_allclose(encoder.encode(clips), _reference_features(config, state["target_encoder"], clips),
                             rtol=1e-5, atol=1e-5)


def test_a_given_config_must_be_the_same_network_and_sets_the_run_time_fields(run):
  root, _, state = run
  model = tiny.tiny_config().model
  model.crop_size, model.scan_layers = 32, True  # the built grid of the official eval, another block layout
  encoder = jepa_jax.load_encoder(str(root / "run"), config=model)
  assert encoder.num_tokens == 2 * 2 * 2
  assert np.shape(encoder.params["blocks"]["norm1"]["scale"]) == (2, 32)  # stacked: scan_layers applied
  built_at_32 = tiny.tiny_config(**{"model.crop_size": 32})  # positions of the 2x2 grid, not resized from 4x4
  clips = _clips(n=2, size=32)
  np.testing.assert_allclose(encoder.encode(clips), _reference_features(built_at_32, state["target_encoder"], clips),
                             rtol=1e-5, atol=1e-5)
  wrong = tiny.tiny_config(**{"model.depth": 3})
  with pytest.raises(loading.EncoderSourceError, match=r"config.model.depth=3 gives depth 3 but the run .* has 2"):
    jepa_jax.load_encoder(str(root / "run"), config=wrong)


# ----------------------------------------------------------------------------------------------- files

def _official_file(path, model_cfg, seed):
  """An official-layout .pth.tar (keys under 'module.backbone.', the frozen pos_embed included) of a freshly
  initialised encoder; returns that Encoder."""
  torch = pytest.importorskip("torch")
  encoder = Encoder.init(model_cfg, seed=seed)
  sd = torch_layout.to_torch_state_dict(jax.device_get(encoder.params))
  sd.update(torch_layout.pos_embed_entries(encoder.module))
  tensors = {f"module.backbone.{k}": torch.from_numpy(np.array(v)) for k, v in sd.items()}
  torch.save({"encoder": tensors, "target_encoder": tensors, "epoch": 3}, str(path))
  return encoder


def test_an_official_file_says_its_zoo_model_through_its_shapes(tmp_path):
  model = loading.default_model_config()
  model.update(dict(name="vit_tiny", num_frames=4, crop_size=32, uniform_power=False))  # not the defaults
  original = _official_file(tmp_path / "vit_tiny.pth.tar", model, seed=4)
  loaded = jepa_jax.load_encoder(str(tmp_path / "vit_tiny.pth.tar"))
  m = loaded.config.model
  assert (m.name, m.num_frames, m.crop_size, m.uniform_power, m.dtype) == ("vit_tiny", 4, 32, False, "float32")
  clips = _clips(n=3, size=32)
  np.testing.assert_allclose(loaded.encode(clips), original.encode(clips), rtol=1e-5, atol=1e-5)


def test_a_file_of_a_custom_size_asks_for_its_config_and_reads_with_it(run, tmp_path):
  from jepa_jax import export
  root, config, state = run
  out = str(tmp_path / "tiny.pth.tar")
  export.export_checkpoint(str(root / "run"), out)
  with pytest.raises(loading.ModelConfigNeeded, match="no zoo model has these dimensions.*Pass config="):
    jepa_jax.load_encoder(out)
  encoder = jepa_jax.load_encoder(out, config=config)
  clips = _clips(n=2)
  np.testing.assert_allclose(encoder.encode(clips), _reference_features(config, state["target_encoder"], clips),
                             rtol=1e-5, atol=1e-5)
  tiny_config_file = os.path.join(ROOT, "tests", "tiny_config.py")
  by_path = jepa_jax.load_encoder(out, config=tiny_config_file, which="encoder")
  np.testing.assert_allclose(by_path.encode(clips), _reference_features(config, state["params"]["encoder"], clips),
                             rtol=1e-5, atol=1e-5)


def test_exported_safetensors_say_their_model(run, tmp_path):
  from jepa_jax import export
  root, config, state = run
  out = str(tmp_path / "tiny.pth.tar")
  export.export_checkpoint(str(root / "run"), out, write_safetensors=True)
  clips = _clips(n=2)
  want = _reference_features(config, state["target_encoder"], clips)
  for name in ("tiny.target_encoder.safetensors", "tiny.encoder.safetensors"):  # `which` picks the sibling
    encoder = jepa_jax.load_encoder(str(tmp_path / name))
    assert encoder.config.model.depth == 2
    np.testing.assert_allclose(encoder.encode(clips), want, rtol=1e-5, atol=1e-5)
  context = jepa_jax.load_encoder(str(tmp_path / "tiny.target_encoder.safetensors"), which="encoder")
  np.testing.assert_allclose(context.encode(clips), _reference_features(config, state["params"]["encoder"], clips),
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- errors

def test_sources_that_hold_no_encoder_are_clear_errors(run, tmp_path):
  torch = pytest.importorskip("torch")
  root, _, _ = run
  probe_file = tmp_path / "probe.pth.tar"
  torch.save({"classifier": {"module.linear.weight": torch.zeros(4, 32)}, "epoch": 3}, str(probe_file))
  with pytest.raises(loading.EncoderSourceError, match="attentive-probe checkpoint"):
    jepa_jax.load_encoder(str(probe_file))
  (tmp_path / "probe_run" / "probe_best").mkdir(parents=True)
  with pytest.raises(loading.EncoderSourceError, match="attentive-probe checkpoint"):
    jepa_jax.load_encoder(str(tmp_path / "probe_run"))
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(loading.EncoderSourceError, match="without checkpoints/"):
    jepa_jax.load_encoder(str(tmp_path / "empty_dir"))
  with pytest.raises(loading.EncoderSourceError, match="does not exist"):
    jepa_jax.load_encoder(str(tmp_path / "nowhere.pth.tar"))
  encoder_only = tmp_path / "encoder_only.pth.tar"
  torch.save({"encoder": {"module.backbone.norm.weight": torch.ones(4)}}, str(encoder_only))
  with pytest.raises(loading.EncoderSourceError, match="has no 'target_encoder'.*pass which='encoder'"):
    jepa_jax.load_encoder(str(encoder_only))
  with pytest.raises(loading.EncoderSourceError, match="which='bogus'"):
    jepa_jax.load_encoder(str(root / "run"), which="bogus")
  with pytest.raises(loading.EncoderSourceError, match="step=3 is for run folders"):
    jepa_jax.load_encoder(str(encoder_only), step=3)
  with pytest.raises(loading.EncoderSourceError, match="one of: .*demo"):
    loading.resolve_config("no_such_config")
  assert loading.resolve_config("demo").model.name == loading.resolve_config(
      os.path.join(ROOT, "configs", "demo.py")).model.name == "vit_tiny"
