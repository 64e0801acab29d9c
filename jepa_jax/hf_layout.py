"""Official V-JEPA 2 state_dict keys <-> the Hugging Face transformers layout (docs/reference.md §9.7).

The facebook/vjepa2-* checkpoints (safetensors, read by transformers' VJEPA2Model) hold the same tensors as the
official files under other names: the fused qkv Linear is split into query / key / value (probe: q_proj / k_proj /
v_proj, and kv into k_proj / v_proj), blocks are renamed, the mask tokens are one stacked [n, 1, 1, D] tensor.
LAYOUT below is the whole rule, read in both directions by to_hf and from_hf; names were checked against
transformers' models/vjepa2/modeling_vjepa2.py and convert_vjepa2_to_hf.py.

Official keys here carry no prefix: strip 'module.backbone.' (encoder, target_encoder, predictor) or 'module.'
(probe classifiers[i]) first. Encoder, predictor and probe keys may be mixed in one dict (they never collide);
Hugging Face keys of a VJEPA2Model have no prefix, those inside VJEPA2ForVideoClassification put 'vjepa2.' before
the encoder and predictor (base_prefix).

Not in the table, and refused by name: the stale absolute 'pos_embed' / 'predictor_pos_embed' that released
V-JEPA 2 files may carry although the model uses RoPE (the official hub loader loads them with strict=False and
the Hugging Face model has no such parameter). Drop them before converting.

Numerics that differ although the keys map (the table moves tensors, it does not make the models equal):
transformers' pooler LayerNorms use eps 1e-6 where the official probe uses 1e-5, and its RoPE always splits token
indices with the square crop_size // patch_size grid, where the official encoder uses the clip's real patch counts.
"""
import re
from typing import Any, Mapping

# How a tensor moves: COPY a module's weight and bias; SPLIT a fused Linear's output rows into equal parts
# (weight [parts * D, D_in] and bias [parts * D]); PARAM a bare parameter; STACK bare parameters {i} into one
# tensor with a new leading axis.
COPY, SPLIT, PARAM, STACK = "copy", "split", "param", "stack"

