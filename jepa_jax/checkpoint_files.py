"""What an official checkpoint file holds: the V-JEPA 1 and V-JEPA 2 layouts told apart, the Hugging Face V-JEPA 2
safetensors read into the official keys, and one description of a file for every error that rejects it.

The layouts (docs/reference.md §2.4, §9.7):
- V-JEPA 1 (.pth.tar): 'encoder', 'predictor', 'target_encoder' state_dicts under 'module.backbone.'; the encoder
  carries its frozen sin-cos 'pos_embed', the predictor 'predictor_pos_embed' and one mask token per mask
  generator (2).
- V-JEPA 2 (vitl.pt, vith.pt, vitg.pt, vitg-384.pt and the official training checkpoints): the same keys, RoPE
  models without position tables. [quirk docs/reference.md §9.7] The released files still carry a stale 'pos_embed'
  (the official hub loads them with strict=False for that reason); official training checkpoints carry none. The
  released predictor holds 10 mask tokens, official training checkpoints 2 x (frame-count groups), 6 in the
  public configs.
- Hugging Face (facebook/vjepa2-*: model.safetensors, possibly sharded with model.safetensors.index.json, and a
  config.json beside it): encoder and predictor of the release's 'encoder' entry under the transformers names
  (jepa_jax/hf_layout.py); no target encoder.

What tells V-JEPA 2 from V-JEPA 1 in a PyTorch file: an encoder without a position table, or a predictor of 10 mask
tokens (the release). An encoder-only file that carries a table is ambiguous (the heads and the positional scheme do
not show in the tensors): its reader trusts the config it is given.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from jepa_jax import hf_layout

STALE_POS_EMBED_KEYS = hf_layout.STALE_KEYS  # ('pos_embed', 'predictor_pos_embed')
RELEASED_V2_MASK_TOKENS = 10
BACKBONE_MODULES = ("encoder", "predictor", "target_encoder")
_HF_BASE_PREFIX = "vjepa2."  # VJEPA2ForVideoClassification puts the VJEPA2Model under this name
_HF_PROBE_PREFIXES = ("pooler.", "classifier.")


def to_numpy(x) -> np.ndarray:
  """A torch tensor (bfloat16 through float32, which numpy lacks) or an array as numpy."""
  if hasattr(x, "detach"):
    x = x.detach().cpu()
    return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
  return np.asarray(x)


def strip_prefixes(sd: Mapping[str, Any]) -> dict:
  """Removes the DDP 'module.' and wrapper 'backbone.' prefixes at the start of each key (the official loaders
  replace them anywhere in the key; no official key contains them elsewhere)."""
  out = {}
  for k, v in sd.items():
    for prefix in ("module.", "backbone."):
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  return out


# ============================================================================================== Hugging Face

def _safetensors_keys(path: str) -> list[str]:
  from safetensors import safe_open
  with safe_open(path, framework="np") as f:
    return list(f.keys())


def _hf_shards(path: str) -> list[str]:
  """The safetensors files of a Hugging Face checkpoint: the file itself, or every shard an index names."""
  if path.endswith(".index.json"):
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
    folder = os.path.dirname(path)
    return [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
  return [path]


def is_hf_keys(keys) -> bool:
  """Whether state_dict keys are in the transformers V-JEPA 2 layout (encoder.layer.*, predictor.layer.*, ...)."""
  heads = ("encoder.embeddings.", "encoder.layer.", "predictor.embeddings.", "predictor.layer.")
  return any(k.startswith(heads) or k.startswith(tuple(_HF_BASE_PREFIX + h for h in heads)) for k in keys)


def is_hf_file(path: str) -> bool:
  """A Hugging Face V-JEPA 2 checkpoint: model.safetensors(.index.json) with the transformers key names."""
  if path.endswith(".safetensors.index.json"):
    return True
  if not path.endswith(".safetensors") or not os.path.isfile(path):
    return False
  try:
    return is_hf_keys(_safetensors_keys(path))
  except Exception:  # pylint: disable=broad-except  (unreadable: the reader that claims it reports why)
    return False


def hf_config(path: str) -> dict | None:
  """The transformers VJEPA2Config (config.json) beside a Hugging Face checkpoint, if there is one."""
  config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
  if not os.path.isfile(config_path):
    return None
  with open(config_path) as f:
    config = json.load(f)
  return config if config.get("model_type") == "vjepa2" or "pred_num_mask_tokens" in config else None


def read_hf_file(path: str) -> dict:
  """A Hugging Face V-JEPA 2 checkpoint as an official one: {'encoder', 'predictor'} state_dicts (official keys, no
  prefix, numpy float32), 'hf_probe' (the pooler / classifier tensors of a VJEPA2ForVideoClassification, under
  transformers names) when there are any, 'hf_config' (config.json beside it) when there is one."""
  from safetensors import safe_open
  tensors = {}
  for shard in _hf_shards(path):
    if not os.path.isfile(shard):
      raise FileNotFoundError(f"{path} names the shard {shard}, which does not exist")
    # framework 'pt': the released files may be bfloat16, which numpy cannot hold.
    with safe_open(shard, framework="pt") as f:
      tensors.update({k: to_numpy(f.get_tensor(k)) for k in f.keys()})
  probe = {k: v for k, v in tensors.items() if k.startswith(_HF_PROBE_PREFIXES)}
  backbone = {k: v for k, v in tensors.items() if not k.startswith(_HF_PROBE_PREFIXES)}
  official = hf_layout.from_hf(backbone, base_prefix=_HF_BASE_PREFIX)
  predictor_heads = ("predictor_", "mask_tokens.")
  ckpt: dict[str, Any] = {
      "encoder": {k: v for k, v in official.items() if not k.startswith(predictor_heads)},
      "predictor": {k: v for k, v in official.items() if k.startswith(predictor_heads)},
  }
  if not ckpt["predictor"]:
    del ckpt["predictor"]
  if probe:
    ckpt["hf_probe"] = probe
  config = hf_config(path)
  if config is not None:
    ckpt["hf_config"] = config
  return ckpt


def hf_model_fields(config: Mapping[str, Any]) -> dict:
  """config.model fields a transformers VJEPA2Config states (heads included, which the tensors do not show)."""
  return {"patch_size": int(config.get("patch_size", 16)), "tubelet_size": int(config.get("tubelet_size", 2)),
          "num_frames": int(config.get("frames_per_clip", 64)), "crop_size": int(config.get("crop_size", 256)),
          "embed_dim": int(config.get("hidden_size", 1024)), "depth": int(config.get("num_hidden_layers", 24)),
          "num_heads": int(config.get("num_attention_heads", 16)),
          "pred_embed_dim": int(config.get("pred_hidden_size", 384)),
          "pred_depth": int(config.get("pred_num_hidden_layers", 12)),
          "pred_num_heads": int(config.get("pred_num_attention_heads", 12)),
          "num_mask_tokens": int(config.get("pred_num_mask_tokens", RELEASED_V2_MASK_TOKENS))}


# ============================================================================================== what a file holds

def module_dict(ckpt: Mapping[str, Any], module: str) -> dict | None:
  """One module's state_dict with the prefixes stripped, or None when the file lacks it."""
  sd = ckpt.get(module)
  return strip_prefixes(sd) if isinstance(sd, Mapping) else None


