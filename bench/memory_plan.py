"""Memory plan: ahead-of-time compiles of the real train step for Cloud TPU topologies, on a CPU-only machine.

libtpu (jax[tpu] for the pinned jax) gives compile-only TPU devices; the real TPU compiler then reports per-chip
memory (peak_memory_in_bytes) and refuses an over-budget program with the same HBM out-of-memory error as the
hardware (bench/README.md, memory_plan.py). A compile-time OOM is recorded as "does not fit".

  python bench/memory_plan.py --models=vitl16,vith16 --topologies=v5e,v5p --batches=8,16,24 --remat=none,full \\
      --out=bench/results/memory_plan.jsonl          # appends one JSON line per compile; skips ones already there
  python bench/memory_plan.py --report=bench/results/memory_plan.jsonl   # markdown tables

Needs libtpu: pip install 'libtpu==0.0.42.*' (or 'jax[tpu]==0.10.2'). FLOPs from cost_analysis() count a scanned
layer once, so they are recorded only as a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

# Before jax loads libtpu: CPU as the default platform, no metadata-server query, one local host.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")

import importlib.util  # noqa: E402

# bench/train_step.py by path (bench/ is not a package; putting it on sys.path would shadow input_pipeline).
_spec = importlib.util.spec_from_file_location("bench_train_step", Path(__file__).resolve().parent / "train_step.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from jepa_jax import compiled_step  # noqa: E402
from jepa_jax import sharding  # noqa: E402
from jepa_jax.models import attention as attention_lib  # noqa: E402

# name -> (libtpu topology name, chip_config_name, HBM GiB per device as libtpu's OOM message states it)
TOPOLOGIES = {
    "v5e": ("v5e:2x4", "default", 15.75),
    "v4": ("v4:2x2x1", "megacore", 30.75),
    "v6e": ("v6e:2x4", "default", 31.25),
    "v5p": ("v5p:2x2x1", "megacore", 95.74),
}
GIB = 2 ** 30


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def topology_mesh(name: str, fsdp: int = 0) -> Mesh:
  """('data', 'fsdp', 'tensor') mesh over a topology's compile-only devices; fsdp=0: FSDP over all of them."""
  from jax.experimental import topologies
  topology_name, chip_config, _ = TOPOLOGIES[name]
  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology_name, chip_config_name=chip_config)
  devices = np.array(topo.devices)
  n = devices.size
  fsdp = fsdp or n
  if n % fsdp:
    raise ValueError(f"fsdp={fsdp} does not divide the {n} devices of {name}")
  return Mesh(devices.reshape(n // fsdp, fsdp, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def plan_one(model: str, topology: str, per_device_batch: int, remat: str, *, fsdp: int = 0,
             dtype: str = "bfloat16", scan: bool = True, attention: str = "", size: str = "",
             packing: str = "") -> dict:
  """Compiles one configuration; returns its memory figures, or fits=False with the compiler's OOM message.

  attention: config.model.attention_impl ('' picks per platform: splash on TPU); packing: 'CONTEXT/PREDICTOR'
  (e.g. 'none/none' for the official pass per mask generator; '' keeps the config's).
  """
  mesh = topology_mesh(topology, fsdp)
  n = mesh.devices.size
  config = bench.load_config(model)  # a shipped config name (vitl16) or a config file
  bench.configure(config, per_device_batch=per_device_batch, num_devices=n, dtype=dtype, attention=attention,
                  remat=remat, scan=scan, size=bench.parse_size(size), mesh_shape=mesh.devices.shape,
                  packing=packing)
  row = {"model": model, "topology": topology, "devices": n, "hbm_gib": TOPOLOGIES[topology][2],
         "fsdp": mesh.shape["fsdp"], "data": mesh.shape["data"], "per_device_batch": per_device_batch,
         "remat": remat, "dtype": dtype, "scan": scan, "attention": _kernel(attention, dtype), "size": size,
         "packing": f"{config.model.context_packing}/{config.model.predictor_packing}"}
  t0 = time.perf_counter()
  try:
    setup = bench.build_step(config, mesh=mesh)
    row["num_context"] = [s.num_context for s in setup.specs]
    row["num_target"] = [s.num_target for s in setup.specs]
    compiled, lower_s, compile_s = bench.compile_step(setup)
  except Exception as e:  # noqa: BLE001  the TPU compiler's OOM is an XlaRuntimeError
    msg = str(e)
    if "RESOURCE_EXHAUSTED" not in msg and "out of memory" not in msg.lower():
      raise
    row.update(fits=False, compile_s=time.perf_counter() - t0, error=msg[:400])
    need = re.search(r"required[^(]*\(([\d.]+)([GMK])\)", msg)
    if need:
      row["required_gib"] = float(need.group(1)) * {"G": 1, "M": 2 ** -10, "K": 2 ** -20}[need.group(2)]
    return row
  mem = compiled_step.memory_figures(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row.update(fits=True, compile_s=lower_s + compile_s, peak_gib=mem["peak"] / GIB,
             argument_gib=mem["argument_size"] / GIB, temp_gib=mem["temp_size"] / GIB,
             xla_flops_lower_bound=float((cost or {}).get("flops", 0.0)),
             analytic_flops=bench.step_flops_per_device(config, setup.specs, n))
  return row


def _kernel(attention: str, dtype: str) -> str:
  """The attention kernel a TPU compile runs ('' resolves to splash)."""
  return attention_lib.resolve(attention, "tpu", dtype)


def _key(r: dict) -> tuple:
  # Rows from before the attention/packing options ('default' then) ran XLA attention, one pass per mask generator.
  kernel = {"default": "xla"}.get(r.get("attention", "default"), r.get("attention"))
  return (r["model"], r["topology"], r["per_device_batch"], r["remat"], r["fsdp"], r["dtype"], r["scan"], kernel,
          r.get("packing", "none/none"))


def run_grid(args) -> None:
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  done = set()
  if out.exists():
    done = {_key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}
  for model in args.models.split(","):
    for topology in args.topologies.split(","):
      for remat in args.remat.split(","):
        for b in (int(x) for x in args.batches.split(",")):
          fsdp = args.fsdp or len(topology_mesh(topology).devices.flat)
          key = (model, topology, b, remat, fsdp, args.dtype, bool(args.scan), _kernel(args.attention, args.dtype),
                 args.packing or _config_packing(model))
          if key in done:
            continue
          row = plan_one(model, topology, b, remat, fsdp=args.fsdp, dtype=args.dtype, scan=bool(args.scan),
                         attention=args.attention, packing=args.packing)
          with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
          status = f"peak {row['peak_gib']:.2f} GiB" if row["fits"] else "OOM"
          print(f"{model} {topology} fsdp={row['fsdp']} b={b} remat={remat}: {status} "
                f"({row['compile_s']:.0f} s)", flush=True)


def _config_packing(model: str) -> str:
  m = bench.load_config(MODELS.get(model, model)).model
  return f"{m.context_packing}/{m.predictor_packing}"


def _gib(row: dict, key: str) -> str:
  return f"{row[key]:.2f}" if key in row else "-"


def report(path: str) -> str:
  rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
  rows.sort(key=lambda r: (r["model"], r["hbm_gib"], r["remat"], r["per_device_batch"]))
  lines = ["| model | topology (HBM/chip) | chips | FSDP | remat | B/chip | fits | peak GiB/chip | state+batch GiB "
           "| temp GiB | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    fits = "yes" if r["fits"] else ("no (needs %.1f GiB)" % r["required_gib"] if "required_gib" in r else "no")
    lines.append(f"| {r['model']} | {r['topology']} ({r['hbm_gib']} G) | {r['devices']} | {r['fsdp']} | "
                 f"{r['remat']} | {r['per_device_batch']} | {fits} | "
                 f"{_gib(r, 'peak_gib')} | {_gib(r, 'argument_gib')} | {_gib(r, 'temp_gib')} | "
                 f"{r['compile_s']:.0f} |")
  best = {}
  for r in rows:
    k = (r["model"], r["topology"], r["remat"])
    if r["fits"]:
      best[k] = max(best.get(k, 0), r["per_device_batch"])
    else:
      best.setdefault(k, 0)
  lines += ["", "| model | topology | remat | largest measured B/chip that fits |", "|---|---|---|---|"]
  lines += [f"| {m} | {t} | {rm} | {b or 'none measured'} |" for (m, t, rm), b in sorted(best.items())]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="vitl16,vith16,vith16_384")
  p.add_argument("--topologies", default="v5e,v5p")
  p.add_argument("--batches", default="8,16,24")
  p.add_argument("--remat", default="none,full")
  p.add_argument("--fsdp", type=int, default=0, help="FSDP size (0: all chips)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--scan", type=int, default=1)
  p.add_argument("--attention", default="", help="config.model.attention_impl: '' (TPU: splash), xla or splash")
  p.add_argument("--packing", default="", help="CONTEXT/PREDICTOR packing, e.g. none/none (the pass per mask "
                                               "generator, as before) or sequence/batch; '' keeps the config's")
  p.add_argument("--out", default="bench/results/memory_plan.jsonl")
  p.add_argument("--report", default="", help="print markdown tables from this JSONL and exit")
  args = p.parse_args(argv)
  if args.report:
    print(report(args.report))
    return 0
  if not libtpu_available():
    print("libtpu is not installed: pip install 'libtpu==0.0.42.*' (or 'jax[tpu]==0.10.2')", file=sys.stderr)
    return 2
  run_grid(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
