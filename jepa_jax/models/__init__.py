"""Model construction from config.model (configs/default.py): the encoder, the predictor and a parameter count.

Builders create plain unsharded variables (no mesh needed), so call them under nnx.eval_shape for an abstract model
or inside a jitted init with out_shardings for a sharded one.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jepa_jax import remat_plans
from jepa_jax.models.predictor import VisionTransformerPredictor
from jepa_jax.models.vit import MODEL_SIZES, MODEL_ZOO, VisionTransformer

__all__ = ["MODEL_SIZES", "MODEL_ZOO", "ModelDims", "VisionTransformer", "VisionTransformerPredictor",
           "build_encoder", "build_predictor", "count_params", "model_dims"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _common(cfg: ml_collections.ConfigDict) -> dict:
  if cfg.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
  return dict(img_size=cfg.crop_size, patch_size=cfg.patch_size, num_frames=cfg.num_frames,
              tubelet_size=cfg.tubelet_size, uniform_power=cfg.uniform_power,
              pos_embed=cfg.get("pos_embed", "sincos"), depth_rescale_init=bool(cfg.get("depth_rescale_init", False)),
              dtype=_DTYPES[cfg.dtype],
              attention_impl=cfg.attention_impl or None, scan_layers=cfg.scan_layers,
              # 'auto' is resolved per chip by training (jepa_jax/remat_plans.py); a model built elsewhere (loading a
              # shipped config for features) takes the plans' fallback.
              remat=remat_plans.FALLBACK if cfg.remat == "auto" else cfg.remat)


def _size_overrides(cfg: ml_collections.ConfigDict) -> dict:
  """config.model.embed_dim / depth / num_heads > 0 replace the zoo's values (small test and demo models)."""
  return {k: cfg.get(k) for k in ("embed_dim", "depth", "num_heads") if cfg.get(k, 0)}


@dataclasses.dataclass(frozen=True)
class ModelDims:
  """The sizes of the encoder and predictor that config.model builds (what FLOP counts and benchmarks need)."""
  embed_dim: int
  depth: int
  num_heads: int
  mlp_hidden: int
  patch_size: int
  tubelet_size: int
  num_frames: int
  crop_size: int
  pred_embed_dim: int
  pred_depth: int
  pred_num_heads: int
  pred_mlp_hidden: int

  @property
  def grid(self) -> tuple[int, int, int]:
    """Tokens along (time, height, width) of one clip."""
    side = self.crop_size // self.patch_size
    return (self.num_frames // self.tubelet_size, side, side)

  @property
  def num_tokens(self) -> int:
    return math.prod(self.grid)

  @property
  def patch_dim(self) -> int:
    """Input values per token: a tubelet of RGB pixels."""
    return 3 * self.tubelet_size * self.patch_size ** 2


def model_dims(model_cfg: ml_collections.ConfigDict) -> ModelDims:
  """The zoo's sizes (models/vit.py MODEL_SIZES) with config.model's overrides applied as build_encoder applies
  them; nothing is built."""
  if model_cfg.name not in MODEL_SIZES:
    raise ValueError(f"unknown config.model.name {model_cfg.name!r}; choose from {sorted(MODEL_SIZES)}")
  size = dataclasses.replace(MODEL_SIZES[model_cfg.name], **_size_overrides(model_cfg))
  num_heads = size.num_heads
  return ModelDims(
      embed_dim=size.embed_dim, depth=size.depth, num_heads=num_heads,
      mlp_hidden=int(size.embed_dim * size.mlp_ratio),  # as layers.Block sizes its Mlp
      patch_size=model_cfg.patch_size, tubelet_size=model_cfg.tubelet_size, num_frames=model_cfg.num_frames,
      crop_size=model_cfg.crop_size, pred_embed_dim=model_cfg.pred_embed_dim, pred_depth=model_cfg.pred_depth,
      # V-JEPA 1 gives the predictor the encoder's head count (16 for L/H, so head_dim 24); 0 in the config means that.
      pred_num_heads=model_cfg.pred_num_heads or num_heads,
      pred_mlp_hidden=int(model_cfg.pred_embed_dim * 4.0))  # the predictor's blocks keep the default mlp_ratio 4


def build_encoder(model_cfg: ml_collections.ConfigDict, rngs: nnx.Rngs, *,
                  abstract_depth: int | None = None) -> VisionTransformer:
  """The context (and target) encoder named by config.model.name.

  abstract_depth: build an abstract (eval_shape) model with that many blocks, to read its dimensions cheaply.
  """
  if model_cfg.name not in MODEL_ZOO:
    raise ValueError(f"unknown config.model.name {model_cfg.name!r}; choose from {sorted(MODEL_ZOO)}")
  factory = MODEL_ZOO[model_cfg.name]
  kwargs = {**_common(model_cfg), **_size_overrides(model_cfg)}
  with nnx.use_eager_sharding(False):
    if abstract_depth is not None:
      return nnx.eval_shape(lambda: factory(**{**kwargs, "depth": abstract_depth}, rngs=nnx.Rngs(0)))
    return factory(**kwargs, rngs=rngs)


def build_predictor(model_cfg: ml_collections.ConfigDict, num_mask_tokens: int,
                    rngs: nnx.Rngs) -> VisionTransformerPredictor:
  """The predictor for the configured encoder: num_mask_tokens tokens (one per mask generator in V-JEPA 1, 10 in
  the V-JEPA 2 files; jepa_jax.train_state.num_mask_tokens) used by config.model.mask_token_rule (docs/reference.md
  §2.3)."""
  dims = model_dims(model_cfg)
  with nnx.use_eager_sharding(False):
    return VisionTransformerPredictor(
        **_common(model_cfg), embed_dim=dims.embed_dim, predictor_embed_dim=dims.pred_embed_dim,
        depth=dims.pred_depth, num_heads=dims.pred_num_heads, num_mask_tokens=num_mask_tokens,
        mask_token_rule=model_cfg.get("mask_token_rule", "generator"),
        zero_init_mask_tokens=model_cfg.zero_init_mask_tokens, rngs=rngs)


def count_params(module_or_state) -> int:
  """Number of trainable scalars (nnx.Param) in a module, an abstract module, a State or a pure dict."""
  if isinstance(module_or_state, nnx.Module):
    module_or_state = nnx.state(module_or_state, nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(module_or_state))