def mask_token_count(predictor_sd: Mapping[str, Any]) -> int:
  return len([k for k in predictor_sd if k.startswith("mask_tokens.")])


def looks_vjepa2(ckpt: Mapping[str, Any]) -> bool:
  """Whether a PyTorch checkpoint dict is a V-JEPA 2 file (module doc): an encoder without a position table, a
  predictor of 10 mask tokens, or Hugging Face keys."""
  if "hf_config" in ckpt or "hf_probe" in ckpt:
    return True
  for module in ("encoder", "target_encoder"):
    sd = module_dict(ckpt, module)
    if sd is not None and "patch_embed.proj.weight" in sd and "pos_embed" not in sd:
      return True
  predictor = module_dict(ckpt, "predictor")
  return predictor is not None and mask_token_count(predictor) == RELEASED_V2_MASK_TOKENS


def encoder_dims(sd: Mapping[str, Any]) -> dict | None:
  """Width, depth, MLP width, patch and tubelet of an encoder state_dict; None when it is not one."""
  if "patch_embed.proj.weight" not in sd or "blocks.0.mlp.fc1.weight" not in sd:
    return None
  width, _, tubelet, patch, _ = np.shape(sd["patch_embed.proj.weight"])
  return {"embed_dim": int(width), "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
          "mlp_hidden": int(np.shape(sd["blocks.0.mlp.fc1.weight"])[0]), "patch_size": int(patch),
          "tubelet_size": int(tubelet)}


def zoo_names(dims: Mapping[str, int]) -> list[str]:
  """The zoo models (jepa_jax/models/vit.py MODEL_SIZES) of this width, depth and MLP width."""
  from jepa_jax.models.vit import MODEL_SIZES
  return [name for name, z in MODEL_SIZES.items()
          if (z.embed_dim, z.depth, int(z.embed_dim * z.mlp_ratio)) == (dims["embed_dim"], dims["depth"],
                                                                         dims["mlp_hidden"])]


def v2_zoo_name(names: list[str]) -> list[str]:
  """V-JEPA 2's ViT-g is vit_giant_xformers (22 heads); the 16-head vit_giant of the same shapes is V-JEPA 1's."""
  return ["vit_giant_xformers"] if "vit_giant_xformers" in names else names


