"""Multiblock 3D masks: the official V-JEPA collator's algorithm with fixed token counts (docs/reference.md §3).

Per batch and mask generator, one block shape (t, h, w) is shared by every sample; each sample places
`num_blocks` blocks of that shape independently; the union of the blocks is the target set and its complement the
context. Indices are in the flattened (t, h, w) order, ascending, as the official `nonzero`/`argwhere` gives them.

The one deliberate deviation. The official collator truncates every sample to the batch minimum of its context and
target counts, so the token counts change from batch to batch and between generators. Under `jax.jit` every new
count is a new compile. We give each generator fixed counts instead (`num_context`, `num_target`): samples are
truncated to them the official way (lowest indices kept), and a sample with fewer tokens than a fixed count has its
block positions re-drawn (same block shape), which also covers the official re-draw of an empty context. The
default counts come from `derive_token_counts`: the mean over simulated batches of the official batch-minimum
counts for the configured per-device batch, so on average the model sees as many context and target tokens as the
official run. One compile per run is the point.

Randomness. The official code draws the block shape from a `torch.Generator` seeded by a shared per-batch counter
and the positions from the global torch RNG. We draw both from the one `np.random.Generator` passed in, which the
input pipeline (grain) seeds per batch, so masks are reproducible and resume exactly with the iterator state. The
distributions are the official ones; the streams are not (they cannot be: torch and numpy differ).
"""
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# A count is feasible for a block shape when at least this share of random placements meets it. The generator's
# re-draw loop then fails with negligible probability: (1 - 1.5%) ** _MAX_REDRAW_ROUNDS is about 1e-65.
_MIN_SUCCESS_RATE = 0.015
_FEASIBILITY_DRAWS = 512
_FEASIBILITY_MAX_SHAPES = 48
_MAX_REDRAW_ROUNDS = 10_000
_DERIVE_BATCHES = 1024


@dataclasses.dataclass(frozen=True)
class MaskGeneratorSpec:
  """One official mask generator (a `cfgs_mask` entry) plus our fixed token counts (0 = derive)."""
  num_blocks: int
  spatial_scale: tuple[float, float]
  temporal_scale: tuple[float, float]
  aspect_ratio: tuple[float, float]  # height / width, as in the official mask code (the crop uses width/height).
  max_temporal_keep: float
  num_context: int
  num_target: int


def token_grid(*, crop_size: int, num_frames: int, patch_size: int, tubelet_size: int) -> tuple[int, int, int]:
  """(T', H', W'): the token grid the encoder sees, which is the grid the blocks live on."""
  if crop_size % patch_size:
    raise ValueError(f"config.model.crop_size={crop_size} is not divisible by patch_size={patch_size}.")
  if num_frames % tubelet_size:
    raise ValueError(f"config.model.num_frames={num_frames} is not divisible by tubelet_size={tubelet_size}.")
  return num_frames // tubelet_size, crop_size // patch_size, crop_size // patch_size


# --------------------------------------------------------------------------------------------------------------
# The official algorithm, vectorised over samples (and batches).
# --------------------------------------------------------------------------------------------------------------

def _block_shape(spec: MaskGeneratorSpec, grid, u_t: float, u_s: float, u_ar: float) -> tuple[int, int, int]:
  """The official `_sample_block_size` from three uniforms, drawn in its order (temporal, spatial, aspect)."""
  duration, height, width = grid
  t = max(1, int(duration * (spec.temporal_scale[0] + u_t * (spec.temporal_scale[1] - spec.temporal_scale[0]))))
  k = int(height * width * (spec.spatial_scale[0] + u_s * (spec.spatial_scale[1] - spec.spatial_scale[0])))
  ar = spec.aspect_ratio[0] + u_ar * (spec.aspect_ratio[1] - spec.aspect_ratio[0])
  # Official quirk (docs/reference.md §3): Python's round (half to even), then clipped to the grid.
  h = min(int(round(math.sqrt(k * ar))), height)
  w = min(int(round(math.sqrt(k / ar))), width)
  return t, h, w


