"""The train state as plain pytrees, created already sharded.

state = {'step': int32[], 'params': {'encoder': ..., 'predictor': ...}, 'target_encoder': ..., 'opt_state': ...}

Params are pure dicts (nnx.to_pure_dict) whose '.'-joined paths are the official PyTorch keys; the model code lives
in graphdefs merged inside the jitted step. The target encoder starts equal to the encoder and takes its shardings
(big_vision's params_ema pattern).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jepa_jax import sharding
from jepa_jax.models import build_encoder, build_predictor


@dataclasses.dataclass(frozen=True)
class ModelDefs:
  """Graph definitions of the two networks and the abstract (shape-only) NNX states that carry logical axes."""
  encoder_def: Any
  predictor_def: Any
  abstract_encoder: nnx.State
  abstract_predictor: nnx.State


def num_mask_generators(config) -> int:
  return len(config.mask.num_blocks)


def num_mask_tokens(config) -> int:
  """The predictor's mask tokens: config.model.num_mask_tokens (V-JEPA 2 files: 10), or one per mask generator."""
  return int(config.model.get("num_mask_tokens", 0)) or num_mask_generators(config)


def _build(config, seed: int):
  rngs = nnx.Rngs(seed)
  encoder = build_encoder(config.model, rngs=rngs)
  predictor = build_predictor(config.model, num_mask_tokens=num_mask_tokens(config), rngs=rngs)
  return encoder, predictor


def model_defs(config) -> ModelDefs:
  """Builds the networks abstractly (no allocation) to get graphdefs and logical shardings."""
  with nnx.use_eager_sharding(False):
    encoder, predictor = nnx.eval_shape(lambda: _build(config, 0))
  encoder_def, abstract_encoder = nnx.split(encoder)
  predictor_def, abstract_predictor = nnx.split(predictor)
  return ModelDefs(encoder_def, predictor_def, abstract_encoder, abstract_predictor)


def init_params(config, seed: int) -> dict:
  """Fresh parameters with the official initialisation, as pure dicts."""
  with nnx.use_eager_sharding(False):
    encoder, predictor = _build(config, seed)
  return {"encoder": nnx.to_pure_dict(nnx.state(encoder)),
          "predictor": nnx.to_pure_dict(nnx.state(predictor))}


def state_shardings(defs: ModelDefs, tx: optax.GradientTransformation, mesh: Mesh, rules) -> dict:
  """NamedShardings for every leaf of the train state."""
  encoder_sh = sharding.param_shardings(defs.abstract_encoder, mesh, rules)
  predictor_sh = sharding.param_shardings(defs.abstract_predictor, mesh, rules)
  params_sh = {"encoder": encoder_sh, "predictor": predictor_sh}
  abstract_params = abstract_param_shapes(defs)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, params_sh,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return {"step": sharding.replicated(mesh), "params": params_sh, "target_encoder": encoder_sh,
          "opt_state": opt_sh}


def abstract_param_shapes(defs: ModelDefs) -> dict:
  to_sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  return {"encoder": jax.tree.map(to_sds, nnx.to_pure_dict(defs.abstract_encoder)),
          "predictor": jax.tree.map(to_sds, nnx.to_pure_dict(defs.abstract_predictor))}


def abstract_state(defs: ModelDefs, tx, shardings: dict) -> dict:
  """ShapeDtypeStructs with shardings: the restore target for orbax and the input to ahead-of-time compiles."""
  params = abstract_param_shapes(defs)
  shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
            "target_encoder": params["encoder"], "opt_state": jax.eval_shape(tx.init, params)}
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def state_from_params(params: dict, tx, *, target_encoder=None, opt_state=None, step: int = 0) -> dict:
  """A train state around given params; the target defaults to a copy of the encoder (official deepcopy)."""
  target = jax.tree.map(jnp.copy, params["encoder"]) if target_encoder is None else target_encoder
  return {"step": jnp.asarray(step, jnp.int32), "params": params, "target_encoder": target,
          "opt_state": tx.init(params) if opt_state is None else opt_state}


def create_train_state(config, tx, shardings: dict, seed: int) -> dict:
  """Initialises the whole state inside one jit whose outputs are already sharded over the mesh."""
  return jax.jit(lambda: state_from_params(init_params(config, seed), tx), out_shardings=shardings)()