# (official key or module, Hugging Face key(s) or module(s), how). {i} is a block or token index.
LAYOUT = (
    # Encoder: official checkpoint['encoder'] / ['target_encoder']; transformers VJEPA2Model.encoder.
    ("patch_embed.proj", "encoder.embeddings.patch_embeddings.proj", COPY),
    ("blocks.{i}.norm1", "encoder.layer.{i}.norm1", COPY),
    ("blocks.{i}.attn.qkv", ("encoder.layer.{i}.attention.query", "encoder.layer.{i}.attention.key",
                             "encoder.layer.{i}.attention.value"), SPLIT),
    ("blocks.{i}.attn.proj", "encoder.layer.{i}.attention.proj", COPY),
    ("blocks.{i}.norm2", "encoder.layer.{i}.norm2", COPY),
    ("blocks.{i}.mlp.fc1", "encoder.layer.{i}.mlp.fc1", COPY),
    ("blocks.{i}.mlp.fc2", "encoder.layer.{i}.mlp.fc2", COPY),
    ("norm", "encoder.layernorm", COPY),
    # Predictor: official checkpoint['predictor']; transformers VJEPA2Model.predictor.
    ("predictor_embed", "predictor.embeddings.predictor_embeddings", COPY),
    ("mask_tokens.{i}", "predictor.embeddings.mask_tokens", STACK),  # n x [1, 1, D] <-> [n, 1, 1, D]
    ("predictor_blocks.{i}.norm1", "predictor.layer.{i}.norm1", COPY),
    ("predictor_blocks.{i}.attn.qkv", ("predictor.layer.{i}.attention.query", "predictor.layer.{i}.attention.key",
                                       "predictor.layer.{i}.attention.value"), SPLIT),
    ("predictor_blocks.{i}.attn.proj", "predictor.layer.{i}.attention.proj", COPY),
    ("predictor_blocks.{i}.norm2", "predictor.layer.{i}.norm2", COPY),
    ("predictor_blocks.{i}.mlp.fc1", "predictor.layer.{i}.mlp.fc1", COPY),
    ("predictor_blocks.{i}.mlp.fc2", "predictor.layer.{i}.mlp.fc2", COPY),
    ("predictor_norm", "predictor.layernorm", COPY),
    ("predictor_proj", "predictor.proj", COPY),
    # Probe: official checkpoint['classifiers'][k]; transformers VJEPA2ForVideoClassification.{pooler,classifier}.
    ("pooler.query_tokens", "pooler.query_tokens", PARAM),
    ("pooler.blocks.{i}.norm1", "pooler.self_attention_layers.{i}.layer_norm1", COPY),
    ("pooler.blocks.{i}.attn.qkv", ("pooler.self_attention_layers.{i}.self_attn.q_proj",
                                    "pooler.self_attention_layers.{i}.self_attn.k_proj",
                                    "pooler.self_attention_layers.{i}.self_attn.v_proj"), SPLIT),
    ("pooler.blocks.{i}.attn.proj", "pooler.self_attention_layers.{i}.self_attn.out_proj", COPY),
    ("pooler.blocks.{i}.norm2", "pooler.self_attention_layers.{i}.layer_norm2", COPY),
    ("pooler.blocks.{i}.mlp.fc1", "pooler.self_attention_layers.{i}.mlp.fc1", COPY),
    ("pooler.blocks.{i}.mlp.fc2", "pooler.self_attention_layers.{i}.mlp.fc2", COPY),
    ("pooler.cross_attention_block.norm1", "pooler.cross_attention_layer.layer_norm1", COPY),
    ("pooler.cross_attention_block.xattn.q", "pooler.cross_attention_layer.cross_attn.q_proj", COPY),
    ("pooler.cross_attention_block.xattn.kv", ("pooler.cross_attention_layer.cross_attn.k_proj",
                                               "pooler.cross_attention_layer.cross_attn.v_proj"), SPLIT),
    ("pooler.cross_attention_block.norm2", "pooler.cross_attention_layer.layer_norm2", COPY),
    ("pooler.cross_attention_block.mlp.fc1", "pooler.cross_attention_layer.mlp.fc1", COPY),
    ("pooler.cross_attention_block.mlp.fc2", "pooler.cross_attention_layer.mlp.fc2", COPY),
    ("linear", "classifier", COPY),
)

STALE_KEYS = ("pos_embed", "predictor_pos_embed")
# The parts of a VJEPA2ForVideoClassification that sit under its base model ('vjepa2.').
_BASE_MODEL_PARTS = ("encoder.", "predictor.")


def _pattern(template: str, leaf: bool) -> re.Pattern:
  body = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
  return re.compile("^" + body + (r"\.(?P<leaf>weight|bias)$" if leaf else "$"))


def _fill(template: str, index: str | None, leaf: str | None) -> str:
  key = template.replace("{i}", index) if index is not None else template
  return f"{key}.{leaf}" if leaf else key


def _rows(direction: str):
  """(pattern over the source keys, row) for every source name of every row."""
  for official, hf, how in LAYOUT:
    leaf = how in (COPY, SPLIT)
    if direction == "to_hf":
      yield _pattern(official, leaf), (official, hf, how)
    else:
      for j, name in enumerate((hf,) if isinstance(hf, str) else hf):
        if how == STACK:
          yield re.compile("^" + re.escape(name) + "$"), (official, hf, how)
        else:
          yield _pattern(name, leaf), (official, hf, how, j)


def _concat(parts):
  if hasattr(parts[0], "detach"):  # torch tensors stay torch tensors
    import torch  # pylint: disable=import-outside-toplevel
    return torch.cat(list(parts), dim=0)
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.concatenate([np.asarray(p) for p in parts], axis=0)