def _draw_shape(spec, grid, rng: np.random.Generator):
  u_t, u_s, u_ar = rng.random(3)
  return _block_shape(spec, grid, u_t, u_s, u_ar)


def _target_masks(shape, num_blocks, grid, max_temporal_keep, n, rng) -> np.ndarray:
  """Union of `num_blocks` randomly placed blocks of `shape` for n samples: bool [n, T'*H'*W'] (True = target).

  `shape` is one (t, h, w) or an int array [n, 3] (one shape per sample, for batched simulation).
  """
  duration, height, width = grid
  shape = np.broadcast_to(np.asarray(shape, np.int64), (n, 3))
  t, h, w = (shape[:, i, None] for i in range(3))  # [n, 1]
  # Positions: independent per sample and per block, uniform over every placement inside the grid (docs/reference.md §3
  # step 3).
  top = (rng.random((n, num_blocks)) * (height - h + 1)).astype(np.int64)
  left = (rng.random((n, num_blocks)) * (width - w + 1)).astype(np.int64)
  start = (rng.random((n, num_blocks)) * (duration - t + 1)).astype(np.int64)
  in_t = _span(start, t, duration)
  in_h = _span(top, h, height)
  in_w = _span(left, w, width)
  blocks = in_t[:, :, :, None, None] & in_h[:, :, None, :, None] & in_w[:, :, None, None, :]
  target = blocks.any(axis=1)
  # Official quirk (docs/reference.md §3 step 3): frames from max_context_duration on are zeroed in every block mask,
  # so they are never context and always count as targets.
  max_context_duration = max(1, int(duration * max_temporal_keep))
  target[:, max_context_duration:] = True
  return target.reshape(n, -1)


def _span(first, length, size):
  """bool [n, blocks, size]: positions first .. first + length - 1 on one axis."""
  pos = np.arange(size)
  return (pos >= first[..., None]) & (pos < (first + length)[..., None])


def _first_k(mask: np.ndarray, k: int) -> np.ndarray:
  """The k lowest True positions of each row, ascending, int32 [n, k]; every row must hold at least k."""
  keep = mask & (np.cumsum(mask, axis=1, dtype=np.int32) <= k)
  return np.nonzero(keep)[1].astype(np.int32).reshape(mask.shape[0], k)


# --------------------------------------------------------------------------------------------------------------
# Default counts and feasibility.
# --------------------------------------------------------------------------------------------------------------

