"""A workdir and data on a fake Google Cloud Storage (gs://) save, restore, log and decode (issue 7).

A local GCS emulator (gcp-storage-emulator, in memory, bound to 127.0.0.1 on a free port) answers the GCS JSON
API. gcsfs reaches it through STORAGE_EMULATOR_HOST (etils.epath uses fsspec/gcsfs for gs:// when TensorFlow is
absent: orbax's directories, config and logs) and tensorstore through TENSORSTORE_GCS_HTTP_URL (orbax's arrays);
credentials are anonymous and the GCE metadata server is never asked. Skipped when the optional packages of
requirements.txt are not installed.
"""
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

for _module in ("gcsfs", "gcp_storage_emulator"):
  if importlib.util.find_spec(_module) is None:  # not imported here: gcsfs reads its settings when imported
    pytest.skip(f"gs:// tests need {_module} (pinned in requirements.txt)", allow_module_level=True)

from etils import epath  # noqa: E402

from input_pipeline import sources, synthetic, video  # noqa: E402
from input_pipeline import storage  # noqa: E402
from jepa_jax import checkpointing, metrics, synthetic_data  # noqa: E402

BUCKET = "jepa-test"
_ENV = {
    "NO_GCE_CHECK": "true",  # gcsfs: do not probe the metadata server for credentials
    "GCE_METADATA_ROOT": "metadata.google.internal.invalid",  # tensorstore: same
}


# The emulator, plus what tensorstore needs and it lacks: object downloads carry no x-goog-generation header, so
# tensorstore reads generation 0 and refuses the conditional write that follows ("Malformed StorageGeneration",
# e.g. an OCDBT manifest update). The shim adds the header; the generation is the one the emulator stored.
_SERVER = """
import sys
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download

def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # not found: the 404 stands
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj["metageneration"])

objects.download = download  # objects.get(alt=media) calls it by this name
for _, handlers in server.HANDLERS:
  for method, handler in list(handlers.items()):
    if handler is _download:
      handlers[method] = download
server.create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).run()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
  """The emulator's URL, with gcsfs and tensorstore pointed at it; stopped and the environment restored after."""
  import fsspec  # pylint: disable=g-import-not-at-top
  import gcsfs.core  # pylint: disable=g-import-not-at-top
  registry = sys.modules["fsspec.registry"]
  saved_env = {k: os.environ.get(k) for k in (*_ENV, "STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                              "GOOGLE_APPLICATION_CREDENTIALS")}
  saved_conf = fsspec.config.conf.get("gcs")
  saved_impl = {p: registry.registry.get(p) for p in ("gs", "gcs")}
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), BUCKET],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        with urllib.request.urlopen(url + "/", timeout=2):
          break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          pytest.fail(f"the GCS emulator did not start (exit code {proc.poll()})")
        time.sleep(0.1)
    os.environ.update(_ENV, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    fsspec.config.conf["gcs"] = {"token": "anon"}  # no credential search
    # gcsfs's default class (ExtendedGcsFileSystem) first asks the storage-control gRPC API for the bucket's
    # layout, which the emulator does not serve (a 60 s timeout per bucket); the plain class speaks JSON only.
    for protocol in saved_impl:
      fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    yield url
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    for protocol, cls in saved_impl.items():
      if cls is None:
        registry._registry.pop(protocol, None)  # pylint: disable=protected-access
      else:
        fsspec.register_implementation(protocol, cls, clobber=True)
    if saved_conf is None:
      fsspec.config.conf.pop("gcs", None)
    else:
      fsspec.config.conf["gcs"] = saved_conf


def _state(mesh):
  k = jax.random.split(jax.random.key(0), 3)
  params = {"encoder": {"blocks": {0: {"kernel": jax.random.normal(k[0], (16, 24)), "bias": jnp.zeros(24)}}},
            "predictor": {"proj": {"kernel": jax.random.normal(k[1], (8, 16))}}}
  state = {"step": jnp.int32(7), "params": params, "target_encoder": params["encoder"],
           "opt_state": optax.adamw(1e-3).init(params)}
  sh = jax.tree.map(lambda a: NamedSharding(mesh, P("fsdp") if a.ndim >= 2 and a.shape[0] % 4 == 0 else P()),
                    state)
  return jax.device_put(state, sh), sh


def _data_iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def test_checkpoint_round_trip(gcs):
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  state, sh = _state(mesh)
  workdir = f"gs://{BUCKET}/run"
  it = _data_iterator()
  next(it), next(it)
  with checkpointing.Checkpointer(workdir, keep=2, every_steps=1) as ckpt:
    assert ckpt.directory == epath.Path(workdir) / "checkpoints"
    assert ckpt.save(2, state, data_iterator=it, config={"mask": {"num_blocks": (8, 2)}})
    expected = [next(it) for _ in range(2)]
  assert {p.name for p in (epath.Path(workdir) / "checkpoints" / "2").iterdir()} >= {"state", "data_iter",
                                                                                     "config"}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, sh)
  fresh = _data_iterator()
  with checkpointing.Checkpointer(workdir, keep=2) as ckpt:  # a new process's view: nothing cached
    assert ckpt.latest_step() == 2
    restored = ckpt.restore(abstract, data_iterator=fresh)
    assert ckpt.restore_config()["mask"]["num_blocks"] == [8, 2]
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.dtype == b.dtype and a.sharding == b.sharding
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)
  subset = checkpointing.restore_params_only(workdir, {"params": abstract["params"]})
  np.testing.assert_array_equal(np.asarray(subset["params"]["predictor"]["proj"]["kernel"]),
                                np.asarray(state["params"]["predictor"]["proj"]["kernel"]))