def _stack(parts):
  if hasattr(parts[0], "detach"):
    import torch  # pylint: disable=import-outside-toplevel
    return torch.stack(list(parts), dim=0)
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.stack([np.asarray(p) for p in parts], axis=0)


def _refuse(unknown: list[str], side: str):
  stale = [k for k in unknown if k in STALE_KEYS]
  if stale:
    raise ValueError(f"{stale}: the stale absolute position table that V-JEPA 2 files may carry although the model "
                     f"uses RoPE; it has no Hugging Face counterpart (the official hub loader skips it). Drop it "
                     f"before converting.")
  raise ValueError(f"{len(unknown)} {side} key(s) are not in jepa_jax.hf_layout.LAYOUT: {sorted(unknown)[:8]}; "
                   f"strip the 'module.backbone.' / 'module.' prefix of official files first.")


def to_hf(state_dict: Mapping[str, Any], base_prefix: str = "") -> dict:
  """Official V-JEPA 2 keys (no prefix) -> Hugging Face keys; values are split or stacked, never copied twice.

  base_prefix: '' for a VJEPA2Model file; 'vjepa2.' to place encoder and predictor inside a
  VJEPA2ForVideoClassification (its pooler and classifier keys take no prefix).
  """
  rows = list(_rows("to_hf"))
  out, stacks, unknown = {}, {}, []
  for key, value in state_dict.items():
    for pattern, (_, hf, how) in rows:
      m = pattern.match(key)
      if m is None:
        continue
      index, leaf = m.groupdict().get("i"), m.groupdict().get("leaf")
      if how == SPLIT:
        size, rest = divmod(value.shape[0], len(hf))
        if rest:
          raise ValueError(f"{key}: {value.shape[0]} rows do not split into {len(hf)} equal parts")
        for j, name in enumerate(hf):
          out[_fill(name, index, leaf)] = value[j * size:(j + 1) * size]
      elif how == STACK:
        stacks.setdefault(hf, {})[int(index)] = value
      else:
        out[_fill(hf, index, leaf)] = value
      break
    else:
      unknown.append(key)
  if unknown:
    _refuse(unknown, "official")
  for hf, tokens in stacks.items():
    if sorted(tokens) != list(range(len(tokens))):
      raise ValueError(f"{hf}: token indices {sorted(tokens)} are not 0..{len(tokens) - 1}")
    out[hf] = _stack([tokens[i] for i in range(len(tokens))])
  return {(base_prefix + k if k.startswith(_BASE_MODEL_PARTS) else k): v for k, v in out.items()}


def from_hf(state_dict: Mapping[str, Any], base_prefix: str = "") -> dict:
  """Hugging Face keys -> official V-JEPA 2 keys (no prefix): query/key/value concatenated back into qkv (rows in
  that order), mask tokens unstacked into mask_tokens.{i} of shape [1, 1, D]."""
  rows = list(_rows("from_hf"))
  out, parts, unknown = {}, {}, []
  for key, value in state_dict.items():
    if base_prefix and key.startswith(base_prefix):
      key = key[len(base_prefix):]
    for pattern, row in rows:
      m = pattern.match(key)
      if m is None:
        continue
      official, hf, how = row[:3]
      index, leaf = m.groupdict().get("i"), m.groupdict().get("leaf")
      if how == SPLIT:
        parts.setdefault(_fill(official, index, leaf), {})[row[3]] = (value, len(hf))
      elif how == STACK:
        for i in range(value.shape[0]):
          out[_fill(official, str(i), None)] = value[i]
      else:
        out[_fill(official, index, leaf)] = value
      break
    else:
      unknown.append(key)
  if unknown:
    _refuse(unknown, "Hugging Face")
  for official, pieces in parts.items():
    n = next(iter(pieces.values()))[1]
    if sorted(pieces) != list(range(n)):
      raise ValueError(f"{official}: only {len(pieces)} of its {n} split parts are present")
    out[official] = _concat([pieces[j][0] for j in range(n)])
  return out
