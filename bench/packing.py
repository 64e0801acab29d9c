"""One pass for both mask generators, measured three ways for each packing of the context encoder and the predictor:

1. analytic FLOPs of the step, plus what the packing wastes on padding (jepa_jax/flops.py: packing_waste_flops);
2. the step time on this machine (every variant compiled in one process, timed in alternating blocks, so load
   changes hit all alike);
3. the TPU compiler's own figures for a tiny ahead-of-time compile of each variant (libtpu, compile-only TPU
   devices): cost_analysis() FLOPs, bytes accessed and optimal_seconds. Layers are unrolled so every layer is
   counted, and attention is XLA's: a Pallas kernel is a custom call that cost_analysis counts as zero FLOPs.

  python bench/packing.py --config=configs/demo.py --batch=8                  # the demo step on the CPU
  python bench/packing.py --size=embed=384,depth=6,heads=6,crop=112,pred_embed=192 --batch=4
  python bench/packing.py --analytic-only --config=configs/vitl16.py --batch=24  # real sizes: analytic only

Variants are context/predictor packings ('none' is the official pass per generator; see
jepa_jax/models/packing.py). Prints one markdown table. Nothing here is asserted in tests.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")

# bench/train_step.py by path (bench/ is not a package; putting it on sys.path would shadow input_pipeline).
_spec = importlib.util.spec_from_file_location("bench_train_step", Path(__file__).resolve().parent / "train_step.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from input_pipeline import masks as masks_lib  # noqa: E402
from jepa_jax import compiled_step  # noqa: E402
from jepa_jax import flops  # noqa: E402
from jepa_jax.models import model_dims  # noqa: E402

VARIANTS = "none/none,sequence/batch,sequence/sequence,batch/batch,batch/sequence"
AOT_SIZE = "embed=128,depth=2,heads=4,crop=64,frames=8,pred_depth=2,pred_embed=64"


def _configure(args, context_packing: str, predictor_packing: str, *, per_device_batch: int, num_devices: int,
               size: str, mesh_shape, scan: bool | None):
  config = bench.load_config(args.config)
  bench.configure(config, per_device_batch=per_device_batch, num_devices=num_devices, dtype=args.dtype,
                  attention=args.attention, scan=scan, size=bench.parse_size(size), mesh_shape=mesh_shape)
  config.model.context_packing, config.model.predictor_packing = context_packing, predictor_packing
  return config


def analytic(config, per_device_batch: int, dense_attention: bool) -> dict:
  specs = masks_lib.mask_specs_from_config(config, per_device_batch)
  d = model_dims(config.model)
  num_context, num_target = tuple(s.num_context for s in specs), tuple(s.num_target for s in specs)
  model = bench.step_flops_per_device(config, specs, config.data.batch_size // per_device_batch)
  waste = flops.packing_waste_flops(
      embed_dim=d.embed_dim, depth=d.depth, mlp_hidden=d.mlp_hidden, pred_embed_dim=d.pred_embed_dim,
      pred_depth=d.pred_depth, pred_mlp_hidden=d.pred_mlp_hidden, num_context=num_context,
      num_target=num_target, batch=per_device_batch, context_packing=config.model.context_packing,
      predictor_packing=config.model.predictor_packing, dense_attention=dense_attention)
  # The context encoder embeds only the kept tokens, not all N once per generator (forward + weight gradient).
  saved = flops.context_embedding_saved_flops(embed_dim=d.embed_dim, num_tokens=d.num_tokens,
                                              patch_dim=d.patch_dim, num_context=num_context, batch=per_device_batch)
  return {"model_gflop": model / 1e9, "waste_gflop": waste["total"] / 1e9, "saved_gflop": saved / 1e9,
          "waste_context_gflop": waste["context"] / 1e9, "waste_predictor_gflop": waste["predictor"] / 1e9,
          "tokens": (num_context, num_target)}


def tpu_cost(args, variant) -> dict:
  """cost_analysis of a tiny unrolled XLA-attention step compiled for args.topology (libtpu)."""
  from jax.experimental import topologies
  from jax.sharding import AxisType, Mesh
  topology = topologies.get_topology_desc(platform="tpu", topology_name=args.topology, chip_config_name="default")
  devices = np.array(topology.devices)
  mesh = Mesh(devices.reshape(1, devices.size, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
  config = _configure(args, *variant, per_device_batch=args.aot_batch, num_devices=devices.size,
                      size=args.aot_size, mesh_shape=(1, devices.size, 1), scan=False)
  config.model.attention_impl, config.model.dtype = "xla", "bfloat16"
  compiled, _, _ = bench.compile_step(bench.build_step(config, mesh=mesh))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"tpu_gflop": cost["flops"] / 1e9, "tpu_gbytes": cost["bytes accessed"] / 1e9,
          "tpu_optimal_us": cost.get("optimal_seconds", float("nan")) * 1e6,
          "tpu_peak_mib": compiled_step.memory_figures(compiled)["peak"] / 2 ** 20}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--size", default="", help="model overrides as bench/train_step.py --size")
  p.add_argument("--batch", type=int, default=8, help="clips per device")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--attention", default=None, help="kernel for the timed step (default: the config's)")
  p.add_argument("--variants", default=VARIANTS, help="context/predictor packings, comma separated")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--analytic-only", action="store_true")
  p.add_argument("--topology", default="v5e:2x2", help="libtpu topology for the cost estimate ('' to skip)")
  p.add_argument("--aot-size", default=AOT_SIZE)
  p.add_argument("--aot-batch", type=int, default=4)
  args = p.parse_args(argv)
  variants = [tuple(v.split("/")) for v in args.variants.split(",")]

  rows = {}
  num_devices = jax.device_count()
  for v in variants:
    config = _configure(args, *v, per_device_batch=args.batch, num_devices=num_devices, size=args.size,
                        mesh_shape=(-1, 1, 1), scan=None)
    rows[v] = {"config": config, **analytic(config, args.batch, dense_attention=True)}
    rows[v]["waste_splash_gflop"] = analytic(config, args.batch, dense_attention=False)["waste_gflop"]

  if not args.analytic_only:
    first = rows[variants[0]]["config"]
    specs = masks_lib.mask_specs_from_config(first, args.batch)
    batches = bench.make_batches(first, specs, 4, seed=0)
    runners = {v: bench.JaxRunner(bench.build_step(rows[v]["config"], jax.devices(), specs), batches)
               for v in variants}
    for r in runners.values():
      r.run(args.warmup)
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
      for v, r in runners.items():
        times[v] += r.run(max(1, args.steps // args.rounds))
    for v in variants:
      rows[v]["step_ms"] = 1e3 * statistics.median(times[v])
      rows[v]["loss"] = runners[v].last_loss
    if args.topology and importlib.util.find_spec("libtpu") is not None:
      for v in variants:
        rows[v].update(tpu_cost(args, v))

  head = ["context/predictor", "model GFLOP", "waste GFLOP dense attn (ctx + pred)", "waste GFLOP splash",
          "saved GFLOP (context patch embedding of the kept tokens only)",
          "CPU step ms", "TPU est. GFLOP", "TPU est. GB accessed", "TPU optimal_seconds (us)", "TPU peak MiB"]
  print(f"tokens (context, target) per generator: {rows[variants[0]]['tokens']}")
  print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  fmt = lambda r, k, spec: format(r[k], spec) if k in r else "-"
  for v in variants:
    r = rows[v]
    print(f"| {v[0]}/{v[1]} | {r['model_gflop']:.2f} | {r['waste_gflop']:.3f} ({r['waste_context_gflop']:.3f} + "
          f"{r['waste_predictor_gflop']:.3f}) | {r['waste_splash_gflop']:.3f} | {r['saved_gflop']:.3f} | "
          f"{fmt(r, 'step_ms', '.1f')} | "
          f"{fmt(r, 'tpu_gflop', '.3f')} | {fmt(r, 'tpu_gbytes', '.3f')} | {fmt(r, 'tpu_optimal_us', '.1f')} | "
          f"{fmt(r, 'tpu_peak_mib', '.1f')} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
