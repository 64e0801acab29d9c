"""The rule between our parameter pure dicts and official PyTorch state_dict keys (docs/reference.md §2.4).

Our modules are named like the official ones, so a parameter path joined with '.' is the PyTorch key once the leaf
is renamed (kernel -> weight, scale -> weight) and the kernel transposed (Linear [in, out] -> [out, in]; Conv3d
[kt, kh, kw, I, O] -> [O, I, kt, kh, kw]). Keys carry no 'module.backbone.' prefix; strip it before calling.
Positional tables are not parameters here; exporters add them with pos_embed_entries.
"""
from typing import Any, Mapping

import jax
import numpy as np

# Top-level collections that hold the transformer blocks; with scan_layers they are one stack with a leading axis.
BLOCK_COLLECTIONS = ("blocks", "predictor_blocks")
# Frozen sin-cos tables the official state_dicts carry; we recompute them, so they are accepted and skipped.
POS_EMBED_KEYS = ("pos_embed", "predictor_pos_embed")

_CONV_TO_TORCH = (4, 3, 0, 1, 2)  # [kt, kh, kw, I, O] -> [O, I, kt, kh, kw]
_CONV_FROM_TORCH = (2, 3, 4, 1, 0)


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor; bf16 has no numpy dtype, so go through float32.
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
      x = x.float()
    return x.numpy()
  return np.asarray(x)


def _is_list_layout(blocks: Mapping) -> bool:
  return all(isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in blocks)


def unstack_layers(pure: Mapping[str, Any]) -> dict:
  """Scanned layout (one stacked block per collection) -> list layout {i: block}; a list layout passes as is."""
  out = dict(pure)
  for name in BLOCK_COLLECTIONS:
    if name in out and not _is_list_layout(out[name]):
      leaves = _flatten(out[name])
      depth = next(iter(leaves.values())).shape[0]
      out[name] = {i: _unflatten({k: _layer(v, i) for k, v in leaves.items()}) for i in range(depth)}
  return out


def _layer(x, i: int):
  """Layer i of a stacked leaf; for an abstract leaf (ShapeDtypeStruct) only its shape and dtype."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  return x[i]


def stack_layers(pure: Mapping[str, Any]) -> dict:
  """List layout {i: block} -> scanned layout (each leaf stacked along a new leading axis); a scanned layout passes
  as is."""
  out = dict(pure)
  for name in BLOCK_COLLECTIONS:
    if name in out and _is_list_layout(out[name]):
      blocks = [_flatten(out[name][i]) for i in sorted(out[name], key=int)]
      out[name] = _unflatten({k: np.stack([np.asarray(b[k]) for b in blocks]) for k in blocks[0]})
  return out


def _flatten(tree, prefix=()) -> dict[tuple, Any]:
  if isinstance(tree, Mapping):
    flat = {}
    for k, v in tree.items():
      flat.update(_flatten(v, prefix + (k,)))
    return flat
  return {prefix: tree}


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _torch_key(path: tuple) -> str:
  """('blocks', 0, 'attn', 'qkv', 'kernel') -> 'blocks.0.attn.qkv.weight'; mask_tokens.{i} keeps its path."""
  *head, leaf = (str(p) for p in path)
  if leaf in ("kernel", "scale"):
    leaf = "weight"
  return ".".join(head + [leaf])


def _to_torch_value(path: tuple, x: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    if x.ndim == 2:
      x = x.T
    elif x.ndim == 5:
      x = x.transpose(_CONV_TO_TORCH)
    else:
      raise ValueError(f"no PyTorch layout for a {x.ndim}-d kernel at {'.'.join(map(str, path))}")
  return np.array(x, copy=True, order="C")  # writable and contiguous, ready for torch.from_numpy.


def _from_torch_value(path: tuple, x: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel":
    x = x.T if x.ndim == 2 else x.transpose(_CONV_FROM_TORCH) if x.ndim == 5 else x
  return np.array(x, copy=True, order="C")


def to_torch_state_dict(pure: Mapping[str, Any], *, scanned: bool = False) -> dict[str, np.ndarray]:
  """Our pure dict (nnx.to_pure_dict(nnx.state(model, nnx.Param))) -> official state_dict of numpy arrays."""
  if scanned:
    pure = unstack_layers(pure)
  return {_torch_key(path): _to_torch_value(path, _to_numpy(x)) for path, x in _flatten(pure).items()}


def from_torch_state_dict(state_dict: Mapping[str, Any], template_pure: Mapping[str, Any], *,
                          scanned: bool = False) -> dict:
  """Official state_dict -> our pure dict with the structure of template_pure (arrays or ShapeDtypeStructs).

  Raises ValueError listing every missing key, unexpected key and shape mismatch at once. pos_embed and
  predictor_pos_embed are accepted and dropped (recomputed by the model).
  """
  template = unstack_layers(template_pure) if scanned else template_pure
  wanted = {_torch_key(path): path for path in _flatten(template)}
  template_flat = _flatten(template)
  given = {k: v for k, v in state_dict.items() if k not in POS_EMBED_KEYS}
  missing = sorted(set(wanted) - set(given))
  unexpected = sorted(set(given) - set(wanted))
  flat, mismatched = {}, []
  for key in sorted(set(wanted) & set(given)):
    path = wanted[key]
    value = _from_torch_value(path, _to_numpy(given[key]))
    expected = tuple(template_flat[path].shape)
    if value.shape != expected:
      mismatched.append(f"{key}: got {tuple(_to_numpy(given[key]).shape)} (PyTorch layout), "
                        f"model wants {_to_torch_value(path, np.empty(expected, np.float32)).shape}")
    flat[path] = value.astype(getattr(template_flat[path], "dtype", value.dtype))
  if missing or unexpected or mismatched:
    raise ValueError("state_dict does not match the model:\n"
                     f"  missing keys ({len(missing)}): {missing}\n"
                     f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
                     f"  shape mismatches ({len(mismatched)}): {mismatched}")
  pure = _unflatten(flat)
  return stack_layers(pure) if scanned else pure


def pos_embed_entries(model) -> dict[str, np.ndarray]:
  """The frozen positional tables an official state_dict carries: {'pos_embed': [1, N, D]} for an encoder,
  {'predictor_pos_embed': [1, N, 384]} for a predictor (works on abstract models too); nothing for RoPE models."""
  if getattr(model, "use_rope", False):
    return {}  # V-JEPA 2: RoPE models have no table (the stale one of the released files is not written)
  key = "predictor_pos_embed" if hasattr(model, "predictor_embed") else "pos_embed"
  return {key: np.array(model.pos_embed(), copy=True)[None]}
