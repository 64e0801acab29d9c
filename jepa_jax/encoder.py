"""A frozen V-JEPA encoder as one object: uint8 clips in, float32 features out.

  encoder = jepa_jax.load_encoder("workdir/demo")          # jepa_jax/loading.py: every source -> Encoder
  features = encoder.encode(clips)                          # uint8 [N, T, H, W, 3] -> float32 [N, tokens, D]

The ImageNet normalisation is inside (the same function as in training); images [N, H, W, 3] are repeated along
time as the official image evaluation does. Clips of another size than the built one (config.model.crop_size,
num_frames) work when divisible by the patch and tubelet sizes: the positional table is interpolated as in the
official model. Batches are spread over this process's devices (a mesh of the local devices along 'data', the
params replicated), the last one padded with zeros and the padding dropped, so one compile serves every batch.
Nothing needs a mesh, flags or a config file: it runs on one CPU in a notebook as on 8 accelerators.

Public: .config (a ConfigDict with at least .model), .params (the encoder's pure dict: official names, jax
arrays), .module (the NNX model with those params), encode(), and for callers that run their own jitted code
(the probe): features(params, clips), a pure function, and param_shardings(mesh, rules).
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jepa_jax import sharding
from jepa_jax.models import build_encoder
from jepa_jax.train_step import normalize_clips

# Clips per forward pass when encode() is not told: per device, so more devices take bigger batches.
_CLIPS_PER_DEVICE = 8


def encoder_template(model_cfg: ml_collections.ConfigDict):
  """(graphdef, abstract NNX state with logical axis names) of the configured encoder; nothing allocated."""
  return nnx.split(nnx.eval_shape(lambda: build_encoder(model_cfg, nnx.Rngs(0))))


def local_mesh() -> jax.sharding.Mesh:
  """This process's devices along 'data' (the mesh axes of sharding.MESH_AXES, the other two of size 1)."""
  devices = jax.local_devices()
  return jax.sharding.Mesh(np.asarray(devices).reshape(len(devices), 1, 1), sharding.MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(sharding.MESH_AXES))


def _as_config(config) -> ml_collections.ConfigDict:
  """A config with a .model: a full run config passes as is, a bare model config is wrapped."""
  config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  return config if "model" in config else ml_collections.ConfigDict({"model": config})