def sincos_grid(table, dims: Mapping[str, int]) -> tuple[int, int, bool] | None:
  """(num_frames, crop_size, uniform_power) whose 3-D sin-cos table equals `table` [1, N, D], or None."""
  from jepa_jax.models import layers
  table = to_numpy(table)
  n, width = table.shape[-2:]
  table = table.astype(np.float32).reshape(n, width)
  for t in range(1, n + 1):
    side = math.isqrt(n // t) if n % t == 0 else 0
    if not side or side * side != n // t:
      continue
    for uniform_power in (True, False):
      if np.allclose(layers.get_3d_sincos_pos_embed(width, t, side, uniform_power), table, atol=1e-4):
        return t * dims["tubelet_size"], side * dims["patch_size"], uniform_power
  return None


def describe(ckpt: Mapping[str, Any]) -> str:
  """What a checkpoint dict holds, in one sentence: position table or not, width, depth, MLP, heads when the file
  states them, the predictor and its mask tokens, and which generation that layout is."""
  parts = []
  encoder_key = next((m for m in ("target_encoder", "encoder") if module_dict(ckpt, m) is not None), None)
  hf = ckpt.get("hf_config")
  if encoder_key is not None:
    sd = module_dict(ckpt, encoder_key)
    dims = encoder_dims(sd)
    if dims is None:
      parts.append(f"'{encoder_key}' with keys {sorted(sd)[:4]}... (not a V-JEPA encoder)")
    else:
      names = zoo_names(dims)
      text = (f"an encoder of width {dims['embed_dim']}, depth {dims['depth']}, MLP {dims['mlp_hidden']}, patch "
              f"{dims['patch_size']}, tubelet {dims['tubelet_size']}"
              + (f" ({' or '.join(names)})" if names else " (no zoo model has these dimensions)"))
      text += f", {hf['num_attention_heads']} heads (config.json)" if hf else ", heads not in the tensors"
      if "pos_embed" in sd:
        shape = tuple(np.shape(sd["pos_embed"]))
        grid = sincos_grid(sd["pos_embed"], dims)
        text += (f", a position table pos_embed {list(shape)}"
                 + (f" (the sin-cos table of {grid[0]} frames x {grid[1]} px)" if grid else ""))
      else:
        text += ", no position table"
      parts.append(text)
  predictor = module_dict(ckpt, "predictor")
  if predictor is not None and "predictor_embed.weight" in predictor:
    width, _ = np.shape(predictor["predictor_embed.weight"])
    depth = len({k.split(".")[1] for k in predictor if k.startswith("predictor_blocks.")})
    parts.append(f"a predictor of width {width}, depth {depth}, {mask_token_count(predictor)} mask tokens"
                 + (", a position table" if "predictor_pos_embed" in predictor else ", no position table"))
  if encoder_key is None and predictor is None:
    return f"no encoder or predictor (top-level keys {sorted(ckpt)})"
  layout = ("the Hugging Face V-JEPA 2 layout" if "hf_config" in ckpt or "hf_probe" in ckpt
            else "a V-JEPA 2 layout" if looks_vjepa2(ckpt) else "a V-JEPA 1 layout")
  return "; ".join(parts) + f": {layout}"


def fitting_configs(ckpt: Mapping[str, Any]) -> list[str]:
  """Names of the shipped pretraining configs (jepa_jax/configs/) whose model the file holds: the zoo model of its
  encoder, the positional scheme of its layout and, for a V-JEPA 1 table, its clip size."""
  from jepa_jax import config_files
  encoder_key = next((m for m in ("target_encoder", "encoder") if module_dict(ckpt, m) is not None), None)
  if encoder_key is None:
    return []
  sd = module_dict(ckpt, encoder_key)
  dims = encoder_dims(sd)
  if dims is None:
    return []
  rope = looks_vjepa2(ckpt)
  names = v2_zoo_name(zoo_names(dims)) if rope else [n for n in zoo_names(dims) if n != "vit_giant_xformers"]
  grid = None if rope or "pos_embed" not in sd else sincos_grid(sd["pos_embed"], dims)
  fits = []
  for name in config_files.shipped_names():
    if name.startswith("eval/") or name in ("default", "demo") or name.endswith("/demo"):
      continue
    config = config_files.load(name)
    m = config.model
    if config.get("mode", "pretrain") != "pretrain" or m.name not in names:
      continue
    if m.get("pos_embed", "sincos") != ("rope" if rope else "sincos"):
      continue
    if grid is not None and (m.num_frames, m.crop_size) != grid[:2]:
      continue
    fits.append(f"configs/{name}.py")
  return fits


def describe_with_fits(ckpt: Mapping[str, Any]) -> str:
  """describe() followed by the shipped configs that fit, for error messages."""
  fits = fitting_configs(ckpt)
  return describe(ckpt) + (f". Configs that fit it: {', '.join(fits)}" if fits else
                           ". No shipped config fits it: set config.model (name or embed_dim / depth / num_heads, "
                           "pos_embed, num_mask_tokens) to its model")