def derive_token_counts(spec: MaskGeneratorSpec, grid: Sequence[int], per_device_batch: int,
                        seed: int = 0) -> tuple[int, int]:
  """(num_context, num_target) matching the official batch-minimum statistics for this per-device batch.

  Simulates the official collator (shared shape per batch, per-sample positions, empty-context re-draw, truncation
  to the batch minimum) for a fixed number of batches with a fixed seed, and returns the mean kept counts, rounded.
  Deterministic, so every process of a run derives the same counts.
  """
  grid = tuple(int(g) for g in grid)
  rng = np.random.default_rng(seed)
  n_batches, b = _DERIVE_BATCHES, per_device_batch
  # Block shapes from a Latin hypercube over the three uniforms rather than independent draws: the shape mix is
  # then close to exact, and the default tracks the official long-run mean instead of the luck of a few hundred
  # shape draws (the reference table's 200 batches over-represent easy shapes for the 2 x 0.7 generator).
  strata = (np.arange(n_batches)[:, None] + rng.random((n_batches, 3))) / n_batches
  uniforms = np.stack([rng.permutation(strata[:, j]) for j in range(3)], axis=1)
  shapes = np.array([_block_shape(spec, grid, *u) for u in uniforms])  # [n_batches, 3]
  shapes = np.repeat(shapes, b, axis=0)
  num_tokens = math.prod(grid)
  num_target = np.empty(n_batches * b, np.int64)
  chunk = max(1, (4 << 20) // (spec.num_blocks * num_tokens))  # ~4M booleans per step: fast and cache friendly.
  for lo in range(0, n_batches * b, chunk):
    hi = min(lo + chunk, n_batches * b)
    num_target[lo:hi] = _target_masks(shapes[lo:hi], spec.num_blocks, grid, spec.max_temporal_keep, hi - lo,
                                       rng).sum(axis=1)
    # The official `while empty_context` re-draw.
    for _ in range(_MAX_REDRAW_ROUNDS):
      empty = np.flatnonzero(num_target[lo:hi] == num_tokens) + lo
      if not empty.size:
        break
      num_target[empty] = _target_masks(shapes[empty], spec.num_blocks, grid, spec.max_temporal_keep, empty.size,
                                        rng).sum(axis=1)
    else:
      raise ValueError(f"Mask generator {spec} leaves no context in any placement: lower its spatial_scale or "
                       "num_blocks, or raise max_temporal_keep.")
  num_target = num_target.reshape(n_batches, b)
  num_context = num_tokens - num_target
  return int(round(num_context.min(axis=1).mean())), int(round(num_target.min(axis=1).mean()))


def _reachable_shapes(spec, grid) -> list[tuple[int, int, int]]:
  """The distinct block shapes the ranges can produce (a fine scan of each uniform; shapes are integer valued)."""
  u = np.linspace(0.0, 1.0, 65)
  t_values = sorted({_block_shape(spec, grid, ut, 0.0, 0.0)[0] for ut in u})
  hw = {_block_shape(spec, grid, 0.0, us, uar)[1:] for us in u for uar in np.linspace(0.0, 1.0, 257)}
  shapes = sorted((t, h, w) for t in t_values for (h, w) in hw)
  if len(shapes) > _FEASIBILITY_MAX_SHAPES:
    # Many shapes (wide scale ranges): check an even spread by volume, always including the largest (hardest for
    # the context) and the smallest (hardest for the target).
    shapes.sort(key=lambda s: (s[0] * s[1] * s[2], s))
    pick = np.unique(np.linspace(0, len(shapes) - 1, _FEASIBILITY_MAX_SHAPES).round().astype(int))
    shapes = [shapes[i] for i in pick]
  return shapes


def check_feasible(spec: MaskGeneratorSpec, grid: Sequence[int], index: int = 0, seed: int = 0) -> None:
  """Raises ValueError unless, for every reachable block shape, random placements often meet both counts.

  Fixed counts are met by re-drawing positions with the batch's block shape, so each shape the ranges can produce
  must reach `num_context` context and `num_target` target tokens in at least ~1.5% of placements (checked by a
  seeded simulation). The error names the count to lower and a value that works.
  """
  grid = tuple(int(g) for g in grid)
  num_tokens = math.prod(grid)
  where = f"config.mask (generator {index})"
  if spec.num_blocks < 1:
    raise ValueError(f"{where}: num_blocks[{index}]={spec.num_blocks} must be at least 1.")
  if spec.num_context < 1 or spec.num_target < 1:
    raise ValueError(f"{where}: num_context[{index}]={spec.num_context} and num_target[{index}]={spec.num_target} "
                     "must be positive (or 0 in the config to derive them).")
  if spec.num_context + spec.num_target > num_tokens:
    raise ValueError(f"{where}: num_context[{index}] + num_target[{index}] = {spec.num_context} + "
                     f"{spec.num_target} exceeds the {num_tokens} tokens of the {grid} grid; lower one of them.")
  rng = np.random.default_rng(seed)
  worst_context = worst_target = num_tokens
  bad = []
  for shape in _reachable_shapes(spec, grid):
    n_tgt = _target_masks(shape, spec.num_blocks, grid, spec.max_temporal_keep, _FEASIBILITY_DRAWS, rng).sum(1)
    n_ctx = num_tokens - n_tgt
    ok = (n_ctx >= spec.num_context) & (n_tgt >= spec.num_target)
    # The largest count each side still meets in _MIN_SUCCESS_RATE of placements, for the error message.
    q = 100.0 * (1.0 - _MIN_SUCCESS_RATE)
    worst_context = min(worst_context, int(np.percentile(n_ctx, q, method="lower")))
    worst_target = min(worst_target, int(np.percentile(n_tgt, q, method="lower")))
    if ok.mean() < _MIN_SUCCESS_RATE:
      bad.append((shape, ok.mean(), (n_ctx >= spec.num_context).mean(), (n_tgt >= spec.num_target).mean()))
  if bad:
    shape, rate, ctx_rate, tgt_rate = bad[0]
    lower = []
    if ctx_rate < 0.5 or spec.num_context > worst_context:
      lower.append(f"num_context[{index}] to at most {worst_context}")
    if tgt_rate < 0.5 or spec.num_target > worst_target:
      lower.append(f"num_target[{index}] to at most {worst_target}")
    advice = " and ".join(lower) or f"num_context[{index}] or num_target[{index}]"
    raise ValueError(
        f"{where}: counts num_context={spec.num_context}, num_target={spec.num_target} are not reachable by the "
        f"block geometry: with block shape (t, h, w)={shape} only {rate:.1%} of placements meet both (context "
        f"alone {ctx_rate:.1%}, targets alone {tgt_rate:.1%}; {_MIN_SUCCESS_RATE:.1%} needed). Lower {advice} (0 derives the official-statistics default).")


def _feasible_default(spec: MaskGeneratorSpec, grid, derived: tuple[bool, bool]) -> MaskGeneratorSpec:
  """Lowers derived counts by 10% steps until the block geometry reaches them.

  With a small per-device batch the official batch minimum is close to the per-sample mean, which the harder block
  shapes rarely reach; a fixed count there would re-draw nearly forever. Counts set in the config are never changed.
  """
  for _ in range(40):
    try:
      check_feasible(spec, grid)
      return spec
    except ValueError:
      spec = dataclasses.replace(
          spec, num_context=max(1, int(spec.num_context * 0.9)) if derived[0] else spec.num_context,
          num_target=max(1, int(spec.num_target * 0.9)) if derived[1] else spec.num_target)
  return spec


def mask_specs_from_config(config, per_device_batch: int) -> list[MaskGeneratorSpec]:
  """One spec per generator from config.mask, with 0 counts derived for this per-device batch, validated."""
  m, model = config.mask, config.model
  grid = token_grid(crop_size=model.crop_size, num_frames=model.num_frames, patch_size=model.patch_size,
                    tubelet_size=model.tubelet_size)
  fields = ("num_blocks", "spatial_scale", "temporal_scale", "aspect_ratio", "max_temporal_keep", "num_context",
            "num_target")
  lengths = {f: len(m[f]) for f in fields}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"config.mask fields need one entry per mask generator, got lengths {lengths}; give every "
                     "field the same number of entries.")
  if per_device_batch < 1:
    raise ValueError(f"per_device_batch={per_device_batch} must be at least 1.")
  specs = []
  for i in range(lengths["num_blocks"]):
    for f in ("spatial_scale", "temporal_scale", "aspect_ratio"):
      lo, hi = m[f][i]
      if not 0 < lo <= hi or (f != "aspect_ratio" and hi > 1):
        raise ValueError(f"config.mask.{f}[{i}]=({lo}, {hi}) must satisfy 0 < min <= max"
                         + ("." if f == "aspect_ratio" else " <= 1."))
    if not 0 < m.max_temporal_keep[i] <= 1:
      raise ValueError(f"config.mask.max_temporal_keep[{i}]={m.max_temporal_keep[i]} must be in (0, 1].")
    if m.num_context[i] < 0 or m.num_target[i] < 0:
      raise ValueError(f"config.mask.num_context[{i}]/num_target[{i}] must be >= 0 (0 derives the default).")
    spec = MaskGeneratorSpec(
        num_blocks=int(m.num_blocks[i]),
        spatial_scale=tuple(float(x) for x in m.spatial_scale[i]),
        temporal_scale=tuple(float(x) for x in m.temporal_scale[i]),
        aspect_ratio=tuple(float(x) for x in m.aspect_ratio[i]),
        max_temporal_keep=float(m.max_temporal_keep[i]),
        num_context=int(m.num_context[i]),
        num_target=int(m.num_target[i]))
    if spec.num_blocks < 1:
      raise ValueError(f"config.mask.num_blocks[{i}]={spec.num_blocks} must be at least 1.")
    if spec.num_context == 0 or spec.num_target == 0:
      num_context, num_target = derive_token_counts(spec, grid, per_device_batch)
      spec = _feasible_default(dataclasses.replace(spec, num_context=spec.num_context or num_context,
                                                   num_target=spec.num_target or num_target),
                               grid, derived=(m.num_context[i] == 0, m.num_target[i] == 0))
    check_feasible(spec, grid, index=i)
    specs.append(spec)
  return specs