class Encoder:
  """A frozen encoder: config, params, and encode(). Built by jepa_jax.load_encoder (or Encoder.init)."""

  def __init__(self, config, params, *, source: str = "", which: str = "target_encoder",
               step: int | None = None):
    """config: a ConfigDict with .model (or the model config itself); params: the encoder's pure dict in the
    layout config.model builds (blocks stacked when scan_layers). source/which/step say where it came from."""
    self.config = _as_config(config)
    self.source, self.which, self.step = str(source), which, step
    self._graphdef, self._abstract = encoder_template(self.config.model)
    self.mesh = local_mesh()
    expected = jax.tree.structure(nnx.to_pure_dict(self._abstract))
    if jax.tree.structure(params) != expected:
      raise ValueError(f"the params do not have the tree of the configured encoder ({self.config.model.name}); "
                       "build the Encoder from the config the params were made with")
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))

  @classmethod
  def init(cls, config, seed: int = 0) -> "Encoder":
    """A freshly initialised encoder (the official init) of the configured size: a random baseline."""
    model_cfg = _as_config(config).model
    params = nnx.to_pure_dict(nnx.state(build_encoder(model_cfg, nnx.Rngs(seed))))
    return cls(config, params, source=f"random init (seed {seed})", which="random", step=None)

  def __repr__(self) -> str:
    m = self.config.model
    at = f" at step {self.step}" if self.step is not None else ""
    return (f"Encoder({m.name}, width {self.embed_dim}, {self.num_tokens} tokens of {m.num_frames}x{m.crop_size}"
            f"x{m.crop_size} clips, {self.which} from {self.source or '?'}{at})")

  # --- what the model is ---------------------------------------------------------------------------------------
  @functools.cached_property
  def _dims(self):
    module = nnx.merge(self._graphdef, self._abstract)
    return module.embed_dim, module.num_heads, module.num_patches

  @property
  def embed_dim(self) -> int:
    return self._dims[0]

  @property
  def num_heads(self) -> int:
    return self._dims[1]

  @property
  def num_tokens(self) -> int:
    """Tokens of a clip of the built size: (num_frames / tubelet) * (crop_size / patch)^2."""
    return self._dims[2]

  @property
  def module(self) -> nnx.Module:
    """The NNX VisionTransformer holding .params (takes normalised clips; encode() normalises for you)."""
    return nnx.merge(self._graphdef, self.params)

  def param_shardings(self, mesh, rules) -> dict:
    """NamedShardings of .params on `mesh` by the logical axis rules (config.mesh.rules), e.g. FSDP for a probe."""
    with jax.set_mesh(mesh):
      return sharding.param_shardings(self._abstract, mesh, rules)

  # --- encoding ------------------------------------------------------------------------------------------------
  def features(self, params, clips: jax.Array) -> jax.Array:
    """Pure: uint8 clips [M, T, H, W, 3] (or images [M, H, W, 3]) -> float32 tokens [M, N, D], no gradient."""
    encoder = nnx.merge(self._graphdef, jax.lax.stop_gradient(params))
    tokens = encoder(normalize_clips(clips, jnp.dtype(self.config.model.dtype)))
    return jax.lax.stop_gradient(tokens).astype(jnp.float32)

  @functools.cached_property
  def feature_fn(self):
    """jax.jit(features): one compile per input shape."""
    return jax.jit(self.features)

  @functools.cached_property
  def _pooled_fn(self):
    return jax.jit(lambda params, clips: self.features(params, clips).mean(axis=1))

  def encode(self, clips, *, pooled: bool = False, batch_size: int | None = None) -> np.ndarray:
    """Features of uint8 clips [N, T, H, W, 3] or images [N, H, W, 3] (an array, or any iterable of single clips
    [T, H, W, 3] / images [H, W, 3], e.g. a generator that decodes videos one by one).

    Returns float32 [N, tokens, D], or [N, D] mean-pooled over tokens with pooled=True. batch_size (default 8 per
    local device) is rounded up to a multiple of the local devices.
    """
    devices = self.mesh.size
    batch = max(1, int(batch_size or _CLIPS_PER_DEVICE * devices))
    batch = -(-batch // devices) * devices
    if isinstance(clips, np.ndarray) or hasattr(clips, "__array__"):
      clips = np.asarray(clips)
      _check_clips(clips, batched=True)
      batch = min(batch, -(-len(clips) // devices) * devices) or devices
      batches = (clips[i:i + batch] for i in range(0, len(clips), batch))
    else:
      batches = _group(clips, batch)
    fn = self._pooled_fn if pooled else self.feature_fn
    out, in_flight = [], None
    for chunk in batches:
      n = len(chunk)
      padded = np.zeros((batch,) + chunk.shape[1:], np.uint8)
      padded[:n] = chunk
      result = fn(self.params, jax.device_put(padded, sharding.batch_sharding(self.mesh)))
      if in_flight is not None:  # fetch the previous batch while this one runs
        out.append(np.asarray(in_flight[0])[:in_flight[1]])
      in_flight = (result, n)
    if in_flight is None:
      raise ValueError("encode() got no clips")
    out.append(np.asarray(in_flight[0])[:in_flight[1]])
    return np.concatenate(out)


def _check_clips(clips: np.ndarray, *, batched: bool) -> None:
  ndims = (4, 5) if batched else (3, 4)
  if clips.dtype != np.uint8 or clips.ndim not in ndims or clips.shape[-1] != 3:
    what = "[N, T, H, W, 3] clips or [N, H, W, 3] images" if batched else "[T, H, W, 3] clips or [H, W, 3] images"
    raise ValueError(f"encode() takes uint8 RGB {what}; got {clips.dtype} {clips.shape}")


def _group(clips: Iterable[Any], batch: int) -> Iterator[np.ndarray]:
  """Stacks single clips into arrays of up to `batch` clips."""
  pending = []
  for clip in clips:
    clip = np.asarray(clip)
    _check_clips(clip, batched=False)
    if pending and clip.shape != pending[0].shape:
      raise ValueError(f"clips of different shapes in one encode() call: {pending[0].shape} and {clip.shape}")
    pending.append(clip)
    if len(pending) == batch:
      yield np.stack(pending)
      pending = []
  if pending:
    yield np.stack(pending)
