"""jepa_jax.hf_layout: official V-JEPA 2 keys <-> Hugging Face transformers keys, on the torch oracle's state dicts.

The expected Hugging Face names are those of transformers' VJEPA2Model / VJEPA2ForVideoClassification state_dict
(models/vjepa2/modeling_vjepa2.py); transformers itself is not a dependency of this project.
"""
import numpy as np
import pytest
import torch

from jepa_jax import hf_layout
from tests import torch_reference_v2 as ref

D, P, HEADS, DEPTH, PDEPTH, TOKENS, CLASSES = 64, 48, 4, 2, 2, 10, 7


@pytest.fixture(scope="module")
def official():
  """encoder + predictor + 4-block probe of the torch oracle, one dict, official keys without prefix."""
  torch.manual_seed(0)
  enc = ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=D, depth=DEPTH, num_heads=HEADS)
  pred = ref.TorchPredictorV2(img_size=64, num_frames=4, embed_dim=D, predictor_embed_dim=P, depth=PDEPTH,
                              num_heads=HEADS, num_mask_tokens=TOKENS, zero_init_mask_tokens=False)
  probe = ref.AttentiveClassifierV2(D, HEADS, CLASSES, depth=4)
  return {k: v.detach().clone() for m in (enc, pred, probe) for k, v in m.state_dict().items()}


def _hf_keys(base=""):
  """The state_dict keys of transformers' VJEPA2ForVideoClassification for these sizes."""
  wb = lambda m: [f"{m}.weight", f"{m}.bias"]
  layer = lambda p: [k for m in ("norm1", "attention.query", "attention.key", "attention.value", "attention.proj",
                                 "norm2", "mlp.fc1", "mlp.fc2") for k in wb(f"{p}.{m}")]
  keys = wb(f"{base}encoder.embeddings.patch_embeddings.proj") + wb(f"{base}encoder.layernorm")
  keys += [k for i in range(DEPTH) for k in layer(f"{base}encoder.layer.{i}")]
  keys += [f"{base}predictor.embeddings.mask_tokens"] + wb(f"{base}predictor.embeddings.predictor_embeddings")
  keys += [k for i in range(PDEPTH) for k in layer(f"{base}predictor.layer.{i}")]
  keys += wb(f"{base}predictor.layernorm") + wb(f"{base}predictor.proj")
  keys += ["pooler.query_tokens"] + wb("classifier")
  for i in range(3):
    keys += [k for m in ("layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.out_proj", "layer_norm2", "mlp.fc1", "mlp.fc2")
             for k in wb(f"pooler.self_attention_layers.{i}.{m}")]
  keys += [k for m in ("layer_norm1", "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "layer_norm2",
                       "mlp.fc1", "mlp.fc2") for k in wb(f"pooler.cross_attention_layer.{m}")]
  return keys


@pytest.mark.parametrize("base", ["", "vjepa2."])
def test_every_key_maps_to_the_transformers_names_and_back_exactly(official, base):
  hf = hf_layout.to_hf(official, base_prefix=base)
  assert sorted(hf) == sorted(_hf_keys(base))
  back = hf_layout.from_hf(hf, base_prefix=base)
  assert sorted(back) == sorted(official)
  for k, v in official.items():
    assert back[k].shape == v.shape and torch.equal(back[k], v), k


def test_split_and_stacked_values(official):
  hf = hf_layout.to_hf(official)
  qkv_w, qkv_b = official["blocks.1.attn.qkv.weight"], official["blocks.1.attn.qkv.bias"]
  for j, name in enumerate(("query", "key", "value")):
    assert torch.equal(hf[f"encoder.layer.1.attention.{name}.weight"], qkv_w[j * D:(j + 1) * D])
    assert torch.equal(hf[f"encoder.layer.1.attention.{name}.bias"], qkv_b[j * D:(j + 1) * D])
  assert hf["predictor.layer.0.attention.query.weight"].shape == (P, P)
  kv = official["pooler.cross_attention_block.xattn.kv.weight"]
  assert torch.equal(hf["pooler.cross_attention_layer.cross_attn.k_proj.weight"], kv[:D])
  assert torch.equal(hf["pooler.cross_attention_layer.cross_attn.v_proj.weight"], kv[D:])
  tokens = hf["predictor.embeddings.mask_tokens"]
  assert tokens.shape == (TOKENS, 1, 1, P)
  for i in range(TOKENS):
    assert torch.equal(tokens[i], official[f"mask_tokens.{i}"])
  assert torch.equal(hf["classifier.weight"], official["linear.weight"])


def test_numpy_values_round_trip(official):
  as_numpy = {k: v.numpy() for k, v in official.items()}
  back = hf_layout.from_hf(hf_layout.to_hf(as_numpy))
  assert all(isinstance(v, np.ndarray) and np.array_equal(v, as_numpy[k]) for k, v in back.items())


def test_stale_pos_embed_and_unknown_keys_are_refused_by_name(official):
  with pytest.raises(ValueError, match="stale absolute position table"):
    hf_layout.to_hf({**official, "pos_embed": torch.zeros(1, 32, D)})
  with pytest.raises(ValueError, match=rf"{len(official)} official key.*module\.backbone\.blocks\.0\.attn\.proj\.bias.*strip"):
    hf_layout.to_hf({f"module.backbone.{k}": v for k, v in official.items()})
  with pytest.raises(ValueError, match="encoder.layer.0.attention.qkv.weight"):
    hf_layout.from_hf({"encoder.layer.0.attention.qkv.weight": torch.zeros(3 * D, D)})


def test_incomplete_splits_and_token_gaps_are_refused(official):
  hf = hf_layout.to_hf(official)
  del hf["encoder.layer.0.attention.value.bias"]
  with pytest.raises(ValueError, match="blocks.0.attn.qkv.bias: only 2 of its 3"):
    hf_layout.from_hf(hf)
  gappy = {k: v for k, v in official.items() if k != "mask_tokens.3"}
  with pytest.raises(ValueError, match="token indices"):
    hf_layout.to_hf(gappy)