# --------------------------------------------------------------------------------------------------------------
# The generator the input pipeline calls once per batch.
# --------------------------------------------------------------------------------------------------------------

class MultiBlockMaskGenerator:
  """Context and target indices for every mask generator, with fixed shapes (one compile per run)."""

  def __init__(self, specs: Sequence[MaskGeneratorSpec], *, crop_size: int, num_frames: int, patch_size: int,
               tubelet_size: int):
    self.specs = tuple(specs)
    self.grid = token_grid(crop_size=crop_size, num_frames=num_frames, patch_size=patch_size,
                           tubelet_size=tubelet_size)
    self.num_tokens = math.prod(self.grid)
    for i, spec in enumerate(self.specs):
      if spec.num_context < 1 or spec.num_target < 1 or spec.num_context + spec.num_target > self.num_tokens:
        raise ValueError(f"Mask generator {i} has counts num_context={spec.num_context}, "
                         f"num_target={spec.num_target}; they must be positive with a sum of at most "
                         f"{self.num_tokens}. Build specs with mask_specs_from_config to derive and check them.")

  def __call__(self, batch_size: int, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, ...]]:
    context_masks, target_masks = [], []
    for i, spec in enumerate(self.specs):
      target = self._sample(i, spec, batch_size, rng)
      context_masks.append(_first_k(~target, spec.num_context))
      # Official truncation (docs/reference.md §3 step 5): the lowest indices are kept, so late / bottom-right tokens
      # are dropped.
      target_masks.append(_first_k(target, spec.num_target))
    return {"context_masks": tuple(context_masks), "target_masks": tuple(target_masks)}

  def _sample(self, index, spec, batch_size, rng) -> np.ndarray:
    """bool [B, N] targets; samples short of a fixed count are re-drawn with the batch's block shape."""
    shape = _draw_shape(spec, self.grid, rng)  # one shape per batch (docs/reference.md §3 step 1)
    target = _target_masks(shape, spec.num_blocks, self.grid, spec.max_temporal_keep, batch_size, rng)
    for _ in range(_MAX_REDRAW_ROUNDS):
      num_target = target.sum(axis=1)
      short = np.flatnonzero((num_target < spec.num_target) | (self.num_tokens - num_target < spec.num_context))
      if not short.size:
        return target
      target[short] = _target_masks(shape, spec.num_blocks, self.grid, spec.max_temporal_keep, short.size, rng)
    raise ValueError(
        f"Mask generator {index}: no placement of {spec.num_blocks} blocks of shape (t, h, w)={shape} gave "
        f"num_context={spec.num_context} context and num_target={spec.num_target} target tokens in "
        f"{_MAX_REDRAW_ROUNDS} tries; the counts are infeasible. Lower config.mask.num_context[{index}] or "
        f"num_target[{index}] (0 derives them), or check them with mask_specs_from_config.")
