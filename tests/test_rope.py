"""3-D RoPE (jepa_jax/models/rope.py) against the official computation (tests/torch_reference_v2.py).

Inputs are seeded random draws; the relative error (max |ours - torch| / max |torch|) is printed (pytest -s).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jepa_jax.models import rope
from tests import torch_reference_v2 as ref
from tests.torch_reference import rel_error

TOL = 1e-5
torch.set_num_threads(1)

# (head_dim, heads): ViT-L / ViT-g heads (64), ViT-H heads (80), the predictor's 384 / 12 heads (32).
HEAD_DIMS = [(64, 2), (80, 2), (32, 3)]
# (T', H', W'): square, non-square landscape, non-square portrait.
GRIDS = [(4, 6, 6), (3, 4, 7), (2, 9, 5)]


def _torch_rotate(x_bnhd: np.ndarray, ids: np.ndarray, grid, square: bool) -> np.ndarray:
  """The official RoPEAttention rotation of x [B, N, heads, hd] at flat indices ids [B, N]."""
  b, n, heads, hd = x_bnhd.shape
  att = ref.RoPEAttention(hd * heads, heads, grid_size=grid[1])
  x = torch.from_numpy(np.ascontiguousarray(x_bnhd.transpose(0, 2, 1, 3)))  # [B, heads, N, hd]
  ids_t = torch.from_numpy(ids.astype(np.int64)).unsqueeze(1).repeat(1, heads, 1)
  hw = (None, None) if square else (grid[1], grid[2])
  with torch.no_grad():
    out = att.rotate(x, att.separate_positions(ids_t, *hw))
  return out.numpy().transpose(0, 2, 1, 3)


def _inputs(seed, b, n, heads, hd, grid, keep=None):
  rng = np.random.default_rng(seed)
  total = int(np.prod(grid))
  x = rng.normal(size=(b, n if keep is None else keep, heads, hd)).astype(np.float32)
  if keep is None:
    ids = np.tile(np.arange(total), (b, 1))
  else:  # a different sorted subset per sample, as the official masks
    ids = np.stack([np.sort(rng.permutation(total)[:keep]) for _ in range(b)])
  return x, ids.astype(np.int32)


@pytest.mark.parametrize("head_dim,heads", HEAD_DIMS)
@pytest.mark.parametrize("grid", GRIDS)
def test_full_grid_matches_official(head_dim, heads, grid):
  n = int(np.prod(grid))
  x, ids = _inputs(1, 2, n, heads, head_dim, grid)
  ours = np.asarray(jax.jit(rope.apply_rope, static_argnums=2)(x, ids, grid))
  err = rel_error(ours, _torch_rotate(x, ids, grid, square=False))
  print(f"rope hd={head_dim} grid={grid} full: rel err {err:.2e}")
  assert err <= TOL


@pytest.mark.parametrize("head_dim,heads", HEAD_DIMS)
@pytest.mark.parametrize("grid", GRIDS)
def test_masked_subset_matches_official(head_dim, heads, grid):
  keep = int(np.prod(grid)) // 3
  x, ids = _inputs(2, 3, None, heads, head_dim, grid, keep=keep)
  ours = np.asarray(rope.apply_rope(x, ids, grid))
  err = rel_error(ours, _torch_rotate(x, ids, grid, square=False))
  print(f"rope hd={head_dim} grid={grid} masked {keep}: rel err {err:.2e}")
  assert err <= TOL


@pytest.mark.parametrize("grid", [(8, 16, 16), (32, 24, 24)])  # pretraining 256 px; cooldown 64 frames, 384 px
def test_predictor_square_grid_matches_official_grid_size_path(grid):
  # The official predictor passes no patch counts: positions come from its square grid_size.
  x, ids = _inputs(3, 2, None, 12, 32, grid, keep=700)
  err = rel_error(np.asarray(rope.apply_rope(x, ids, grid)), _torch_rotate(x, ids, grid, square=True))
  print(f"rope predictor grid={grid}: rel err {err:.2e}")
  assert err <= TOL


def test_grid_positions_of_a_non_square_grid():
  grid = (3, 4, 7)  # 28 tokens per frame, 7 per row
  t, h, w = rope.grid_positions(jnp.array([0, 6, 7, 27, 28, 2 * 28 + 3 * 7 + 5]), grid)
  np.testing.assert_array_equal(t, [0, 0, 0, 0, 1, 2])
  np.testing.assert_array_equal(h, [0, 0, 1, 3, 0, 3])
  np.testing.assert_array_equal(w, [0, 6, 0, 6, 0, 5])


def test_chunk_widths_of_the_official_heads():
  assert [rope.chunk_dim(d) for d in (64, 80, 32, 88)] == [20, 26, 10, 28]
  with pytest.raises(ValueError, match="too small"):
    rope.rope_tables(jnp.arange(4), (1, 2, 2), 5)


def test_duplicated_frequency_quirk_on_one_chunk():
  """head_dim 12: chunks of 4 with omega = (1, 1/100), tiled (1, 1/100, 1, 1/100) over channels 0..3.

  A token at frame p (row 0, column 0): channel 1 of pair (0, 1) turns with omega 1/100, not with pair 0's 1.
  """
  p = 3.0
  grid = (5, 1, 1)  # one token per frame, so flat index = frame
  x = np.zeros((1, 1, 1, 12), np.float32)
  x[..., 0] = 1.0  # only x0 is set
  out = np.asarray(rope.apply_rope(x, jnp.array([[3]]), grid))[0, 0, 0]
  # out0 = x0 cos(p * 1), out1 = x0 sin(p * omega_1) with omega_1 = 1/100 (the tiled layout), not sin(p * 1).
  np.testing.assert_allclose(out[:2], [np.cos(p), np.sin(p / 100.0)], rtol=1e-6)
  np.testing.assert_array_equal(out[2:], 0.0)


def test_not_the_interleaved_layout():
  """The layout PR #15 would switch to (repeat_interleave: pair k gets frequency k) gives other numbers."""
  grid = (4, 6, 6)
  x, ids = _inputs(4, 1, 144, 2, 64, grid)
  ours = np.asarray(rope.apply_rope(x, ids, grid))
  width = rope.chunk_dim(64)
  omega = 1.0 / 10000 ** (np.arange(width // 2) / (width / 2))
  parts = []
  for c, pos in enumerate(rope.grid_positions(ids, grid)):
    ang = np.repeat(np.asarray(pos, np.float64)[..., None] * omega, 2, axis=-1)[..., None, :]
    chunk = x[..., c * width:(c + 1) * width].astype(np.float64)
    partner = np.stack([-chunk[..., 1::2], chunk[..., 0::2]], axis=-1).reshape(chunk.shape)
    parts.append(chunk * np.cos(ang) + partner * np.sin(ang))
  interleaved = np.concatenate(parts + [x[..., 3 * width:]], axis=-1)
  assert rel_error(ours, interleaved) > 0.1


def test_remainder_channels_pass_unchanged():
  grid = (2, 3, 5)
  x, ids = _inputs(5, 2, 30, 4, 80, grid)
  ours = np.asarray(rope.apply_rope(x, ids, grid))
  np.testing.assert_array_equal(ours[..., 78:], x[..., 78:])
  assert not np.allclose(ours[..., :78], x[..., :78])


def test_shared_indices_broadcast_over_the_batch():
  grid = (2, 4, 4)
  x, ids = _inputs(6, 3, 32, 2, 64, grid)
  np.testing.assert_array_equal(np.asarray(rope.apply_rope(x, ids[0], grid)),
                                np.asarray(rope.apply_rope(x, ids, grid)))


def test_tables_once_equal_per_call_rotation():
  grid = (3, 4, 7)
  x, ids = _inputs(7, 2, None, 2, 64, grid, keep=40)
  tables = rope.rope_tables(ids, grid, 64)
  assert tables.cos.shape == (2, 40, 1, 60) and tables.cos.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(rope.apply_rope_tables(x, tables)),
                                np.asarray(rope.apply_rope(x, ids, grid)))


def test_bfloat16_input_keeps_its_dtype_and_stays_close():
  grid = (4, 6, 6)
  x, ids = _inputs(8, 2, 144, 2, 64, grid)
  out = rope.apply_rope(jnp.asarray(x, jnp.bfloat16), ids, grid)
  assert out.dtype == jnp.bfloat16
  assert rel_error(np.asarray(out, np.float32), _torch_rotate(x, ids, grid, square=False)) < 1e-2


# ---------------------------------------------------------------------------------------------- in an attention

def _jax_rope_attention(att: "ref.RoPEAttention", x, ids, grid):
  """Our API in the layout of layers.Attention: qkv -> [B, N, heads, hd], RoPE on q and k, dot_product_attention."""
  w_qkv, b_qkv = (jnp.asarray(t.detach().numpy()) for t in (att.qkv.weight, att.qkv.bias))
  w_proj, b_proj = (jnp.asarray(t.detach().numpy()) for t in (att.proj.weight, att.proj.bias))
  b, n, d = x.shape
  qkv = (x @ w_qkv.T + b_qkv).reshape(b, n, 3, att.num_heads, d // att.num_heads)
  tables = rope.rope_tables(ids, grid, d // att.num_heads)
  q, k = rope.apply_rope_tables(qkv[:, :, 0], tables), rope.apply_rope_tables(qkv[:, :, 1], tables)
  out = jax.nn.dot_product_attention(q, k, qkv[:, :, 2])
  return out.reshape(b, n, d) @ w_proj.T + b_proj


@pytest.mark.parametrize("masked", [False, True])
def test_rope_attention_matches_official_on_a_non_square_clip(masked):
  torch.manual_seed(0)
  grid, heads, hd = (2, 3, 5), 2, 64
  att = ref.RoPEAttention(heads * hd, heads, grid_size=3)  # grid_size deliberately wrong: H/W patches are passed
  rng = np.random.default_rng(9)
  total = int(np.prod(grid))
  ids = (np.stack([np.sort(rng.permutation(total)[:17]) for _ in range(2)]) if masked
         else np.tile(np.arange(total), (2, 1))).astype(np.int64)
  x = rng.normal(size=(2, ids.shape[1], heads * hd)).astype(np.float32)
  with torch.no_grad():
    theirs = att(torch.from_numpy(x), mask=torch.from_numpy(ids) if masked else None, T=grid[0],
                 H_patches=grid[1], W_patches=grid[2]).numpy()
  ours = np.asarray(jax.jit(lambda a, i: _jax_rope_attention(att, a, i, grid))(x, ids.astype(np.int32)))
  err = rel_error(ours, theirs)
  print(f"rope attention masked={masked}: rel err {err:.2e}")
  assert err <= TOL
