"""config.model.remat = 'auto': the fastest plan that fits, per chip, from the ahead-of-time TPU compiles.

Which remat is fastest-that-fits depends on the chip's HBM and the per-chip batch: without remat a step runs about a
quarter fewer FLOPs than with full remat, but keeps every layer's activations. bench/memory_plan.py compiles each
plan for the real chip (peak memory, the compiler's step-time estimate; docs/performance.md, "Memory plan"); the
rows below are its results for the default kernel on TPU (splash attention, the auto packing). 'auto' is resolved
once at startup, from jax.devices()[0].device_kind and the per-chip batch, and logged. Where there is no row (another
chip, model, kernel, or a larger batch than was compiled), 'full': it fits every plan compiled, at the highest cost.
"""
from __future__ import annotations

from absl import logging

FALLBACK = "full"

# device_kind substring (lower case) -> chip; the first match wins ("tpu v5 lite" before "tpu v5").
CHIPS = (("v6 lite", "v6e"), ("v5 lite", "v5e"), ("v5p", "v5p"), ("tpu v5", "v5p"), ("v4", "v4"))

# (model name, crop_size, num_frames, chip) -> ((largest per-chip batch compiled, remat), ...), by batch.
# A row covers every per-chip batch up to its own: activations only shrink with the batch. Compiled with FSDP over
# the slice (v5p-8: 4 chips), the configs' mesh; pure data parallelism would add the unsharded state (ViT-L ~5 GB,
# ViT-H ~10 GB per chip).
REMAT_PLANS: dict[tuple[str, int, int, str], tuple[tuple[int, str], ...]] = {
    # v5p (95.74 GiB), 24 clips: no remat peaks at 41.14 GiB with sequence-minor splash blocks (49.56 head-minor;
    # full remat: 10.43 GiB, ~1/3 more FLOPs).
    ("vit_large", 224, 16, "v5p"): ((24, "none"),),
    # v5p, 24 clips: no remat peaks at 54.66 GiB (63.00 head-minor).
    ("vit_huge", 224, 16, "v5p"): ((24, "none"),),
    # v6e (31.25 GiB), FSDP 8, 24 clips: no remat needs 49.1 GiB; dots peaks at 13.91 GiB. dots keeps the linear
    # layers' outputs and recomputes the rest (elementwise ops and the attention kernel), fewer FLOPs than full.
    # libtpu gives no step-time estimate on v6e (negative optimal_seconds), so this pick rests on the FLOPs.
    ("vit_large", 224, 16, "v6e"): ((24, "dots"),),
    # v6e, FSDP 8, 24 clips: no remat needs 62.5 GiB; dots peaks at 18.18 GiB.
    ("vit_huge", 224, 16, "v6e"): ((24, "dots"),),
    # ViT-H/16 at 384 px (4,608 tokens per clip), v5p FSDP 4, 10 clips (the official per-GPU batch): no remat peaks
    # at 77.34 GiB of 95.74 (88.48 head-minor; full remat: 30.70 GiB).
    ("vit_huge", 384, 16, "v5p"): ((10, "none"),),
    # V-JEPA 2 (configs/vjepa2/; RoPE, its predictor: the same widths and depths as V-JEPA 1's, so the rows hold for
    # either). ViT-g/16, 16 x 256 px, v5p FSDP 4, 24 clips: no remat needed 102.2 GiB with head-minor splash blocks and
    # peaks at 91.31 GiB sequence-minor, too close to 95.74 for a plan never run on a chip; dots 31.01 GiB; full 12.28.
    ("vit_giant_xformers", 256, 16, "v5p"): ((24, "dots"),),
    # v6e, FSDP 8, 24 clips: dots peaks at 29.11 GiB of 31.25; full 10.63.
    ("vit_giant_xformers", 256, 16, "v6e"): ((24, "dots"),),
    # The 64-frame cooldown (8,192 tokens per clip), ViT-L/16 at 12 clips per v5p chip (the official per-GPU batch):
    # no remat needs 130.5 GiB; dots 37.57 GiB (FSDP 4, as the config).
    ("vit_large", 256, 64, "v5p"): ((12, "dots"),),
    # ViT-g/16 cooldown at 6 clips per v5p chip, FSDP 4: no remat needs 122.5 GiB; dots 36.29 GiB; full 13.63.
    ("vit_giant_xformers", 256, 64, "v5p"): ((6, "dots"),),
}


def chip_of(device_kind: str) -> str | None:
  """'TPU v5' -> 'v5p', 'TPU v6 lite' -> 'v6e'; None for chips without plans (GPUs, CPUs)."""
  kind = device_kind.lower()
  for pattern, chip in CHIPS:
    if pattern in kind:
      return chip
  return None


def lookup(model_name: str, crop_size: int, num_frames: int, device_kind: str, per_chip_batch: int,
           kernel: str = "splash") -> tuple[str, str]:
  """(remat, why): the table's plan for this model, chip and per-chip batch, or FALLBACK with the reason."""
  chip = chip_of(device_kind)
  if kernel != "splash":
    return FALLBACK, f"the plans are for splash attention, this run uses {kernel!r}"
  rows = REMAT_PLANS.get((model_name, crop_size, num_frames, chip), ())
  for batch, remat in sorted(rows):
    if per_chip_batch <= batch:
      return remat, f"plan for {model_name} {num_frames}x{crop_size}px on {chip}, up to {batch} clips per chip"
  if rows:
    return FALLBACK, f"{per_chip_batch} clips per chip is more than the plans compiled ({max(rows)[0]})"
  return FALLBACK, f"no plan for {model_name} {num_frames}x{crop_size}px on {device_kind!r}"


def resolve(model, device_kind: str, per_chip_batch: int, kernel: str) -> str:
  """config.model.remat, with 'auto' replaced (in place) by the plan; logs the choice."""
  if model.remat != "auto":
    return model.remat
  remat, why = lookup(model.name, model.crop_size, model.num_frames, device_kind, per_chip_batch, kernel)
  logging.info("config.model.remat='auto' -> %r (%s).", remat, why)
  model.remat = remat
  return remat
