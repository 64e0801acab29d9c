"""The device mesh and the shardings of the train state and the batch.

One table of logical axis rules (config.mesh.rules) maps parameter axes (embed, mlp, heads, ...) to the mesh axes
('data', 'fsdp', 'tensor'). Size-1 mesh axes drop out by themselves, so one table serves every layout: pure data
parallel (-1, 1, 1), FSDP (1, -1, 1), and tensor parallel on top.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills in the one -1 entry and checks that the mesh uses exactly the devices there are."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"config.mesh.shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}.")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape may hold at most one -1, got {shape}.")
  known = math.prod(s for s in shape if s != -1)
  if known <= 0 or num_devices % known:
    raise ValueError(
        f"config.mesh.shape={shape} does not fit {num_devices} devices: the fixed axes multiply to {known}, which "
        f"must divide the device count. Set config.mesh.shape so its product is {num_devices} (or use -1 once).")
  shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"config.mesh.shape={shape} needs {math.prod(shape)} devices but there are {num_devices}. "
        f"Set config.mesh.shape so its product is {num_devices} (or use -1 once).")
  return shape


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh with Auto axes.

  With config.mesh.dcn_data_parallelism > 1 (several TPU slices), the 'data' axis is split across slices so that
  only data-parallel gradient reductions cross the slower data-centre network.
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = int(mesh_config.get("dcn_data_parallelism", 1) or 1)
  shape = resolve_mesh_shape(mesh_config.shape, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if dcn == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  if shape[0] % dcn:
    raise ValueError(
        f"config.mesh.dcn_data_parallelism={dcn} must divide the 'data' axis {shape[0]} of mesh {shape}.")
  ici_shape = (shape[0] // dcn, shape[1], shape[2])
  device_array = mesh_utils.create_hybrid_device_mesh(ici_shape, (dcn, 1, 1), devices)
  return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def logical_rules(mesh_config) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """The config's rule table as the tuple-of-pairs nnx.logical_axis_rules expects."""
  rules = []
  for name, target in mesh_config.rules:
    rules.append((name, tuple(target) if isinstance(target, (list, tuple)) else target))
  return tuple(rules)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the 'data' and 'fsdp' axes."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over ('data', 'fsdp'); every other axis replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules) -> dict:
  """Pure-dict tree of NamedShardings for an abstract NNX state whose Variables carry logical axis names."""
  with nnx.logical_axis_rules(rules):
    shardings = nnx.get_named_sharding(abstract_state, mesh)
  return nnx.to_pure_dict(shardings)


def host_local_batch_to_global(local_batch, mesh: Mesh):
  """Assembles the per-process batches into one global jax.Array per leaf, sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