def test_config_csv_and_tensorboard(gcs):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = epath.Path(f"gs://{BUCKET}/logs")
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text('{"seed": 0}')  # as train.py writes it
  assert (workdir / "config.json").read_text() == '{"seed": 0}'
  csv_path = workdir / "jepa_r0.csv"
  with metrics.MetricsWriter(workdir, is_primary=True, ipe=10, sync_secs=3600) as w:
    assert w.csv_path == str(csv_path)
    w.write(1, {"loss": 1.0, "lr": 1e-3})  # the first write uploads at once
    assert len(csv_path.read_text().splitlines()) == 2
    w.write(2, {"loss": 0.5})  # then at most every sync_secs...
    assert len(csv_path.read_text().splitlines()) == 2
    w.flush()  # ...or on flush / close
    assert len(csv_path.read_text().splitlines()) == 3
  time.sleep(1.1)  # event file names carry the time in whole seconds: a second run gets its own file
  with metrics.MetricsWriter(workdir, is_primary=True, ipe=10) as w:  # a resumed run appends
    w.write(3, {"loss": 0.25})
  rows = [line.split(",") for line in csv_path.read_text().splitlines()]
  assert rows[0] == metrics.HEADER and len(rows) == 4 and rows.count(metrics.HEADER) == 1
  assert [r[2] for r in rows[1:]] == ["1.00000", "0.50000", "0.25000"]
  tb = workdir / "tensorboard"
  assert len(list(tb.iterdir())) == 2  # one event file per run
  acc = event_accumulator.EventAccumulator(str(tb))  # TensorBoard itself reads gs:// through fsspec
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_video_list_and_videos(gcs, tmp_path):
  sampling = video.ClipSampling(frames_per_clip=4, frame_step=2, num_clips=2)
  remote_dir = epath.Path(f"gs://{BUCKET}/data")
  local_paths, remote_paths = [], []
  for i in range(2):
    local = os.path.join(tmp_path, f"v{i}.mp4")
    synthetic.write_mp4(local, synthetic.render_video(np.random.default_rng(i), i, i, size=32, num_frames=24))
    remote = remote_dir / "videos" / f"v{i}.mp4"
    remote.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "rb") as f:
      remote.write_bytes(f.read())
    local_paths.append(local)
    remote_paths.append(str(remote))
  list_path = str(remote_dir / "train.csv")
  sources.write_file_list(list_path, remote_paths, [3, 5])
  index = sources.ClipIndex([list_path])
  assert index.paths == remote_paths and index.labels == [3, 5]
  assert storage.file_size(remote_paths[0]) == os.path.getsize(local_paths[0])
  for local, remote in zip(local_paths, remote_paths):
    assert video.video_info(remote) == video.video_info(local)
    want, want_idx = video.load_clips(local, sampling, np.random.default_rng(0))
    got, got_idx = video.load_clips(remote, sampling, np.random.default_rng(0))
    for a, b in ((want, got), (want_idx, got_idx)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(video.VideoDecodeError, match="missing file"):
    video.load_clips(str(remote_dir / "videos" / "absent.mp4"), sampling, np.random.default_rng(0))


def test_synthetic_demo_data_in_a_gcs_workdir(gcs):
  config = ml_collections.ConfigDict({"seed": 0, "data": {"synthetic_videos": 2}})
  workdir = f"gs://{BUCKET}/demo"
  (list_path,) = synthetic_data.ensure_synthetic_videos(config, workdir, is_primary=True)
  assert list_path == f"{workdir}/data/motion_train.csv"
  paths, _ = sources.read_file_list(list_path)
  assert paths and all(p.startswith(f"{workdir}/data/videos/") for p in paths)
  num_frames, _ = video.video_info(paths[0])
  assert num_frames == 48


def test_load_encoder_reads_a_run_on_gs(gcs):
  import tiny  # pylint: disable=g-import-not-at-top
  import jepa_jax  # pylint: disable=g-import-not-at-top
  from jepa_jax import train_state  # pylint: disable=g-import-not-at-top
  config = tiny.tiny_config()
  params = train_state.init_params(config, 0)
  state = {"step": jnp.int32(1), "params": params, "target_encoder": params["encoder"]}
  workdir = f"gs://{BUCKET}/encoder_run"
  with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
    ckpt.save(1, state, config=config, force=True)
  encoder = jepa_jax.load_encoder(workdir)
  assert encoder.step == 1 and encoder.config.model.depth == config.model.depth
  clips = np.random.default_rng(0).integers(0, 256, (2, 4, 64, 64, 3), dtype=np.uint8)
  local = jepa_jax.Encoder(config, params["encoder"])  # the same params, not read from the bucket
  np.testing.assert_allclose(encoder.encode(clips), local.encode(clips), rtol=1e-6, atol=1e-6)
